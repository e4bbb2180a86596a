"""Statistics exactly as glibc computes them: int_mallinfo() per arena, summed by mallinfo2(3),
and printed per arena by malloc_stats(3). Tcache chunks count as in use there (glibc does not
look into the tcache), so the numbers match what the process would print of itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from mdbpy.errors import ReadError

from .table import chunk_table

SIZE_MAX = (1 << 64) - 1  # the fields are size_t: glibc's arithmetic wraps (a smashed system_mem)
MALLINFO_FIELDS = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                   "uordblks", "fordblks", "keepcost")


@dataclass
class Mallinfo:
    arena: int = 0
    ordblks: int = 0
    smblks: int = 0
    hblks: int = 0
    hblkhd: int = 0
    usmblks: int = 0
    fsmblks: int = 0
    uordblks: int = 0
    fordblks: int = 0
    keepcost: int = 0


def _top_size(session, arena) -> int:
    """The top chunk's size; 0 when a damaged top pointer leads nowhere readable (the
    damage is reported by locate: the statistics go on with the rest)."""
    try:
        return session.mem.read_u64(arena.state.top + 8) & ~7
    except ReadError:
        return 0


def arena_info(session, state, arena) -> Mallinfo:
    """int_mallinfo() of one arena, over its lists as the chunk table walked them: the walk
    verify reports from, so a list cut by damage counts exactly the chunks the walk could
    trust (glibc's own numbers for the healthy part; glibc itself would follow the damage)."""
    lists = [b for b in chunk_table(session).bins
             if b.owner == arena.addr and b.kind != "tcache"]
    avail = _top_size(session, arena)
    nblocks = 1
    fast = [b for b in lists if b.kind == "fastbin"]
    nfast = sum(len(b.chunks) for b in fast)
    fastavail = sum(session.mem.read_u64(c + 8) & ~7 for b in fast for c in b.chunks)
    avail += fastavail
    for lst in lists:
        if lst.kind != "fastbin":
            nblocks += len(lst.chunks)
            avail += sum(session.mem.read_u64(c + 8) & ~7 for c in lst.chunks)
    system = arena.state.system_mem
    m = Mallinfo(arena=system, ordblks=nblocks, smblks=nfast, fsmblks=fastavail,
                 uordblks=(system - avail) & SIZE_MAX, fordblks=avail)
    if arena.is_main:
        mp = state.mp
        if mp is not None:
            m.hblks, m.hblkhd = mp.n_mmaps, mp.mmapped_mem
        m.keepcost = _top_size(session, arena)
    return m


def mallinfo2(session, state) -> Mallinfo:
    total = Mallinfo()
    for a in state.arenas:
        m = arena_info(session, state, a)
        for f in MALLINFO_FIELDS:
            if f in ("hblks", "hblkhd", "usmblks", "keepcost"):
                if a.is_main:
                    setattr(total, f, getattr(m, f))
            else:
                setattr(total, f, (getattr(total, f) + getattr(m, f)) & SIZE_MAX)
    return total


def malloc_stats_text(session, state) -> str:
    """malloc_stats(3)'s report, byte for byte."""
    mp = state.mp
    mmapped = mp.mmapped_mem if mp is not None else 0
    system_b = in_use_b = mmapped
    lines = []
    for a in state.arenas:
        m = arena_info(session, state, a)
        lines += [f"Arena {a.index}:", f"system bytes     = {m.arena & 0xFFFFFFFF:10d}",
                  f"in use bytes     = {m.uordblks & 0xFFFFFFFF:10d}"]
        system_b += m.arena
        in_use_b += m.uordblks
    lines += ["Total (incl. mmap):", f"system bytes     = {system_b & 0xFFFFFFFF:10d}",
              f"in use bytes     = {in_use_b & 0xFFFFFFFF:10d}",
              f"max mmap regions = {(mp.max_n_mmaps if mp is not None else 0):10d}",
              f"max mmap bytes   = {(mp.max_mmapped_mem if mp is not None else 0):10d}"]
    return "\n".join(lines) + "\n"
