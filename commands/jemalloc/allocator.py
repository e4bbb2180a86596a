"""JemallocAllocator: jemalloc (5.3, 5.2) seen through the generic heap interface.

Buffers are regions (regions.py): ALLOC when out of their slab (or a large extent in use) and
held by no tcache, FREE when free in their slab's bitmap or held by a thread's tcache (the
program freed them; jemalloc keeps them for reuse). Groups are size classes, named as jemalloc
names them (`jemalloc bin 48`, `jemalloc large 20480`); a buffer's control address is its
extent's edata_t. The heap regions are every extent the emap has (in use, dirty, muzzy or
retained: all of it jemalloc's memory), the metadata every base block.
"""

from __future__ import annotations

from mdbpy.errors import MdbError
from mdbpy.heap.damage import DamageLog
from mdbpy.heap.model import ALLOC, FREE, Allocator, BufferTable, Problem
from mdbpy.heap.roots import merge_columns

from .extents import extents
from .layouts import PAGE
from .regions import regions
from .state import base_blocks, locate, tcaches
from .tcache import cached

STACKS = "jemalloc tcache stacks"  # the group of the regions holding tcache stacks


class JemallocAllocator(Allocator):
    name = "jemalloc"
    record_name = "edata"  # a buffer's control address is its extent's edata_t

    def __init__(self, session):
        super().__init__(session)
        self.state = locate(session)
        self.version = self.state.found.version
        self.binder = self.state.binder
        self._table = None

    @classmethod
    def detect(cls, session):
        """jemalloc when an object defines it and its structures are found; a target with
        jemalloc whose structures cannot be found is one warning (what is missing), a target
        without it nothing."""
        from .version import find

        if find(session) is None:
            return None
        try:
            return cls(session)
        except MdbError as e:
            session.warn(str(e))
            return None

    def buffers(self) -> BufferTable:
        import numpy as np

        if self._table is not None:
            return self._table
        st = self.state
        ex = extents(self.session, st)
        r = regions(st, ex)
        held = cached(self.session, st).ptr
        state = np.where(r.out & ~np.isin(r.base, held), ALLOC, FREE).astype(np.uint8)
        nb = st.nbins
        groups = [f"jemalloc {'bin' if k < nb else 'large'} {s}"
                  for k, s in enumerate(st.index2size)] + [STACKS]
        group = r.szind.copy()
        group[self._stack_rows(r.base, r.size)] = len(groups) - 1
        self._table = BufferTable.from_columns(r.base, r.size, state, group, r.edata,
                                               groups=groups, sort=False)
        return self._table

    def _stack_rows(self, base, size):
        """The rows of the regions holding the tcaches' stacks: the regions (base sorted, with
        their sizes) in which each Tcache.stacks lies (5.3's tcache_slow_t.dyn_alloc, the
        region's start; 5.2's last slot of bin 0's stack, inside it)."""
        import numpy as np

        inside = np.array([t.stacks for t in tcaches(self.session, self.state) if t.stacks],
                          np.uint64)
        if not len(base):
            return np.zeros(0, np.int64)
        at = np.searchsorted(base, inside, side="right") - 1
        ok = (at >= 0) & (inside < base[np.maximum(at, 0)] + size[np.maximum(at, 0)])
        return at[ok]

    def candidates(self) -> BufferTable:
        """The allocated regions but the tcaches' stacks: jemalloc's own allocations, which
        hold stale pointers below each stack's head (regions the program took back out of the
        cache), so they are metadata, never scanned."""
        t = self.buffers()
        return t.select((t.state == ALLOC) & (t.group != len(t.groups) - 1))

    def request_sizes(self, table: BufferTable):
        """A region of size class k serves the requests from lowest_requests' bound for k up
        to the class (sz_index2size_tab, read from the target); the tcache stacks' regions:
        unknown."""
        import numpy as np

        sizes = list(self.state.index2size)
        classes = np.array(sizes + [0], np.uint64)
        lows = np.array(lowest_requests(sizes, self.state.nbins, PAGE) + [0], np.uint64)
        k = table.group.astype(np.int64)  # the stacks' group is past the classes: hi 0
        return lows[k], classes[k]

    def heap_regions(self) -> list[tuple[int, int]]:
        """The extents, neighbours joined: a million regions lie in a few hundred thousand
        extents but a few runs of memory, and every user of these ranges walks them."""
        ex = extents(self.session, self.state)
        return merge_columns(ex.base, ex.base + ex.size)

    def metadata_regions(self) -> list[tuple[int, int]]:
        """Every base block, and the regions holding the tcaches' stacks."""
        t = self.buffers()
        rows = self._stack_rows(t.base, t.size)
        return base_blocks(self.session, self.state) + list(zip(
            t.base[rows].tolist(), (t.base[rows] + t.size[rows]).tolist()))

    def group_addr(self, table: BufferTable, i: int) -> int:
        """The arena_t of buffer i's extent (::findleaks' CACHE column)."""
        return int(self._arenas_of(table.ctl[i:i + 1])[0])

    def group_addrs(self, table: BufferTable):
        return self._arenas_of(table.ctl)

    def _arenas_of(self, edata):
        """The arena_t address of each edata_t's arena (0 where unknown)."""
        import numpy as np

        ex = extents(self.session, self.state)
        out = np.zeros(len(edata), np.uint64)
        if not len(ex):
            return out
        order = np.argsort(ex.edata)
        known, ind = ex.edata[order], ex.arena[order]
        k = np.minimum(np.searchsorted(known, edata), len(known) - 1)
        ok = known[k] == edata
        by_ind = np.zeros(max([i for i, _a in self.state.arenas] + [0]) + 1, np.uint64)
        for i, a in self.state.arenas:
            by_ind[i] = a
        sel = ok & (ind[k] < len(by_ind))
        out[sel] = by_ind[ind[k][sel]]
        return out

    def untrusted(self) -> list[tuple[int, int, str]]:
        return DamageLog.of(self.session, "jemalloc").untrusted()

    def verify(self, progress=None) -> list[Problem]:
        """What the tcaches say against the slabs: a cached pointer that is no region out of
        its extent (free in its slab, or no region at all), a pointer cached twice (a double
        free through the tcache), and tcache bins that could not be read."""
        from .verify import verify

        return verify(self)


def lowest_requests(classes: list[int], nbins: int, page: int) -> list[int]:
    """The lowest request each size class serves, by jemalloc's sz_sa2u (include/jemalloc/
    internal/sz.h), which sizes every allocation with its alignment (1 for malloc): a small
    request (alignment up to a page) is rounded up to a multiple of its alignment first, so
    the first multiple of an alignment a above the class below (prev) lands in the class when
    it is no larger than the class, from the request just above the multiple of a below it
    (aligned_alloc(64, 24) is a 64-byte region; every power-of-two class serves from 1); a
    larger alignment, or a small request whose rounding passes the small classes, gets the
    smallest large class (it serves from 1); any other large class serves the requests
    above the class below, alignment or not (only its mapping grows)."""
    out = []
    for k, c in enumerate(classes):
        prev = classes[k - 1] if k else 0
        lo = prev + 1
        if k == nbins:
            lo = 1
        elif k < nbins:
            a = 2
            while a <= page:
                if (prev // a + 1) * a <= c:
                    lo = min(lo, prev // a * a + 1)
                a *= 2
        out.append(lo)
    return out
