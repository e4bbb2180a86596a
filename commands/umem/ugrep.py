"""::ugrep: search the whole address space for a value (mdb's kgrep for user processes)."""

from __future__ import annotations

from mdbpy.dcmd import NUM, Flag, Opt, dcmd
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
      addr=":", opts=[
          Flag("v", "verbose", "also print each value found"),
          Opt("d", "dist", NUM, "match values in [addr, addr + dist)"),
          Opt("m", "mask", NUM, "match values whose bits under mask equal addr"),
          Opt("M", "invmask", NUM, "as -m with the mask inverted"),
          Opt("a", "minad", NUM, "search locations from this address on"),
          Opt("A", "maxad", NUM, "search locations below this address"),
          Opt("s", "sz", NUM, "the value's size: 1, 2, 4 or 8 (default 8)", default=8)],
      example="<addr>::ugrep", help="""\
Every aligned location of every readable mapping holding the value addr. Only one of -d, -m
and -M may be given. Piped, the locations are passed on.""")
def ugrep(inv):
    import numpy as np

    if not inv.has_addr:
        raise UsageError("::ugrep needs the value to search for")
    inv.no_operands()
    opts = inv.opts
    if sum(v is not None for v in (opts.dist, opts.mask, opts.invmask)) > 1:
        raise UsageError("only one of -d, -m and -M may be specified")
    size = opts.sz
    if size not in (1, 2, 4, 8):
        raise MdbError("size must be 1, 2, 4 or 8")
    full = (1 << (8 * size)) - 1
    mask = full
    if opts.mask is not None:
        mask = opts.mask & full
    if opts.invmask is not None:
        mask = ~opts.invmask & full
    pattern, dist = inv.addr, opts.dist or 0
    if pattern & ~full:
        raise MdbError(f"pattern {pattern:x} is too large for size {size}")
    if pattern & ~mask:
        inv.session.warn("warning: pattern does not match mask")
    lo, hi = opts.minad or 0, opts.maxad or 0
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
                elif opts.verbose:
                    inv.out.write(f"{where:x}:\t{int(words[i]):x}\n")
                else:
                    inv.out.write(f"{where:x}\n")
    return 0
