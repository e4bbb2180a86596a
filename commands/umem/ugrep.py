"""::ugrep: search the whole address space for a value (mdb's kgrep for user processes)."""

from __future__ import annotations

from mdbpy.dcmd import dcmd
from mdbpy.errors import MdbError, UsageError

from mdbpy_commands.umem.audit import piped


def matches(words, pattern: int, mask: int, dist: int):
    """Which words equal pattern under mask, or lie in [pattern, pattern + dist)."""
    import numpy as np

    hit = ((words ^ words.dtype.type(pattern)) & words.dtype.type(mask)) == 0
    if dist:
        hit |= (words - words.dtype.type(pattern)) < words.dtype.type(dist)
    return np.nonzero(hit)[0]


@dcmd("ugrep", "search user address space for a pointer",
      usage=":[-v] [-d dist|-m mask|-M invmask] [-a minad] [-A maxad] [-s sz]",
      example="<addr>::ugrep", help="""\
Every aligned location of every readable mapping holding the value addr (pointer-sized unless
-s gives 1, 2, 4 or 8). -d matches values in [addr, addr + dist), -m values whose bits under
mask equal addr, -M the same with the mask inverted; -a and -A restrict the locations searched.
-v also prints each value found. Piped, the locations are passed on.""")
def ugrep(inv):
    import numpy as np

    if not inv.has_addr:
        raise UsageError("::ugrep needs the value to search for")
    opts = inv.options("vd:m:M:a:A:s:", numeric="dmMaAs")
    if sum(k in opts for k in "dmM") > 1:
        raise UsageError("only one of -d, -m and -M may be specified")
    size = opts.get("s", 8)
    if size not in (1, 2, 4, 8):
        raise MdbError("size must be 1, 2, 4 or 8")
    full = (1 << (8 * size)) - 1
    mask = full
    if "m" in opts:
        mask = opts["m"] & full
    if "M" in opts:
        mask = ~opts["M"] & full
    pattern, dist = inv.addr, opts.get("d", 0)
    if pattern & ~full:
        raise MdbError(f"pattern {pattern:x} is too large for size {size}")
    if pattern & ~mask:
        inv.session.warn("warning: pattern does not match mask")
    lo, hi = opts.get("a", 0), opts.get("A", 0)
    dt = np.dtype(f"<u{size}")
    mem = inv.session.mem
    for m in mem.mappings():
        if not m.readable:
            continue
        start = max(m.start, lo)
        start += (-start) % size
        end = min(m.end, hi) if hi else m.end
        for addr, data in mem.blocks(start, end):
            words = np.frombuffer(data, dt, count=len(data) // size)
            for i in matches(words, pattern, mask, dist).tolist():
                where = addr + i * size
                if inv.piped_out:
                    piped(inv, where)
                elif opts.get("v"):
                    inv.out.write(f"{where:x}:\t{int(words[i]):x}\n")
                else:
                    inv.out.write(f"{where:x}\n")
    return 0
