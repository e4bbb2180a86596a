"""The ptmalloc dcmds and walkers: pwndbg's familiar names in mdb's syntax.

Chunk addresses are chunk headers (what glibc's mchunkptr holds; user pointers are 16 bytes
further); every listing prints addresses only when piped, so `::walk ptmalloc_free |
::malloc_chunk` and `::malloc_chunks | ::whatis` work.
"""

from __future__ import annotations

from mdbpy.dcmd import STR, Flag, Invocation, Opt, dcmd, walker
from mdbpy.errors import MdbError, UsageError
from mdbpy.heap.model import ALLOC, FREE
from mdbpy.jsonout import Table, emit, wants_json

from .bins import Walker
from .chunks import flag_text
from .layouts import ROLE_TCACHE_STRUCT, ROLE_TOP
from .locate import MODES, SETTING, locate, locate_mode
from .stats import MALLINFO_FIELDS, mallinfo2, malloc_stats_text
from .table import chunk_table
from .verify import verify

STATE_NAMES = {ALLOC: "inuse", FREE: "free", ROLE_TOP: "top", ROLE_TCACHE_STRUCT: "tcache"}


def _state(inv: Invocation):
    return locate(inv.session)


def _arena(inv: Invocation, addr: int | None):
    st = _state(inv)
    if addr is None:
        return st.arenas
    for a in st.arenas:
        if a.addr == addr:
            return [a]
    raise MdbError(f"0x{addr:x} is not an arena (see ::arenas)")


# -- overview ----------------------------------------------------------------------------------
@dcmd("ptmalloc", "glibc malloc: version, what was found and how",
      opts=[Opt("m", "mode", STR, "change the locate mode for this session: "
                + "|".join(MODES))],
      help="Print the glibc version (from libc's release string), the locate mode and what "
           "each structure was found by: symbols (libc's debug file) or heuristics that verify "
           "themselves.",
      example="::ptmalloc -m heuristic")
def ptmalloc(inv: Invocation):
    mode = inv.opts.mode
    if inv.operands:
        raise UsageError("")
    s = inv.session
    if mode is not None:
        if mode not in MODES:
            raise UsageError(f"locate mode must be one of {', '.join(MODES)}")
        s.settings[SETTING] = mode
        for k in [k for k in s.cache if isinstance(k, str) and k.startswith("ptmalloc.")]:
            del s.cache[k]
        s.cache.pop("allocators", None)
    st = _state(inv)
    found = st.found
    inv.print(f"glibc {st.version[0]}.{st.version[1]} ({st.libc.name}), locate mode "
              f"{locate_mode(s)}, safe-linking {'on' if st.safe_linking else 'off'}")
    inv.print(f"main_arena  0x{st.main_arena:x} ({found.get('main_arena', '?')})")
    inv.print("mp_         " + (f"0x{st.mp.addr:x} ({found.get('mp_')})" if st.mp is not None
                                else "not found"))
    inv.print(f"arenas      {len(st.arenas)}")
    inv.print(f"tcaches     {len(st.tcaches)}" +
              (f" ({found['tcache']})" if "tcache" in found else ""))
    for w in st.warnings:
        inv.print(f"warning: {w}")
    return 0


@dcmd("arenas", "list glibc malloc arenas",
      help="One line per arena of the main_arena ring: address, index, heaps, top chunk, "
           "system_mem and attached threads. Piped: the arena addresses.",
      example="::arenas")
def arenas(inv: Invocation):
    st = _state(inv)
    if inv.piped_out:
        for a in st.arenas:
            inv.print(f"{a.addr:x}")
        return 0
    t = Table("{addr:016x} {index:5d} {heaps:5d} {top:016x} {system_mem:10d} "
              "{attached_threads:7d}", head=[f"{'ADDR':16s} {'INDEX':>5s} {'HEAPS':>5s} "
                                             f"{'TOP':16s} {'SYSTEM':>10s} {'THREADS':>7s}"])
    for a in st.arenas:
        s = a.state
        t.add(addr=a.addr, index=a.index, heaps=len(a.heaps), top=s.top,
              system_mem=s.system_mem, attached_threads=s.attached_threads)
    t.show(inv, "arenas", "arenas")
    return 0


@dcmd("heaps", "list the heaps of glibc malloc arenas", addr="?",
      help="Each heap: its arena, heap_info header (thread arenas), first chunk and end; with "
           "an arena's address, only that arena's.",
      example="::heaps")
def heaps(inv: Invocation):
    arenas_ = _arena(inv, inv.addr if inv.has_addr else None)
    t = Table("{arena:016x} {heap_info!A:16s} {start:016x} {end:016x}",
              head=[f"{'ARENA':16s} {'HEAP_INFO':16s} {'START':16s} {'END':16s}"])
    for a in arenas_:
        for h in a.heaps:
            t.add(arena=a.addr, heap_info=h.info, start=h.first, end=h.region[1])
    t.show(inv, "heaps", "heaps")
    return 0


# -- chunks ------------------------------------------------------------------------------------
def _selected(inv: Invocation, which: str):
    t = chunk_table(inv.session)
    import numpy as np

    mask = np.ones(len(t.addr), bool)
    if inv.has_addr:
        idx = [a.index for a in _arena(inv, inv.addr)]
        mask &= np.isin(t.arena, idx)
    if which == "inuse":
        mask &= t.state == ALLOC
    elif which == "free":
        mask &= t.state == FREE
    return t, np.nonzero(mask)[0]


@dcmd("malloc_chunks", "list the chunks of glibc malloc heaps", addr="?",
      opts=[Flag("f", "free", "only free chunks"), Flag("u", "inuse", "only in-use chunks")],
      aliases=("chunks",),
      help="Every chunk of every heap (or of the arena at addr) and the mmapped chunks: "
           "address, size, flag bits (P prev-inuse, M mmapped, N non-main arena), state "
           "(inuse, free, top, tcache for a tcache struct) and the list holding a free chunk. "
           "Piped: the chunk addresses.",
      example="::malloc_chunks -f")
def malloc_chunks(inv: Invocation):
    if inv.operands:
        raise UsageError("")
    t, idx = _selected(inv, "free" if inv.opts.free else "inuse" if inv.opts.inuse else "")
    if inv.piped_out:
        for i in idx.tolist():
            inv.print(f"{int(t.addr[i]):x}")
        return 0
    if wants_json(inv):  # column-wise: a heap has millions of chunks, too many for a Table
        cols = zip(t.addr[idx].tolist(), t.size[idx].tolist(), t.flags[idx].tolist(),
                   t.state[idx].tolist(), t.mmapped[idx].tolist())
        emit(inv, "malloc_chunks", chunks=[
            {"addr": a, "size": n, "flags": flag_text(f), "state": STATE_NAMES.get(s, "?"),
             "where": t.where.get(a, "mmapped" if m else None)} for a, n, f, s, m in cols])
        return 0
    inv.print(f"{'ADDR':16s} {'SIZE':>10s} {'FLAGS':5s} {'STATE':6s} WHERE")
    for i in idx.tolist():
        a = int(t.addr[i])
        where = t.where.get(a, "mmapped" if t.mmapped[i] else "")
        inv.print(f"{a:016x} {int(t.size[i]):#10x} {flag_text(int(t.flags[i])):5s} "
                  f"{STATE_NAMES.get(int(t.state[i]), '?'):6s} {where}".rstrip())
    return 0


@dcmd("malloc_chunk", "decode a glibc malloc chunk header", addr=":",
      opts=[Flag("v", "verbose", "add every field of struct malloc_chunk (prev_size, fd, bk, "
                 "fd_nextsize, bk_nextsize; safe-linked links decoded)")],
      help="The chunk at addr: size, flag bits, state and list.",
      example="0x5555555592a0::malloc_chunk -v")
def malloc_chunk(inv: Invocation):
    if inv.operands or not inv.has_addr:
        raise UsageError("")
    st = _state(inv)
    t = chunk_table(inv.session)
    v = st.structs["malloc_chunk"].view(inv.session.mem, inv.addr)
    i = _index(t, inv.addr)
    state = STATE_NAMES.get(int(t.state[i]), "?") if i is not None else "not a chunk start"
    where = t.where.get(inv.addr, "")
    if inv.header:
        inv.print(f"{'ADDR':16s} {'SIZE':>10s} {'FLAGS':5s} {'STATE':6s} WHERE")
    inv.print(f"{inv.addr:016x} {v.chunksize:#10x} {flag_text(v.mchunk_size & 7):5s} "
              f"{state:6s} {where}".rstrip())
    if inv.opts.verbose:
        fd = v.fd
        if st.safe_linking and where.startswith(("tcache", "fastbin")):
            fd ^= (inv.addr + 16) >> 12
        for name, val in (("mchunk_prev_size", v.mchunk_prev_size),
                          ("mchunk_size", v.mchunk_size), ("fd", fd), ("bk", v.bk),
                          ("fd_nextsize", v.fd_nextsize), ("bk_nextsize", v.bk_nextsize)):
            inv.print(f"    {name:16s} = 0x{val:x}")
    return 0


def _index(t, addr: int) -> int | None:
    import numpy as np

    i = int(np.searchsorted(t.addr, np.uint64(addr)))
    return i if i < len(t.addr) and int(t.addr[i]) == addr else None


# -- lists -------------------------------------------------------------------------------------
def _print_lists(inv: Invocation, lists) -> None:
    if inv.piped_out:
        for lst in lists:
            for c in lst.chunks:
                inv.print(f"{c:x}")
        return
    for lst in lists:
        count = "" if lst.count is None else f" count={lst.count}"
        chain = " -> ".join(f"0x{c:x}" for c in lst.chunks)
        inv.print(f"{lst.name}{count} [{len(lst.chunks)}]: {chain}")
        for d in lst.problems:
            inv.print(f"    0x{d.addr:x}: {d.text}")


@dcmd("tcachebins", "list each thread's glibc tcache bins",
      help="For every thread's tcache_perthread_struct, its non-empty bins: glibc's count "
           "and the chunks in list order (safe-linked links decoded).",
      example="::tcachebins")
def tcachebins(inv: Invocation):
    st = _state(inv)
    w = Walker(inv.session, st)
    if wants_json(inv):
        emit(inv, "tcachebins", tcaches=[{"addr": tc.addr, "tid": tc.tid,
                                          "bins": _lists_json(w.tcache(tc))}
                                         for tc in st.tcaches])
        return 0
    for tc in st.tcaches:
        if not inv.piped_out:
            owner = f"thread {tc.tid}" if tc.tid is not None else "thread unknown"
            inv.print(f"tcache 0x{tc.addr:x} ({owner})")
        _print_lists(inv, w.tcache(tc))
    return 0


def _lists_json(lists) -> list[dict]:
    """The bins as JSON: name, kind, glibc's count (tcache) and the chunks in list order."""
    return [{"name": lst.name, "kind": lst.kind, "count": lst.count,
             "chunks": list(lst.chunks)} for lst in lists]


def _arena_lists(inv: Invocation, kinds) -> int:
    w = Walker(inv.session, _state(inv))
    if wants_json(inv):
        emit(inv, inv.name, arenas=[
            {"addr": a.addr, "bins": _lists_json(lst for lst in w.arena_bins(a)
                                                 if lst.kind in kinds)}
            for a in _arena(inv, inv.addr if inv.has_addr else None)])
        return 0
    for a in _arena(inv, inv.addr if inv.has_addr else None):
        lists = [lst for lst in w.arena_bins(a) if lst.kind in kinds]
        if not inv.piped_out:
            inv.print(f"arena 0x{a.addr:x}")
        _print_lists(inv, lists)
    return 0


def _bin_dcmd(name: str, kind: str, which: str, order: str = ""):
    """The dcmd ::NAME listing one kind of bin of every arena (or of the arena at addr): the
    four bin listings differ only in their words and the kind they keep."""

    def listing(inv: Invocation):
        return _arena_lists(inv, (kind,))

    listing.__name__ = name
    return dcmd(name, f"list glibc malloc {which}", addr="?", example=f"::{name}",
                help=f"The {which} of every arena (or of the arena at addr){order}.")(listing)


fastbins = _bin_dcmd("fastbins", "fastbin", "non-empty fastbins")
unsortedbin = _bin_dcmd("unsortedbin", "unsorted", "unsorted bin", ", in fd order")
smallbins = _bin_dcmd("smallbins", "smallbin", "non-empty small bins")
largebins = _bin_dcmd("largebins", "largebin", "non-empty large bins")


# -- parameters and statistics ---------------------------------------------------------------
@dcmd("mp_", "print glibc malloc's parameters (mp_)",
      help="Every field of struct malloc_par: thresholds, mmap counters, sbrk_base and the "
           "tcache configuration.",
      example="::mp_")
def mp_(inv: Invocation):
    st = _state(inv)
    if st.mp is None:
        raise MdbError("ptmalloc: mp_ was not found (no symbols, and no unique candidate)")
    inv.print(f"malloc_par at 0x{st.mp.addr:x} ({st.found.get('mp_')})")
    for name, f in st.mp.struct.fields.items():
        if f.kind in ("int", "ptr"):
            inv.print(f"    {name:22s} = 0x{getattr(st.mp, name):x}")
    return 0


@dcmd("malloc_stats", "glibc malloc statistics, as malloc_stats(3) prints them",
      help="Per arena the system and in-use bytes, then the totals with mmapped memory: the "
           "exact text malloc_stats(3) would print in the process.",
      example="::malloc_stats")
def malloc_stats(inv: Invocation):
    inv.out.write(malloc_stats_text(inv.session, _state(inv)))
    return 0


@dcmd("mallinfo", "glibc malloc statistics, as mallinfo2(3) returns them",
      help="The fields of struct mallinfo2 summed over the arenas, as the process would get "
           "them from mallinfo2(3).",
      example="::mallinfo")
def mallinfo(inv: Invocation):
    m = mallinfo2(inv.session, _state(inv))
    for f in MALLINFO_FIELDS:
        inv.print(f"{f:9s} = {getattr(m, f)}")
    return 0


@dcmd("ptmalloc_verify", "check the integrity of glibc malloc's heaps",
      help="Walks every arena and list and prints one line per problem with its address: "
           "bad sizes and smashed headers (the walk resumes past them), a smashed top size, "
           "PREV_INUSE and prev_size disagreements, broken double links, cycles and links "
           "into unmapped memory or outside the heaps, chunks in the wrong bin or listed "
           "twice (double free), overwritten tcache keys, a cut arena ring or heap_info "
           "chain; what heap exploits leave: large bins out of size order or with broken "
           "fd_nextsize/bk_nextsize links, tcache and fastbin entries inside another chunk "
           "(overlapping chunks), a wrong NON_MAIN_ARENA bit, mmapped chunks running over "
           "each other or into a heap or missing from glibc's count, mp_ and arena fields out "
           "of range (system_mem, the mmap counters, a tcache count above tcache_count); and, "
           "when glibc.malloc.perturb is known (libc's symbols or the process's environment, "
           "never guessed), free chunks whose fill was written (use after free). Every walk "
           "is bounded and goes on past the damage with what it can still trust; the damage "
           "a walk meets is also printed once as a warning, and ::findleaks names the memory "
           "it could not trust.",
      example="::ptmalloc_verify")
def ptmalloc_verify(inv: Invocation):
    problems = verify(inv.session)
    if not problems:
        inv.print("ptmalloc: heap clean")
        return 0
    for addr, msg in problems:
        inv.print(msg if msg.startswith("chunk ") else f"0x{addr:x}: {msg}")
    return 0


# -- walkers -----------------------------------------------------------------------------------
def _walk(session, addr, which: str):
    t = chunk_table(session)
    import numpy as np

    mask = np.ones(len(t.addr), bool)
    if addr is not None:
        st = locate(session)
        idx = [a.index for a in st.arenas if a.addr == addr]
        if not idx:
            raise MdbError(f"0x{addr:x} is not an arena (see ::arenas)")
        mask &= t.arena == idx[0]
    if which:
        mask &= t.state == which
    for a in t.addr[mask].tolist():
        yield a


@walker("ptmalloc_chunk", "walk every glibc malloc chunk (of an arena, given its address)")
def walk_chunks(session, addr):
    yield from _walk(session, addr, 0)


@walker("ptmalloc_inuse", "walk the in-use glibc malloc chunks")
def walk_inuse(session, addr):
    yield from _walk(session, addr, ALLOC)


@walker("ptmalloc_free", "walk the free glibc malloc chunks (bins, fastbins and tcache)")
def walk_free(session, addr):
    yield from _walk(session, addr, FREE)


@walker("ptmalloc_arena", "walk the glibc malloc arenas")
def walk_arenas(session, addr):
    for a in locate(session).arenas:
        yield a.addr
