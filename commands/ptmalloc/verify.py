"""Heap verification: every arena's chunks and lists, one problem per line with its address.

Checks: headers (size, alignment, running past the top or the heap: from the walk, which
resynchronises past a bad header), PREV_INUSE against the previous chunk's real state,
prev_size of a free chunk's successor, the lists' own checks (double links, size classes,
links leaving the heaps, a chunk twice: bins.py), a chunk in two lists (double free), tcache
entries whose key is not the tcache key, and, when the process runs with glibc.malloc.perturb,
the fill byte of free chunks: a byte that differs is a use-after-free write, reported at the
first bad address, as ::umem_verify does for umem's 0xdeadbeef.
"""

from __future__ import annotations

from collections import Counter

from mdbpy.errors import ReadError
from .allocator import ROLE_TOP, chunk_table
from .locate import locate

MAX_FILL_CHECK = 1 << 16  # bytes of one free chunk compared with the fill byte


def verify(session, progress=None) -> list[tuple[int, str]]:
    """[(address, message)] of every problem found, sorted by address; progress is passed to
    the heap walk (see chunk_table)."""
    st = locate(session)
    t = chunk_table(session, progress)
    out = [(d.addr, d.text if d.text.startswith("chunk ") else f"{d.owner} {d.text}")
           for d in t.damage]
    out += _inuse_bits(session, t)
    out += _double_listed(t)
    out += _fill(session, st, t)
    seen = set()
    uniq = []
    for p in sorted(out):
        if p not in seen:
            seen.add(p)
            uniq.append(p)
    return uniq


def _inuse_bits(session, t) -> list[tuple[int, str]]:
    """A chunk in a bin must look free to its successor (PREV_INUSE clear, prev_size equal to
    its size); a chunk that looks free must be in a bin."""
    out = []
    binned = {a for a, w in t.where.items() if not w.startswith(("tcache", "fastbin"))}
    n = len(t.addr)
    for i in range(n - 1):
        if t.mmapped[i] or t.bad[i] or t.bad[i + 1] or t.arena[i] != t.arena[i + 1]:
            continue
        a, size = int(t.addr[i]), int(t.size[i])
        if a + size != int(t.addr[i + 1]):
            continue
        looks_free = not t.flags[i + 1] & 1
        if a in binned and not looks_free:
            out.append((a, f"chunk 0x{a:x} is in {t.where[a]} but the next chunk's "
                           "PREV_INUSE is set"))
        elif looks_free and a not in binned and t.state[i] != ROLE_TOP:
            out.append((a, f"chunk 0x{a:x} looks free (next PREV_INUSE clear) but is in no bin"))
        if looks_free:
            try:
                prev_size = session.mem.read_u64(a + size)
            except ReadError:
                continue
            if prev_size != size:
                out.append((a + size, f"chunk 0x{a + size:x}: prev_size 0x{prev_size:x} "
                                      f"!= size 0x{size:x} of the free chunk before it"))
    return out


def _double_listed(t) -> list[tuple[int, str]]:
    where: dict[int, list[str]] = {}
    for lst in t.bins:
        for c in set(lst.chunks):
            where.setdefault(c, []).append(lst.name)
    return [(c, f"chunk 0x{c:x} is in {' and '.join(ws)} (double free)")
            for c, ws in where.items() if len(ws) > 1]


def perturb_byte(session, st, t) -> int | None:
    """glibc.malloc.perturb's byte: libc's perturb_byte with symbols, else the one byte that
    fills every fastbin chunk past its link (None: no perturbing, or no evidence)."""
    if st.perturb is not None:
        return st.perturb & 0xFF or None
    votes = Counter()
    for lst in t.bins:
        if lst.kind != "fastbin":
            continue
        for c in lst.chunks[:64]:
            try:
                size = session.mem.read_u64(c + 8) & ~7
                body = session.mem.read(c + 24, min(size - 24, 256))
            except ReadError:
                continue
            common, count = Counter(body).most_common(1)[0] if body else (0, 0)
            if body and count >= len(body) - 8:
                votes[common] += 1
    if not votes:
        return None
    byte, _ = votes.most_common(1)[0]
    return byte or None


def _fill(session, st, t) -> list[tuple[int, str]]:
    """Free chunks must hold the perturb byte where glibc filled it and wrote nothing since:
    fastbin chunks past fd; bin chunks past fd/bk (and the nextsize links), short of the
    footer; a header left inside by a merge is skipped."""
    byte = perturb_byte(session, st, t)
    if byte is None:
        return []
    out = []
    for lst in t.bins:
        if lst.kind == "tcache":
            continue
        for c in lst.chunks:
            try:
                size = session.mem.read_u64(c + 8) & ~7
            except ReadError:
                continue
            if lst.kind == "fastbin":
                lo, hi = c + 24, c + size
            else:
                lo = c + (48 if lst.kind == "largebin" else 32)
                hi = c + size - 8
            hi = min(hi, lo + MAX_FILL_CHECK)
            if hi <= lo:
                continue
            bad = _first_unfilled(session, lo, hi, byte, c + size)
            if bad is not None:
                out.append((c, f"chunk 0x{c:x} in {lst.name} (free) seems corrupted, at "
                               f"0x{bad:x}"))
    return out


def _first_unfilled(session, lo: int, hi: int, byte: int, end: int) -> int | None:
    """The first byte of [lo, hi) that is neither the fill byte nor in a merge's remnant
    header. One read: _fill caps hi - lo at MAX_FILL_CHECK, whatever the chunk's size."""
    import numpy as np

    try:
        data = np.frombuffer(session.mem.read(lo, hi - lo), np.uint8)
    except ReadError:
        return None
    bad = np.nonzero(data != byte)[0]
    for i in bad.tolist():
        a = lo + i
        if not any(_remnant(session, q, end) and q <= a < q + 32
                   for q in ((a & ~15), (a & ~15) - 16)):
            return a
    return None


def _remnant(session, q: int, end: int) -> bool:
    """A chunk header at q left inside a bigger free chunk by a merge (its links follow)."""
    if q + 16 > end:
        return False
    try:
        size = session.mem.read_u64(q + 8) & ~7
    except ReadError:
        return False
    return size >= 32 and not size & 15 and q + size <= end
