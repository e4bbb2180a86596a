"""Finding jemalloc's global state in a target: the emap's rtree root, the size-class tables,
the arenas and their bases, each thread's tcache.

Three ways, chosen by what the object carries, and recorded in `how` for ::jemalloc:
- symbols and DWARF (a -g build): the globals by their internal symbols (`je_arena_emap_global`,
  5.2's `je_extents_rtree`, `je_bin_infos`, `je_sz_index2size_tab`, `je_arenas`, with the
  object's private prefix), the arena_t and base_t offsets from DWARF; and (5.3) tsd.c's list
  of every thread's tsd_t (`tsd_nominal_tsds`, a local symbol) with tsd_t's layout, where
  each thread's tcache is found even when jemalloc was built without stats
  (tikv-jemalloc-sys' default), which then links no tcache into its arena's ring;
- symbols without DWARF: the globals by symbol, the arena_t and base_t offsets found by
  heuristic.py's verified search;
- no internal symbols (Debian's stripped libjemalloc.so.2): everything by heuristic.py.
Whatever cannot be found or does not verify is one MdbError naming it, never a guess.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mdbpy.errors import MdbError, ReadError
from mdbpy.heap.walk import chain
from mdbpy.layout.bind import Binder
from mdbpy.types.layouts import bound_layouts

from . import heuristic
from .layouts import FACTS, MALLOCX_ARENA_LIMIT, RTREE_ROOT_ENTRIES, Facts
from .version import Found, require

MAX_TCACHES = 1 << 16  # tcaches in one arena's ring before the walk calls it garbage
BASE_FIELDS = ("blocks", "allocated", "resident", "mapped")
NOMINAL = "tsd_nominal_tsds"  # tsd.c's static ring of the tsd_t of every (nominal) thread


@dataclass
class Tcache:
    """One thread's tcache: its ring node and tcache_t, and the arena it is bound to."""

    slow: int  # the node of its arena's ring: tcache_slow_t (5.3), the tcache_t itself (5.2)
    addr: int
    arena: int
    stacks: int  # an address inside the region holding its bins' stacks (0: none)


@dataclass
class State:
    found: Found
    binder: Binder
    root: int  # its rtree's root array (RTREE_ROOT_ENTRIES node pointers)
    index2size: list[int]  # sz_index2size_tab: usable size of each size class
    bins: list[tuple[int, int, int]]  # bin_infos: (reg_size, slab_size, nregs) per small class
    arenas: list[tuple[int, int]]  # (index, arena_t address)
    bases: dict[int, int]  # arena_t -> its base_t
    offsets: dict[str, int]  # 'arena.tcache_ql', 'base.blocks', 'base.allocated', ...
    how: dict[str, str]
    warnings: list[str] = field(default_factory=list)
    nominal: int = 0  # tsd_nominal_tsds, the ring of every thread's tsd_t (0: not known)
    _tcaches: list[Tcache] | None = None

    @property
    def facts(self) -> Facts:
        return FACTS[self.found.version[:2]]

    @property
    def nbins(self) -> int:
        return len(self.bins)

    @property
    def tcaches_in_tls(self) -> bool:
        """Whether each thread's tcache is searched in its TLS block: no arena ring leads to
        it (the heuristics find no tcache_ql offset in a build without stats, which links no
        tcache into one) and no tsd_nominal_tsds (known from DWARF only). One test for where
        the tcaches are read (tcaches) and where ::jemalloc says how (locate)."""
        return "arena.tcache_ql" not in self.offsets and not self.nominal

    def size_name(self, szind: int) -> str:
        return f"{self.index2size[szind]}" if 0 <= szind < len(self.index2size) else "?"


def _sym(found: Found, name: str):
    s = found.obj.lookup(found.private + name)
    if s is None or not s.addr:
        raise MdbError(f"jemalloc: {found.obj.name} has no symbol {found.private}{name}")
    return s


def _check_edata(dwarf: dict, facts: Facts, release: str) -> None:
    """edata_s (5.2's extent_s) is bound from its builtin layout (DWARF cannot name its union
    members); DWARF, when present, must agree on its size and on every member it names."""
    dw = dwarf.get("edata_s")
    if dw is None:
        return
    b = Binder(facts.layouts)["edata_s"]
    bad = [n for n, (off, _size) in dw.members.items() if b.has(n) and b.offset(n) != off]
    if dw.size != b.size or bad:
        raise MdbError(f"jemalloc: this build's {facts.dwarf_names['edata_s']} (0x{dw.size:x} "
                       f"bytes per DWARF) is not the {release} layout mdbpy knows "
                       f"(0x{b.size:x}; differs at {bad or 'size'})")


def dwarf_names(facts: Facts) -> dict[str, str]:
    """The name in the release's DWARF of each struct it describes -> the descriptor's."""
    return {facts.dwarf_names.get(n, n): n for n in facts.full.structs}


def _dwarf(session, found: Found, facts: Facts) -> tuple[dict, str | None]:
    """The object's DWARF of the structs described (its own, or its debug file's) through
    the types index, cached by build-id, keyed by descriptor name (5.2's extent_s as
    edata_s): ({}, None) without DWARF."""
    names = dwarf_names(facts)
    dwarf, dfile = bound_layouts(session, found.obj.name, names)
    return {names[k]: v for k, v in dwarf.items()}, dfile


def locate(session) -> State:
    """The located state (cached per stop of the target)."""
    st = session.cache.get("jemalloc.state")
    if st is None:
        st = session.cache["jemalloc.state"] = _locate(session)
        if st.tcaches_in_tls:
            st.how["threads"] = ("each thread's TLS block: the tcache in it bound to an arena "
                                 "(no stats: the arenas' rings are empty)")
    return st


def _locate(session) -> State:
    found = require(session)
    if found.private is None:
        return _by_heuristics(session, found)
    facts = FACTS[found.version[:2]]
    release = ".".join(map(str, found.version[:2]))
    dwarf, dfile = _dwarf(session, found, facts)
    _check_edata(dwarf, facts, release)
    full = "arena_s" in dwarf and "base_s" in dwarf  # else ::layout shows no arena_s guess
    binder = Binder(facts.full if full else facts.layouts, version=found.version,
                    dwarf={k: v for k, v in dwarf.items() if k != "edata_s"})
    st = _by_symbols(session, found, binder)
    if full:
        st.how = {"method": "symbols and DWARF", **st.how,
                  "layouts": f"DWARF {dfile} ({facts.dwarf_names['edata_s'][:-2]}_t builtin "
                             f"{release}, checked against it)"}
        _dwarf_offsets(session, st)
        nominal = found.obj.lookup(NOMINAL)
        # 5.3's tsd_s (5.2's is not described: its tcaches are found as without DWARF)
        if "tsd_s" in dwarf and nominal is not None and nominal.addr:
            st.nominal = nominal.addr
            st.how["threads"] = (f"{NOMINAL} 0x{nominal.addr:x}: each thread's tsd_t (its "
                                 "tcache inside, per DWARF)")
    else:
        st.how = {"method": "symbols; arena_t and base_t offsets by verified heuristics (no "
                            "DWARF)", **st.how}
        bases = heuristic.Bases(session, binder, st.facts.counters_after_blocks)
        st.bases = heuristic.arena_bases(session, bases, st.arenas)
        st.offsets = heuristic.offsets(session, binder[st.facts.ring], bases, st.bases)
        st.how["layouts"] = _found_layouts(found, st.offsets)
    return st


def _where(found: Found, addr: int) -> str:
    """An address and where it is in the object (its file address, as readelf shows it)."""
    return f"0x{addr:x} ({found.obj.name}+0x{addr - found.obj.bias:x})"


def _found_layouts(found: Found, offsets: dict[str, int]) -> str:
    release = ".".join(map(str, found.version[:2]))
    return (f"builtin {release} (edata_t, tcache_t, cache_bin_t, bin_info_t); found: "
            + ", ".join(f"{k.replace('arena.', 'arena_t.').replace('base.', 'base_t.')} "
                        f"+0x{v:x}" for k, v in offsets.items()))


def _by_heuristics(session, found: Found) -> State:
    facts = FACTS[found.version[:2]]
    h = heuristic.locate(session, found.obj, facts,
                         Binder(facts.layouts, version=found.version))
    how = {"method": "heuristics, each verified (no internal symbols)",
           "object": f"{found.obj.name} ({found.how})",
           "emap": f"rtree root {_where(found, h.root)}: {h.leaves} "
                   f"{'leaf' if h.leaves == 1 else 'leaves'} whose elements' edata_t hold "
                   "their pages",
           "sizes": f"sz_index2size_tab {_where(found, h.index2size_at)}: "
                    f"{len(h.index2size)} size classes",
           "bins": f"bin_infos {_where(found, h.bins_at)}: {len(h.bins)} small classes",
           "arenas[]": f"{_where(found, h.arenas_at)}: each arena inside a block of its base",
           "layouts": _found_layouts(found, h.offsets)}
    return State(found, h.binder, h.root, h.index2size, h.bins,
                 h.arenas, h.bases, h.offsets, how)


def _dwarf_offsets(session, st: State) -> None:
    """The arena_t and base_t offsets from DWARF, and each arena's base read through them."""
    arena_s, base_s = st.binder["arena_s"], st.binder["base_s"]
    st.offsets = {"arena.tcache_ql": arena_s.offset("tcache_ql"),
                  **{f"base.{n}": base_s.offset(n) for n in BASE_FIELDS}}
    for _i, a in st.arenas:
        try:
            st.bases[a] = session.mem.read_ptr(a + arena_s.offset("base"))
        except ReadError:
            st.warnings.append(f"arena 0x{a:x}: unreadable")


def _by_symbols(session, found: Found, binder: Binder) -> State:
    """The globals by their symbols; the bases and offsets are the caller's."""
    how = {"object": f"{found.obj.name} ({found.how})",
           "symbols": f"{found.private}* internal symbols"}
    mem = session.mem
    name = FACTS[found.version[:2]].emap
    emap = _sym(found, name)
    if emap.size < RTREE_ROOT_ENTRIES * 8:
        raise MdbError(f"jemalloc: {found.private}{name} is {emap.size} bytes, "
                       "too small for a 48-bit rtree root")
    # the rtree's root array ends the emap (5.3: emap_s { rtree_s { base, init_lock, root[] } };
    # 5.2.1's extents_rtree is an rtree_s { init_lock, root[] })
    root = emap.addr + emap.size - RTREE_ROOT_ENTRIES * 8
    how["emap"] = f"{found.private}{name} 0x{emap.addr:x}, root 0x{root:x}"
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
                       "(not initialised, or not the bin_info_t of 5.2 and 5.3)")
    ar = _sym(found, "arenas")
    ptrs = _words(mem, ar.addr, min(ar.size // 8, MALLOCX_ARENA_LIMIT))
    arenas = [(i, p) for i, p in enumerate(ptrs) if p]
    return State(found, binder, root, index2size, bins, arenas, {}, {}, how)


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
    its arena's ring when stats are configured in, as Debian's and the default build are),
    and, where known, from every thread's tsd_t (_tsd_tcaches). A ring that cannot be
    followed is a warning and a shorter list."""
    if st._tcaches is not None:
        return st._tcaches
    ring_s = st.binder[st.facts.ring]
    out: list[Tcache] = []
    for _i, a in st.arenas if "arena.tcache_ql" in st.offsets else ():
        try:
            first = session.mem.read_ptr(a + st.offsets["arena.tcache_ql"])
        except ReadError:
            st.warnings.append(f"arena 0x{a:x}: unreadable")
            continue
        if not first:
            continue
        nodes, stop = chain(first, _reader(session, ring_s), lambda v: v.link[0], MAX_TCACHES,
                            "tcache", end=first)
        if stop is not None:
            st.warnings.append(f"arena 0x{a:x} tcache_ql: {stop.why}")
        out += [_tcache(v, a) for v in nodes]
    known = {t.addr for t in out}
    out += [t for t in _tsd_tcaches(session, st) if t.addr not in known]
    if st.tcaches_in_tls:
        views, warnings = heuristic.tls_tcaches(session, st.found.obj, ring_s,
                                                {a for _i, a in st.arenas})
        st.warnings += warnings
        out += [_tcache(v, v.arena) for v in views]
    st._tcaches = [t for t in out if t.addr]
    return st._tcaches


def _tsd_tcaches(session, st: State) -> list[Tcache]:
    """The tcache of each thread on tsd_nominal_tsds (its tcache_slow_t and tcache_t are
    inside its tsd_t; one whose tcache_slow_t names no arena has no tcache: disabled, or not
    yet made). Every thread that can allocate is on that ring, stats or not."""
    if not st.nominal:
        return []
    tsd_s, slow_s = st.binder["tsd_s"], st.binder["tcache_slow_s"]
    try:
        first = session.mem.read_ptr(st.nominal)  # ql_head: its first tsd_t
    except ReadError:
        st.warnings.append(f"{NOMINAL} 0x{st.nominal:x}: unreadable")
        return []
    if not first:
        return []
    tsds, stop = chain(first, _reader(session, tsd_s), lambda v: v.tsd_link[0], MAX_TCACHES,
                       "tsd", end=first)
    if stop is not None:
        st.warnings.append(f"{NOMINAL}: {stop.why}")
    out = []
    for t in tsds:
        v = _reader(session, slow_s)(t.addr + tsd_s.offset("tcache_slow"))
        if v is None:
            st.warnings.append(f"tsd 0x{t.addr:x}: its tcache_slow_t is unreadable")
        elif v.arena:
            out.append(_tcache(v, v.arena))
    return out


def _tcache(v, arena: int) -> Tcache:
    """A ring node as a Tcache. 5.3: a tcache_slow_t, whose dyn_alloc is the region of its
    stacks; 5.2: a tcache_t, whose stacks are one region that bin 0's stack (below its avail)
    starts (tsd_tcache_data_init allocates it, tcache_init hands it out bin by bin)."""
    if v.struct.name == "tcache_slow_s":
        return Tcache(v.addr, v.tcache, arena, v.dyn_alloc)
    avail = v.bins_small[0].avail
    return Tcache(v.addr, v.addr, arena, avail - 8 if avail else 0)


def base_blocks(session, st: State) -> list[tuple[int, int]]:
    """[start, end) of every base block of every arena's base: jemalloc's own metadata (the
    edata_t, rtree leaves, arenas, tcaches), never a leak, never a root."""
    block_s = st.binder["base_block_s"]
    out: list[tuple[int, int]] = []
    for base in sorted(set(st.bases.values()) - {0}):
        try:
            first = session.mem.read_ptr(base + st.offsets["base.blocks"])
        except ReadError:
            st.warnings.append(f"base 0x{base:x}: unreadable")
            continue
        blocks, stop = chain(first, _reader(session, block_s), lambda v: v.next, 1 << 20,
                             "base block")
        if stop is not None:
            st.warnings.append(f"base 0x{base:x} blocks: {stop.why}")
        out += [(b.addr, b.addr + b.size) for b in blocks]
    return out
