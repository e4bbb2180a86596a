"""Finding jemalloc's global state in a target: the emap's rtree root, the size-class tables,
the arenas and their bases, each thread's tcache.

Everything is found by symbol (the object's .symtab: `je_arena_emap_global`, `je_bin_infos`,
`je_sz_index2size_tab`, `je_arenas`, with the object's private prefix) and read through
layouts bound for the version, with DWARF's offsets where the object has DWARF. Without the
internal symbols (Debian's stripped libjemalloc.so.2) the structures are not found yet: that is
one message naming what is missing, never a guess. `how` records what each part came from, for
::jemalloc to show.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mdbpy.errors import MdbError, ReadError
from mdbpy.heap.walk import chain
from mdbpy.layout.bind import Binder

from .layouts import (BUILTIN, DWARF_ONLY, LAYOUTS, MALLOCX_ARENA_LIMIT, RTREE_ROOT_ENTRIES)
from .version import Found, require

MAX_TCACHES = 1 << 16  # tcaches in one arena's ring before the walk calls it garbage
NO_SYMBOLS = ("{name}: no symbol table (stripped): finding jemalloc's structures without "
              "symbols is not yet supported")
NO_DWARF = ("{name}: no DWARF for arena_s: finding jemalloc's arenas and thread caches "
            "without debug info is not yet supported")


@dataclass
class Tcache:
    """One thread's tcache: its tcache_slow_t and tcache_t, and the arena it is bound to."""

    slow: int
    addr: int
    arena: int
    dyn_alloc: int  # the region holding its bins' stacks (0: none)


@dataclass
class State:
    found: Found
    binder: Binder
    emap: int  # je_arena_emap_global
    root: int  # its rtree's root array (RTREE_ROOT_ENTRIES node pointers)
    index2size: list[int]  # sz_index2size_tab: usable size of each size class
    bins: list[tuple[int, int, int]]  # bin_infos: (reg_size, slab_size, nregs) per small class
    arenas: list[tuple[int, int]]  # (index, arena_t address)
    how: dict[str, str]
    warnings: list[str] = field(default_factory=list)
    _tcaches: list[Tcache] | None = None

    @property
    def nbins(self) -> int:
        return len(self.bins)

    def size_name(self, szind: int) -> str:
        return f"{self.index2size[szind]}" if 0 <= szind < len(self.index2size) else "?"


def _sym(found: Found, name: str):
    s = found.obj.lookup(found.private + name)
    if s is None or not s.addr:
        raise MdbError(f"jemalloc: {found.obj.name} has no symbol {found.private}{name}")
    return s


def _dwarf(found: Found, names) -> tuple[dict, str | None]:
    """The DWARF layouts of names and the file they came from ({} and None without DWARF):
    the object's separate debug file, else the object itself (a -g build keeps its DWARF)."""
    from mdbpy.layout.dwarf import find_structs

    obj = found.obj
    for path in (getattr(obj, "find_debug_file", lambda: None)(), getattr(obj, "file", None)):
        got = find_structs(path, names, cu_hint="arena.c") if path else {}
        if got:
            return got, path
    return {}, None


def _check_edata(dwarf: dict) -> None:
    """edata_s is bound from its builtin layout (DWARF cannot name its union members); DWARF,
    when present, must agree on its size and on every member it names."""
    dw = dwarf.get("edata_s")
    if dw is None:
        return
    b = Binder(LAYOUTS)["edata_s"]
    bad = [n for n, (off, _size) in dw.members.items() if b.has(n) and b.offset(n) != off]
    if dw.size != b.size or bad:
        raise MdbError(f"jemalloc: this build's edata_t (0x{dw.size:x} bytes per DWARF) is not "
                       f"the 5.3 layout mdbpy knows (0x{b.size:x}; differs at {bad or 'size'})")


def locate(session) -> State:
    """The located state (cached per stop of the target)."""
    st = session.cache.get("jemalloc.state")
    if st is None:
        st = session.cache["jemalloc.state"] = _locate(session)
    return st


def _locate(session) -> State:
    found = require(session)
    name = f"jemalloc {found.version_text} ({found.obj.name})"
    if found.private is None:
        raise MdbError(NO_SYMBOLS.format(name=name))
    dwarf, dfile = _dwarf(found, BUILTIN + DWARF_ONLY)
    if "arena_s" not in dwarf or "base_s" not in dwarf:
        raise MdbError(NO_DWARF.format(name=name))
    _check_edata(dwarf)
    dwarf = {k: v for k, v in dwarf.items() if k != "edata_s"}
    binder = Binder(LAYOUTS, version=found.version, dwarf=dwarf)
    how = {"object": f"{found.obj.name} ({found.how})",
           "symbols": f"{found.private}* internal symbols",
           "layouts": f"DWARF {dfile} (edata_t builtin, checked against it)"}
    mem = session.mem
    emap = _sym(found, "arena_emap_global")
    if emap.size < RTREE_ROOT_ENTRIES * 8:
        raise MdbError(f"jemalloc: {found.private}arena_emap_global is {emap.size} bytes, "
                       "too small for a 48-bit rtree root")
    # the rtree's root array ends the emap (emap_s { rtree_s { base, init_lock, root[] } })
    root = emap.addr + emap.size - RTREE_ROOT_ENTRIES * 8
    how["emap"] = f"{found.private}arena_emap_global 0x{emap.addr:x}, root 0x{root:x}"
    tab = _sym(found, "sz_index2size_tab")
    index2size = list(_words(mem, tab.addr, tab.size // 8))
    bi = _sym(found, "bin_infos")
    bstruct = binder["bin_info_s"]
    raw = mem.read(bi.addr, bi.size)
    bins = []
    for k in range(bi.size // bstruct.size):
        v = bstruct.from_bytes(raw[k * bstruct.size:(k + 1) * bstruct.size])
        bins.append((v.reg_size, v.slab_size, v.nregs))
    if not bins or any(r <= 0 or n <= 0 or n > 512 or r * n > s for r, s, n in bins):
        raise MdbError(f"jemalloc: {found.private}bin_infos does not hold size classes "
                       "(not initialised, or not 5.3's bin_info_t)")
    ar = _sym(found, "arenas")
    ptrs = _words(mem, ar.addr, min(ar.size // 8, MALLOCX_ARENA_LIMIT))
    arenas = [(i, p) for i, p in enumerate(ptrs) if p]
    return State(found, binder, emap.addr, root, index2size, bins, arenas, how)


def _words(mem, addr: int, n: int) -> list[int]:
    import numpy as np

    return np.frombuffer(mem.read(addr, n * 8), "<u8").tolist()


def _reader(session, bound):
    """read(addr) for mdbpy.heap.walk.chain: a view of the bound struct, None if unreadable."""
    def read(addr):
        try:
            return bound.view(session.mem, addr)
        except ReadError:
            return None

    return read


def tcaches(session, st: State) -> list[Tcache]:
    """Every thread's tcache, from each arena's tcache_ql ring (jemalloc links a tcache into
    its arena's ring when stats are configured in, as Debian's and the default build are). A
    ring that cannot be followed is a warning and a shorter list."""
    if st._tcaches is not None:
        return st._tcaches
    arena_s, slow_s = st.binder["arena_s"], st.binder["tcache_slow_s"]
    out: list[Tcache] = []
    for _i, a in st.arenas:
        try:
            first = session.mem.read_ptr(a + arena_s.offset("tcache_ql"))
        except ReadError:
            st.warnings.append(f"arena 0x{a:x}: unreadable")
            continue
        if not first:
            continue
        nodes, stop = chain(first, _reader(session, slow_s), lambda v: v.link[0], MAX_TCACHES,
                            "tcache", end=first)
        if stop is not None:
            st.warnings.append(f"arena 0x{a:x} tcache_ql: {stop.why}")
        out += [Tcache(v.addr, v.tcache, a, v.dyn_alloc) for v in nodes if v.tcache]
    st._tcaches = out
    return out


def base_blocks(session, st: State) -> list[tuple[int, int]]:
    """[start, end) of every base block of every arena's base: jemalloc's own metadata (the
    edata_t, rtree leaves, arenas, tcaches), never a leak, never a root."""
    arena_s, base_s = st.binder["arena_s"], st.binder["base_s"]
    block_s = st.binder["base_block_s"]
    out: list[tuple[int, int]] = []
    seen_bases: set[int] = set()
    for _i, a in st.arenas:
        try:
            base = session.mem.read_ptr(a + arena_s.offset("base"))
            if not base or base in seen_bases:
                continue
            seen_bases.add(base)
            first = session.mem.read_ptr(base + base_s.offset("blocks"))
        except ReadError:
            st.warnings.append(f"arena 0x{a:x}: base unreadable")
            continue
        blocks, stop = chain(first, _reader(session, block_s), lambda v: v.next, 1 << 20,
                             "base block")
        if stop is not None:
            st.warnings.append(f"base 0x{base:x} blocks: {stop.why}")
        out += [(b.addr, b.addr + b.size) for b in blocks]
    return out
