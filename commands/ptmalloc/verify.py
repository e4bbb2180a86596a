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

from mdbpy.errors import ReadError
from mdbpy.heap.damage import warn_once
from mdbpy.heap.model import ALLOC

from .layouts import NON_MAIN_ARENA, NSMALLBINS, ROLE_TCACHE_STRUCT, ROLE_TOP
from .locate import WARNED, locate
from .table import chunk_table

MIN_LARGE_SIZE = NSMALLBINS * 16  # the smallest chunk size of the large bins
MAX_FILL_CHECK = 1 << 16  # bytes of one free chunk compared with the fill byte
PERTURB_UNKNOWN = ("ptmalloc: glibc.malloc.perturb is unknown (no libc symbols; the process's "
                   "initial environment is unreadable or ambiguous): free chunks' fill is not "
                   "checked")


def verify(session, progress=None) -> list[tuple[int, str]]:
    """[(address, message)] of every problem found, sorted by address; progress is passed to
    the heap walk (see chunk_table)."""
    st = locate(session)
    t = chunk_table(session, progress)
    out = [(d.addr, d.text if d.text.startswith("chunk ") else f"{d.owner} {d.text}")
           for d in t.damage]
    out += _inuse_bits(session, t)
    out += _double_listed(t)
    out += _arena_bits(st, t)
    out += _fields(st, t)
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


def _arena_bits(st, t) -> list[tuple[int, str]]:
    """Every chunk glibc handed out carries NON_MAIN_ARENA exactly when its arena is not the
    main one (free() finds a thread arena through the heap_info at the chunk's
    HEAP_MAX_SIZE-aligned address, the main arena without looking): a wrong bit sends the
    chunk to another arena's bins. Free chunks in the bins, the tops and the mmapped chunks
    carry no such promise. glibc's own exception: when a thread arena moves to a new heap and
    the old top is too small to free, it becomes an in-use chunk without the bit, ending
    just before the heap's last fencepost."""
    import numpy as np

    cached = [a for a, w in t.where.items() if w.startswith(("tcache", "fastbin"))]
    used = (t.state == ALLOC) | (t.state == ROLE_TCACHE_STRUCT)
    if cached:
        used |= np.isin(t.addr, np.asarray(cached, np.uint64))
    used &= ~t.mmapped & ~t.bad & (t.arena >= 0)
    bit = (t.flags & NON_MAIN_ARENA) != 0
    wrong = used & (bit == (t.arena == 0))
    old_ends = {h.region[1] - 16 for a in st.arenas if not a.is_main for h in a.heaps
                if h.top is None}
    out = []
    for i in np.flatnonzero(wrong).tolist():
        a, arena = int(t.addr[i]), st.arenas[int(t.arena[i])]
        if arena.is_main:
            out.append((a, f"chunk 0x{a:x}: NON_MAIN_ARENA is set in the main arena's heap "
                           "(free() would take it to a thread arena)"))
        elif a + int(t.size[i]) not in old_ends:
            out.append((a, f"chunk 0x{a:x}: NON_MAIN_ARENA is clear in a heap of arena "
                           f"0x{arena.addr:x} (free() would take it to the main arena)"))
    return out


def _fields(st, t) -> list[tuple[int, str]]:
    """mp_'s and each arena's fields within the range glibc keeps them in (mp_faults for
    mp_): an arena's system_mem never exceeds its high-water mark max_system_mem, and it
    counts every byte of the arena's heaps, so its chunks never add up to more."""
    import numpy as np

    from .chunks import mp_faults

    out = [(at, f"mp_ 0x{st.mp.addr:x} {why}") for _f, at, why in mp_faults(st)]
    ms = st.structs["malloc_state"]
    heap = ~t.mmapped & (t.arena >= 0)
    # bytes per arena (float weights are exact: no process has 2**53 bytes of heap)
    per_arena = np.bincount(t.arena[heap], weights=t.size[heap].astype(np.float64),
                            minlength=len(st.arenas))
    for a in st.arenas:
        system, peak = int(a.state.system_mem), int(a.state.max_system_mem)
        at = a.addr + ms.offset("system_mem")
        used = int(per_arena[a.index])
        if system > peak:
            out.append((at, f"arena 0x{a.addr:x} system_mem 0x{system:x} is above "
                            f"max_system_mem 0x{peak:x}"))
        elif used > system:
            out.append((at, f"arena 0x{a.addr:x} system_mem 0x{system:x} is less than its "
                            f"chunks (0x{used:x} bytes)"))
    return out


def _double_listed(t) -> list[tuple[int, str]]:
    where: dict[int, list[str]] = {}
    for lst in t.bins:
        for c in set(lst.chunks):
            where.setdefault(c, []).append(lst.name)
    return [(c, f"chunk 0x{c:x} is in {' and '.join(ws)} (double free)")
            for c, ws in where.items() if len(ws) > 1]


def perturb_byte(session, st) -> int | None:
    """glibc.malloc.perturb's byte when it is known (libc's perturb_byte, else the tunables of
    the process's initial environment: tunables.py), None when there is none to check. It is
    never inferred from the heap: a program's own data in freed chunks is not a fill pattern.
    When it is unknown, the fill is not checked, and that is said once per stop."""
    if st.perturb is None:
        warn_once(session, PERTURB_UNKNOWN, WARNED)
        return None
    return st.perturb & 0xFF or None


def _fill(session, st, t) -> list[tuple[int, str]]:
    """Free chunks must hold the perturb byte where glibc filled it and wrote nothing since:
    fastbin chunks past fd; bin chunks past fd/bk (and the nextsize links of a large-sized
    chunk, in whichever bin), short of the footer; a header left inside by a merge is
    skipped."""
    byte = perturb_byte(session, st)
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
                # a chunk of large size has fd_nextsize/bk_nextsize after fd/bk, which
                # _int_free clears even while it waits in the unsorted bin
                lo = c + (48 if size >= MIN_LARGE_SIZE else 32)
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
