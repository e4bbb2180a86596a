"""Finding jemalloc's state in an object without symbols or DWARF (Debian's stripped
libjemalloc.so.2: bookworm's 5.3.0, bullseye's 5.2.1; a Rust service's stripped static
copy, with or without stats), by candidates in the object's data and bss that must verify
before use.

Everything jemalloc needs to find its heap sits in its own writable data: the emap (an rtree
whose 2 MiB root array is a global; 5.2's extents_rtree), the size-class tables
(sz_index2size_tab, bin_infos), and the arenas[] array. What is known about them is the
release's source (layouts.py and below); where each one is, and the offsets of the few
arena_t and base_t fields the walk needs, are found here, each by a check that a wrong
candidate fails:

- the rtree root: a word pointing at a 2 MiB leaf whose elements name edata_t that hold the
  pages the elements stand for fixes the leaf's root index, hence the root's address; every
  other non-zero word of that root must then be such a leaf at its own index;
- sz_index2size_tab: the 232 size classes that LG_QUANTUM 4 and LG_PAGE 12 give (sc.c),
  exactly; bin_infos: SC_NBINS records whose reg_size is each small class, whose slab holds
  nregs regions and whose bitmap has a bit per region;
- a base_t (base.c): its `blocks` chain of base_block_t, each block's bump edata ending where
  the block does, the oldest block holding the base_t right after its header; its counters
  allocated <= resident <= mapped, mapped the sum of its blocks' sizes (base.c counts each
  block it maps), resident in whole pages; or, in a build without stats, which never updates
  them, all 0 where the release's base_t has them after `blocks`;
- arenas[]: MALLOCX_ARENA_LIMIT slots where slot i is 0 or an arena_t inside a block of a
  base whose ind (ehooks.ind, the first word) is i and which the arena points to (arena 0 and
  b0 included);
- arena_t.tcache_ql: the word of an arena_t pointing at a ring (5.3: of tcache_slow_t, whose
  tcache_t points back at it; 5.2: of tcache_t, whose bin array descriptor names its own
  bins) whose every node is bound to that arena. A build without stats links no tcache into
  that ring: each thread's tcache is then the one such node, bound to a known arena, in the
  thread's TLS block (its tsd_t).

A part with no candidate, or with candidates that disagree, is an MdbError naming it: the
caller shows that one line, never a heap built on a guess.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from mdbpy.errors import MdbError, ReadError
from mdbpy.heap.gather import session_gather
from mdbpy.heap.roots import data_ranges

from .layouts import (CACHELINE, LG_PAGE, MALLOCX_ARENA_LIMIT, PAGE, RTREE_LEAF_ENTRIES,
                      RTREE_LEVEL_BITS, RTREE_ROOT_ENTRIES, SC_NBINS, SC_NSIZES, Facts,
                      size_classes)

LEAF_BYTES = RTREE_LEAF_ENTRIES * 8
ROOT_BYTES = RTREE_ROOT_ENTRIES * 8
LEAF_SHIFT = LG_PAGE + RTREE_LEVEL_BITS[1]  # a root index covers 1 GiB of addresses
LEAF_AGREE = 0.9  # share of a leaf's elements that must hold their page (smashed ones aside)
BASE_HEAD_SCAN = 512  # bytes of a base_t searched for `blocks` (0xa0 in 5.3.0's x86-64 build)
BASE_STATS_SCAN = 1 << 13  # bytes of a base_t searched for its counters (0xf28 there)
ARENA_SCAN = 1 << 17  # bytes of an arena_t searched for base and tcache_ql (0x13468 there)
MAX_BLOCKS = 1 << 16  # base blocks in one chain before it is called garbage
MAX_CANDIDATES = 512  # words of the object's data tried as rtree leaves (2 MiB read each)


@dataclass
class Span:
    """A run of the object's writable data (data and bss joined), read whole as words."""

    start: int
    words: object  # numpy uint64

    @property
    def end(self) -> int:
        return self.start + 8 * len(self.words)


class Anon:
    """The target's anonymous writable memory, adjacent mappings joined: where jemalloc's
    bases (arenas, rtree leaves, base_t) live, since base.c maps its blocks with mmap. A
    candidate pointer elsewhere is none of them, and is dropped before anything is read."""

    def __init__(self, session):
        import numpy as np

        runs: list[list[int]] = []
        for m in session.mem.mappings():
            if not (m.readable and m.writable) or m.is_file or m.path:
                continue
            if runs and runs[-1][1] == m.start:
                runs[-1][1] = m.end
            else:
                runs.append([m.start, m.end])
        self.starts = np.array([a for a, _b in runs], np.uint64)
        self.ends = np.array([b for _a, b in runs], np.uint64)

    def end(self, addr: int) -> int | None:
        """The end of the run holding addr, None when addr is in none."""
        import numpy as np

        k = int(np.searchsorted(self.starts, np.uint64(addr), side="right")) - 1
        return int(self.ends[k]) if k >= 0 and addr < int(self.ends[k]) else None

    def holds(self, addrs):
        """The mask of addrs (numpy uint64) that lie in a run."""
        import numpy as np

        k = np.searchsorted(self.starts, addrs, side="right") - 1
        return (k >= 0) & (addrs < self.ends[np.maximum(k, 0)])


@dataclass
class Heuristic:
    """What the heuristics found: addresses, the verified offsets, and how, for ::jemalloc."""

    root: int
    leaves: int
    index2size: list[int]
    index2size_at: int
    bins: list[tuple[int, int, int]]
    bins_at: int
    arenas: list[tuple[int, int]]
    arenas_at: int
    bases: dict[int, int]  # arena_t -> its base_t
    offsets: dict[str, int]  # 'arena.tcache_ql', 'base.blocks', 'base.allocated', ...
    binder: object  # the release's builtin layouts


def spans(session, obj) -> list[Span]:
    """The object's writable data and bss (mdbpy.heap.roots' ranges, named after its file),
    adjacent ranges joined: .data ends inside the page where .bss starts. A range that cannot
    be read is left out: what it holds is then not found, and the search says so."""
    import numpy as np

    name = os.path.basename(obj.path or obj.name)
    ranges = sorted((r.start, r.end) for r in data_ranges(session)
                    if r.label in (f"{name} data", f"{name} bss"))
    joined: list[list[int]] = []
    for a, b in ranges:
        if joined and joined[-1][1] == a:
            joined[-1][1] = b
        else:
            joined.append([a, b])
    out = []
    for a, b in joined:
        try:
            out.append(Span(a, np.frombuffer(session.mem.read(a, b - a), "<u8")))
        except ReadError:
            continue
    if not out:
        raise MdbError(f"jemalloc: {obj.name}: its writable data cannot be read")
    return out


def locate(session, obj, facts: Facts, binder) -> Heuristic:
    """Everything, for the release whose facts and bound builtin layouts are given."""
    sp = spans(session, obj)
    root, leaves = find_root(session, obj, sp, facts.addr_mask)
    index2size, i2s_at = find_index2size(sp)
    bins, bins_at = find_bins(sp, index2size)
    b = Bases(session, binder, facts.counters_after_blocks)
    arenas, arenas_at, bases = find_arenas(session, sp, b)
    return Heuristic(root, leaves, index2size, i2s_at, bins, bins_at, arenas, arenas_at,
                     bases, offsets(session, binder[facts.ring], b, bases), binder)


def arena_bases(session, b: Bases, arenas: list[tuple[int, int]]) -> dict[int, int]:
    """arena_t -> base_t for arenas found otherwise (by symbol): each must verify."""
    out = {}
    for i, a in arenas:
        base = arena_base(session, b, a, i)
        if base is None:
            raise MdbError(f"jemalloc: arena {i} (0x{a:x}): no base_t of index {i} that "
                           "holds it was found in it")
        out[a] = base
    return out


def offsets(session, ring_s, b: Bases, bases: dict[int, int]) -> dict[str, int]:
    """The offsets found: base_t's (on the bases verified) and arena_t.tcache_ql (whose ring
    links ring_s, the release's bound tcache_slow_s or tcache_s). A build without stats
    (b.counters False) links no tcache into its arena's ring (tcache.c's
    tcache_arena_associate() does so only under config_stats): no ring to find its offset
    by, and none needed (tls_tcaches finds the tcaches)."""
    ring = {"arena.tcache_ql": find_tcache_ql(session, ring_s, bases)} if b.counters else {}
    return {**ring, "base.blocks": b.blocks_off, **b.stats_off}


# -- the emap's rtree root --------------------------------------------------------------------
def _leaf_index(session, anon: Anon, leaf: int, addr_mask: int) -> int | None:
    """The root index a leaf stands at, from its own elements: element j of the leaf at root
    index i is page (i << 30 | j << 12), which the edata_t it names must hold. None when the
    leaf is no leaf: no element, or fewer than LEAF_AGREE of them name an edata_t in anonymous
    memory (base blocks) with a size class in the high 16 bits, or agree on one index. Data
    that is no leaf fails on the cheap part (the mappings, the bits) before any edata_t is
    read."""
    import numpy as np

    try:
        raw = np.frombuffer(session.mem.read(leaf, LEAF_BYTES), "<u8")
    except ReadError:
        return None
    j = np.flatnonzero(raw)
    if not len(j):
        return None
    edata = raw[j] & np.uint64(addr_mask)
    plausible = anon.holds(edata) & ((raw[j] >> np.uint64(48))
                                     <= np.uint64(SC_NSIZES))
    if plausible.sum() < LEAF_AGREE * len(j):
        return None
    uniq, inv = np.unique(edata, return_inverse=True)
    rows, ok = session_gather(session).rows(uniq, 24)
    words = rows.view("<u8").reshape(-1, 3)
    base = (words[:, 1] & ~np.uint64(PAGE - 1))[inv]  # e_addr
    size = (words[:, 2] & ~np.uint64(PAGE - 1))[inv]  # e_size_esn
    ok = ok[inv] & plausible
    low = j.astype(np.uint64) << np.uint64(LG_PAGE)
    best = None
    for i in {int(x) >> LEAF_SHIFT for x in base[ok][:64].tolist()}:
        key = (np.uint64(i) << np.uint64(LEAF_SHIFT)) | low
        agree = int((ok & (key >= base) & (key < base + size)).sum())
        if agree >= LEAF_AGREE * len(j) and (best is None or agree > best[1]):
            best = (i, agree)
    return None if best is None else best[0]


def find_root(session, obj, sp: list[Span], addr_mask: int) -> tuple[int, int]:
    """(address of the rtree's root array, number of leaves): the one position where a word
    of the object's data is a leaf at its index and every other non-zero word of the 2 MiB
    root there is too."""
    import numpy as np

    anon = Anon(session)
    found: dict[int, int] = {}
    tried = 0
    for s in sp:
        w = s.words
        for k in np.flatnonzero((w != 0) & (w % np.uint64(CACHELINE) == 0)
                                & anon.holds(w)).tolist():
            v = int(w[k])
            if v + LEAF_BYTES > anon.end(v):
                continue
            tried += 1
            if tried > MAX_CANDIDATES:
                raise MdbError(f"jemalloc: {obj.name}: more than {MAX_CANDIDATES} words of its "
                               "data could be rtree leaves: not searched")
            i = _leaf_index(session, anon, v, addr_mask)
            if i is None or i >= RTREE_ROOT_ENTRIES:
                continue
            root = s.start + 8 * k - 8 * i
            if root < s.start or root + ROOT_BYTES > s.end or root in found:
                continue
            entries = s.words[(root - s.start) // 8:(root - s.start) // 8 + RTREE_ROOT_ENTRIES]
            idx = np.flatnonzero(entries).tolist()
            if all(n == i or _leaf_index(session, anon, int(entries[n]), addr_mask) == n
                   for n in idx):
                found[root] = len(idx)
    if len(found) != 1:
        raise MdbError(f"jemalloc: {obj.name}: no emap rtree root found in its data ("
                       + (f"{len(found)} candidates verify" if found else
                          "no word points at a 2 MiB leaf whose edata_t hold its pages")
                       + ")")
    return next(iter(found.items()))


# -- the size classes ------------------------------------------------------------------------
def _find_run(sp: list[Span], run) -> list[int]:
    """Addresses where the words of run appear, in any span."""
    import numpy as np

    want = np.array(run, np.uint64)
    out = []
    for s in sp:
        n = len(s.words) - len(want) + 1
        if n <= 0:
            continue
        hit = np.flatnonzero(s.words[:n] == want[0])
        for w in range(1, len(want)):
            hit = hit[s.words[hit + w] == want[w]]
        out += [s.start + 8 * int(h) for h in hit]
    return out


def find_index2size(sp: list[Span]) -> tuple[list[int], int]:
    """sz_index2size_tab: the one place holding every size class, in order."""
    sizes = size_classes()
    at = _find_run(sp, sizes)
    if len(at) != 1:
        raise MdbError("jemalloc: sz_index2size_tab not found: the "
                       f"{len(sizes)} size classes of 5.3 are in the data "
                       f"{len(at)} times (not initialised, or another configuration)")
    return sizes, at[0]


def find_bins(sp: list[Span], index2size: list[int]) -> tuple[list[tuple[int, int, int]], int]:
    """bin_infos: SC_NBINS bin_info_t (reg_size, slab_size, nregs, n_shards, bitmap nbits,
    ngroups) of the small classes, each slab whole pages holding nregs regions."""
    import numpy as np

    found = []
    for s in sp:
        for k in np.flatnonzero(s.words == np.uint64(index2size[0])).tolist():
            rec = s.words[k:k + SC_NBINS * 5]
            if len(rec) < SC_NBINS * 5:
                continue
            r = rec.reshape(SC_NBINS, 5)
            reg, slab = r[:, 0].astype(np.int64), r[:, 1].astype(np.int64)
            nregs = (r[:, 2] & np.uint64(0xffffffff)).astype(np.int64)
            shards = (r[:, 2] >> np.uint64(32)).astype(np.int64)
            ok = ((reg == np.array(index2size[:SC_NBINS])) & (slab > 0) & (slab % PAGE == 0)
                  & (nregs == slab // np.maximum(reg, 1)) & (shards >= 1)
                  & (r[:, 3].astype(np.int64) == nregs)
                  & (r[:, 4].astype(np.int64) == (nregs + 63) // 64))
            if ok.all():
                found.append((s.start + 8 * k,
                              list(zip(reg.tolist(), slab.tolist(), nregs.tolist()))))
    if len(found) != 1:
        raise MdbError(f"jemalloc: bin_infos not found: {len(found)} places hold {SC_NBINS} "
                       "bin_info_t of the small size classes")
    return found[0][1], found[0][0]


# -- bases and arenas ------------------------------------------------------------------------
class Bases:
    """base_t candidates checked against base.c's invariants; the offsets of `blocks` and of
    the counters are found on the first base that verifies and must hold for every other.
    A build without stats keeps base_t's counters but never updates them (base.c changes
    them only under config_stats): where the first base's counters are found nowhere, they
    must be 0 at the release's place after `blocks` (counters_after), and are on every base;
    `counters` says which."""

    def __init__(self, session, binder, counters_after: int):
        self.session = session
        self.anon = Anon(session)
        self.header = binder["base_block_s"].size  # size, next, its edata_t
        self.counters_after = counters_after
        self.blocks_off: int | None = None
        self.stats_off: dict[str, int] = {}
        self.counters: bool | None = None  # None until the first base verifies
        self._seen: dict[int, tuple[int, list[tuple[int, int]]] | None] = {}  # base -> _verify

    def _words(self, addr: int, n: int):
        import numpy as np

        try:
            return np.frombuffer(self.session.mem.read(addr, n), "<u8")
        except ReadError:
            return None

    def _chain(self, head: int, base: int) -> list[tuple[int, int]] | None:
        """[start, end) of each block from head, when it is base's chain: every block's bump
        edata (e_addr, e_bsize) ends where the block does, and the oldest block holds base
        right after its header (the first thing base_new allocates from it)."""
        out = []
        cur = head
        while cur and len(out) < MAX_BLOCKS:
            w = self._words(cur, self.header)
            if w is None or cur % 8:
                return None
            size, nxt, e_addr, e_bsize = (int(x) for x in (w[0], w[1], w[3], w[4]))
            if (size == 0 or size % PAGE or not cur < e_addr <= cur + size
                    or e_addr + e_bsize != cur + size):
                return None
            out.append((cur, cur + size))
            cur = nxt
        if cur or not out:
            return None
        first = out[-1][0]
        want = (first + self.header + CACHELINE - 1) // CACHELINE * CACHELINE
        return out if base == want else None

    def blocks(self, base: int, ind: int) -> list[tuple[int, int]] | None:
        """The blocks of base when it is a base_t of arena index ind, else None."""
        if base not in self._seen:
            self._seen[base] = self._verify(base)
        got = self._seen[base]
        return got[1] if got is not None and got[0] == ind else None

    def _verify(self, base: int) -> tuple[int, list[tuple[int, int]]] | None:
        """(its ind, its blocks) when base is a base_t, else None."""
        if base % CACHELINE:
            return None
        head = self._words(base, BASE_STATS_SCAN)
        if head is None:
            return None
        offs = ([self.blocks_off] if self.blocks_off is not None else
                range(8, BASE_HEAD_SCAN, 8))
        for off in offs:
            chain = self._chain(int(head[off // 8]), base)
            if chain is not None and self._stats(head, off, chain):
                self.blocks_off = off
                return int(head[0]) & 0xffffffff, chain
        return None

    def _stats(self, head, blocks_off: int, chain) -> bool:
        """Whether base's counters (allocated, resident, mapped: consecutive size_t at the end
        of base_t) are where they were found on the first base, or, on the first, found at
        exactly one place after `blocks`; or, without stats, all 0 at the release's place."""
        mapped = sum(b - a for a, b in chain)

        def fits(k: int) -> bool:
            a, r, m = (int(x) for x in head[k:k + 3])
            return m == mapped and r % PAGE == 0 and 0 < a <= r <= m

        def zero(k: int) -> bool:
            return k + 3 <= len(head) and not head[k:k + 3].any()

        if self.stats_off:
            k = self.stats_off["base.allocated"] // 8
            return fits(k) if self.counters else zero(k)
        hits = [k for k in range(blocks_off // 8 + 1, len(head) - 2) if fits(k)]
        if len(hits) == 1:
            k, self.counters = hits[0], True
        else:
            k, self.counters = (blocks_off + self.counters_after) // 8, False
            if hits or not zero(k):
                self.counters = None
                return False
        self.stats_off = {"base.allocated": 8 * k, "base.resident": 8 * k + 8,
                          "base.mapped": 8 * k + 16}
        return True


def _arena_window(session, anon: Anon, arena: int):
    """The words of arena_t's first ARENA_SCAN bytes (fewer where its mapping ends)."""
    import numpy as np

    end = anon.end(arena)
    if end is None:
        return None
    try:
        return np.frombuffer(session.mem.read(arena, min(ARENA_SCAN, end - arena) // 8 * 8),
                             "<u8")
    except ReadError:
        return None


def arena_base(session, bases: Bases, arena: int, ind: int) -> int | None:
    """The base_t arena ind points to, which must hold the arena in one of its blocks
    (arena_new allocates the arena from its own base)."""
    import numpy as np

    w = _arena_window(session, bases.anon, arena)
    if w is None:
        return None
    found = set()
    for v in np.unique(w[(w % np.uint64(CACHELINE) == 0) & bases.anon.holds(w)]).tolist():
        chain = bases.blocks(v, ind)
        if chain and any(a <= arena < b for a, b in chain):
            found.add(v)
    return found.pop() if len(found) == 1 else None


def find_arenas(session, sp: list[Span], bases: Bases):
    """(arenas as (index, arena_t), the address of arenas[], arena -> base): the one array of
    MALLOCX_ARENA_LIMIT slots whose every non-zero slot i is an arena of base index i, and
    whose slot 0 is set (arena 0 exists once jemalloc is initialised)."""
    import numpy as np

    seen: dict[tuple[int, int], int | None] = {}

    def base_of(arena: int, ind: int) -> int | None:
        if (arena, ind) not in seen:
            seen[arena, ind] = arena_base(session, bases, arena, ind)
        return seen[arena, ind]

    results = {}
    for s in sp:
        w = s.words[:max(len(s.words) - MALLOCX_ARENA_LIMIT + 1, 0)]
        for k in np.flatnonzero((w % np.uint64(CACHELINE) == 0) & bases.anon.holds(w)).tolist():
            if base_of(int(w[k]), 0) is None:
                continue
            slots = s.words[k:k + MALLOCX_ARENA_LIMIT]
            got = [(i, int(slots[i])) for i in np.flatnonzero(slots).tolist()]
            if all(base_of(a, i) is not None for i, a in got):
                results[s.start + 8 * k] = got
    lists = {tuple(g) for g in results.values()}
    if len(lists) != 1:
        raise MdbError("jemalloc: arenas[] not found: "
                       + (f"{len(results)} candidate arrays disagree" if results else
                          "no array of arenas, each inside its own base, in the data"))
    at = min(results)
    got = results[at]
    return got, at, {a: seen[a, i] for i, a in got}


def find_tcache_ql(session, ring_s, bases: dict[int, int]) -> int:
    """The offset of arena_t.tcache_ql: the one offset where every arena has 0 or a word
    pointing at a ring of ring_s nodes of that arena, and at least one arena has a ring."""
    import numpy as np

    arena_off = ring_s.offset("arena")
    anon = Anon(session)
    windows = {a: _arena_window(session, anon, a) for a in bases}
    g = session_gather(session)
    rings: set[int] = set()
    for arena, w in windows.items():
        if w is None:
            continue
        # a ring's first word to check, for every word at once: its `arena` field
        k = np.flatnonzero((w % np.uint64(8) == 0) & (w != 0))
        back, ok = g.u64(w[k] + np.uint64(arena_off))
        rings |= {8 * int(j) for j in k[ok & (back == np.uint64(arena))].tolist()
                  if _is_ring(session, ring_s, int(w[j]), arena)}
    offs = [o for o in sorted(rings) if all(
        w is not None and (not w[o // 8] or _is_ring(session, ring_s, int(w[o // 8]), a))
        for a, w in windows.items())]
    if len(offs) != 1:
        raise MdbError("jemalloc: arena_t.tcache_ql not found: "
                       + (f"{len(offs)} offsets hold a thread cache ring or 0 in every arena"
                          if rings else "no arena has a thread cache ring"))
    return offs[0]


def _is_ring(session, ring_s, first: int, arena: int) -> bool:
    """Whether first starts a ring of ring_s nodes (qre_next first in `link`) all bound to
    arena, each pointing at itself the way its release does: 5.3's tcache_slow_t names a
    tcache_t whose first word (tcache_slow) names it back; 5.2's tcache_t has a bin array
    descriptor naming its own bins_small."""
    cur, n = first, 0
    try:
        while n < 1 << 16:
            v = ring_s.view(session.mem, cur)
            if v.arena != arena or not _self_named(session, v):
                return False
            cur, n = v.link[0], n + 1
            if cur == first:
                return True
    except ReadError:
        return False
    return False


def _self_named(session, v) -> bool:
    if v.struct.name == "tcache_slow_s":
        return bool(v.tcache) and session.mem.read_ptr(v.tcache) == v.addr
    return v.cache_bin_array_descriptor.bins_small == v.addr + v.struct.offset("bins_small")


# -- each thread's tcache, without stats and without DWARF --------------------------------------
def tls_tcaches(session, obj, ring_s, arenas: set[int]):
    """(views of ring_s, warnings): each thread's tcache, found in its copy of obj's TLS block
    (tsd.c's tsd_tls, a thread-local tsd_t, embeds the thread's tcache_slow_t and tcache_t in
    5.3, its tcache_t in 5.2): the one place of the block holding a ring_s bound to a known
    arena that names itself as its release does (_self_named). For a build without stats,
    whose arenas' rings are empty; a thread with no tcache yet has none bound to an arena."""
    import numpy as np

    from mdbpy.symbols.tls import thread_block, tls_segment

    seg = tls_segment(obj)
    if seg is None:
        return [], [f"{obj.name}: no PT_TLS program header: its TLS block's size is unknown, "
                    "the threads' tcaches are not searched"]
    size = seg[1]
    arena_at = ring_s.offset("arena") // 8
    known = np.array(sorted(arenas), np.uint64)
    out, warnings = [], []
    for th in session.target.threads():
        block = thread_block(session, obj, th)
        w = _tls_words(session, block, size) if block is not None else None
        if w is None:
            warnings.append(f"thread {th.tid}: {obj.name}'s TLS block cannot be read")
            continue
        k = np.flatnonzero(np.isin(w[arena_at:], known))
        got = []
        for j in k.tolist():
            try:
                v = ring_s.view(session.mem, block + 8 * j)
                if _self_named(session, v):
                    got.append(v)
            except ReadError:
                continue
        if len(got) > 1:
            warnings.append(f"thread {th.tid}: {len(got)} tcaches in its TLS block: none used")
        out += got[:1] if len(got) == 1 else []
    return out, warnings


def _tls_words(session, block: int, size: int):
    """The words of a thread's copy of a TLS block of size bytes at block, as far as the
    mapping holding block goes (a damaged p_memsz reads no further than memory that is
    there); None when it cannot be read."""
    import numpy as np

    m = next((m for m in session.mem.mappings() if m.start <= block < m.end), None)
    if m is None:
        return None
    try:
        return np.frombuffer(session.mem.read(block, min(size, m.end - block) // 8 * 8), "<u8")
    except ReadError:
        return None