"""Reading a simulated SLUB heap: caches, slabs, free lists and objects, as the generic engines
need them (mdbpy.heap.model.Allocator).

Everything is reached from the `sim_allocator` global through the descriptors of
mdbpy/sim/layouts.py. The target is untrusted: the lists are walked by walk.py, bounded and
cycle-safe, each descriptor checked before it is believed; what does not hold together is
warned about once with where it is, kept as a Problem for ::heap_verify where slub_debug has a
word for it, and its memory named by untrusted() for ::findleaks, so a corrupt heap can still
be examined.

Sizes met in benchmarks are a million objects in tens of thousands of slabs, so nothing here
is a Python loop per slab or per object: slabs are kept column-wise; the buffer table is
expanded from the slabs; allocation tracks are read together (mdbpy.heap.gather).
"""

from __future__ import annotations

from mdbpy.errors import ReadError
from mdbpy.heap.arrays import distinct
from mdbpy.heap.damage import DamageLog
from mdbpy.heap.model import (CTL_NONE, FREE, AllocRecord, Allocator, Buffer, BufferTable, HeapStat,
                              Problem, RecordColumns)
from mdbpy.layout.bind import X86_64, Binder
from mdbpy.sim.layouts import (SIM_ALLOCATOR_SYMBOL, SIM_LAYOUTS, SIM_MAGIC, SIM_POISON,
                               SIM_RED_ZONE)

from .model import SimCache, SimSlab, decoded
from .verify import check_cache
from .walk import (ALREADY_FREE, MAX_METADATA, drop_overlaps, read_cache_list,
                   read_slab_list, walk_freelists)


class SimAllocator(Allocator):
    """The simulator's SLUB-like allocator, found through its `sim_allocator` global."""

    name = "sim"
    record_name = "track"

    def __init__(self, session, root):
        super().__init__(session)
        self.root = root  # the sim_allocator view
        self.binder = session.cache.setdefault(("sim", "binder"), Binder(SIM_LAYOUTS, X86_64))
        self.version = (root.version,)
        self._list: list[SimCache] | None = None
        self._caches: list[SimCache] | None = None
        self._meta: tuple[int, bytes] | None = None
        self._table: BufferTable | None = None
        self.walk_problems: list[Problem] = []
        self.damage = DamageLog.of(session, "sim")

    @classmethod
    def detect(cls, session) -> SimAllocator | None:
        binder = session.cache.setdefault(("sim", "binder"), Binder(SIM_LAYOUTS, X86_64))
        root = cls.root_at(session, SIM_ALLOCATOR_SYMBOL, binder, "sim_allocator")
        if root is None:
            return None
        if root.magic != SIM_MAGIC:
            session.warn(f"sim: {SIM_ALLOCATOR_SYMBOL} at 0x{root.addr:x} has magic "
                         f"0x{root.magic:x}, not 0x{SIM_MAGIC:x}")
            return None
        return cls(session, root)

    # -- walking the structures ---------------------------------------------------------------
    def cache_list(self) -> list[SimCache]:
        """Every cache's descriptor, its slabs not read yet: enough to name the caches."""
        if self._list is None:
            self._list = read_cache_list(self)
        return self._list

    def caches(self) -> list[SimCache]:
        """Every cache with its slabs and free lists (read once per session state)."""
        if self._caches is None:
            caches = self.cache_list()
            for c in caches:
                read_slab_list(self, c)
            drop_overlaps(self, caches)
            for c in caches:
                walk_freelists(self, c)
            self._caches = caches
        return self._caches

    def cache_named(self, name: str) -> SimCache | None:
        for c in self.caches():
            if c.name == name:
                return c
        return None

    def cache_at(self, addr: int) -> SimCache | None:
        for c in self.caches():
            if c.addr == addr:
                return c
        return None

    def metadata(self) -> tuple[int, bytes]:
        """(start, bytes) of the metadata region the root names, read once: the slab
        descriptors are unpacked from it rather than read one by one (b"" when it is
        unreadable or implausibly large, and then they are)."""
        if self._meta is None:
            lo, hi = self.root.metadata, self.root.metadata_end
            data = b""
            if 0 < hi - lo <= MAX_METADATA:
                try:
                    data = self.session.mem.read(lo, hi - lo)
                except ReadError:
                    pass
            self._meta = (lo, data)
        return self._meta

    def in_metadata(self, addr: int, size: int) -> bool:
        """Whether a descriptor of `size` bytes at addr lies (aligned) in the metadata
        region, where every cache and slab descriptor lives."""
        return not addr % 8 and self.root.metadata <= addr <= self.root.metadata_end - size

    def problem(self, kind: str, c: SimCache, addr: int, size: int = 0, note: str = ""):
        """Keep a Problem the walks met, for ::heap_verify."""
        p = Problem(kind, c.name, addr, size, note=note)
        if kind == ALREADY_FREE:
            p.records = self.records_at(c, addr)
        self.walk_problems.append(p)

    # -- the Allocator interface ----------------------------------------------------------------
    def buffers(self) -> BufferTable:
        if self._table is None:
            self._table = self._build_table(True)
        return self._table

    def candidates(self) -> BufferTable:
        """The allocated objects, expanded without the free ones (no full table and no copy
        of it: a million-object heap's table is 30 MB)."""
        if self._table is not None:
            return super().candidates()
        return self._build_table(False)

    def _build_table(self, keep_free: bool) -> BufferTable:
        """The objects of every slab: the slabs are sorted by address (slabs never overlap, so
        their slots come out sorted too) and expanded as runs (BufferTable.from_runs), with
        the free slots from the free lists marked, or left out without keep_free."""
        import numpy as np

        caches = [c for c in self.caches() if len(c.slab_base)]
        names = [c.name for c in self.caches()]
        if not caches:
            return BufferTable.from_columns([], [], [], groups=names)

        def per_slab(f, dtype=np.uint64):
            return np.concatenate([np.full(len(c.slab_base), f(c), dtype) for c in caches])

        slab_base = np.concatenate([c.slab_base for c in caches])
        order = np.argsort(slab_base, kind="stable")
        counts = np.concatenate([c.slab_objects for c in caches])[order]
        start = np.concatenate(([0], np.cumsum(counts)[:-1]))  # each sorted slab's first row
        rank = np.empty(len(order), np.int64)
        rank[order] = np.arange(len(order))
        free, offset = [], 0  # rows of the free slots
        for c in caches:
            for i, slots in c.free.items():
                free.append(start[rank[offset + i]] + np.asarray(slots, np.int64))
            offset += len(c.slab_base)
        return BufferTable.from_runs(
            (slab_base + per_slab(lambda c: c.view.red_left_pad))[order],
            per_slab(lambda c: c.view.size)[order], counts,
            per_slab(lambda c: c.view.object_size)[order],
            per_slab(lambda c: c.index, np.int32)[order],
            per_slab(lambda c: c.view.track_offset if c.has_tracks else CTL_NONE)[order], names,
            distinct(np.concatenate(free)) if free else None, keep_free)

    def untrusted(self) -> list[tuple[int, int, str]]:
        self.caches()
        return self.damage.untrusted()

    def metadata_regions(self) -> list[tuple[int, int]]:
        """The cache and slab descriptors, and sim_allocator itself (its pointers lead to the
        metadata and to the first slot, never to a live object)."""
        r = self.root
        return [(r.metadata, r.metadata_end), (r.addr, r.addr + r.struct.size)]

    def heap_regions(self) -> list[tuple[int, int]]:
        return [(self.root.slab_area, self.root.slab_area_end)]

    def request_sizes(self, table: BufferTable):
        """A named cache's object (kmem_cache_create's) serves exactly its object size; a
        kmalloc-N cache's, as SLUB's kmalloc picks the smallest kmalloc cache that fits
        (mdbpy/sim/slub.py: kmalloc(24) is a kmalloc-32 object), the requests above the next
        smaller kmalloc cache's size up to N."""
        import numpy as np

        caches = self.caches()  # a buffer's group is its cache's index among them
        kmalloc = [c.name.startswith("kmalloc-") for c in caches]
        sizes = [c.view.object_size for c in caches]
        classes = sorted(s for s, k in zip(sizes, kmalloc) if k)
        lows = [max((s for s in classes if s < size), default=0) + 1 if k else size
                for size, k in zip(sizes, kmalloc)]
        return np.array(lows + [0], np.uint64)[table.group], table.size

    def group_addr(self, table: BufferTable, i: int) -> int:
        return self.caches()[int(table.group[i])].addr

    def record(self, table: BufferTable, i: int) -> AllocRecord | None:
        ctl = int(table.ctl[i])
        return self.track(ctl) if ctl else None

    def record_columns(self, table: BufferTable, indexes) -> RecordColumns:
        import numpy as np

        return self._track_columns(table.ctl[np.asarray(indexes, dtype=np.int64)])

    def track(self, addr: int) -> AllocRecord | None:
        """The sim_track at addr as a record (None for a track never written)."""
        return self._track_columns([addr]).record(0)

    def _track_columns(self, addrs) -> RecordColumns:
        """The sim_tracks at many addresses (0: none), read in clusters and decoded in one
        step; a row's AllocRecord is made only when asked for."""
        import numpy as np

        from mdbpy.heap.gather import session_gather

        addrs = np.asarray(addrs, np.uint64)
        st = self.binder["sim_track"]
        want = np.flatnonzero(addrs)
        rows = np.zeros((len(addrs), st.size), np.uint8)
        rows[want], ok = session_gather(self.session).rows(addrs[want], st.size)
        t = rows.view(st.dtype()).reshape(len(rows))
        pcs = t["addrs"]
        depth = np.where((pcs == 0).any(axis=1), (pcs == 0).argmax(axis=1), pcs.shape[1])
        pcs = pcs[:, :int(depth.max(initial=0))]  # only the frames some record has
        # a track never written (no stack, no time) is no record
        good = np.zeros(len(addrs), bool)
        good[want] = ok
        good &= (depth > 0) | (t["when"] != 0)
        stacks = np.where(good[:, None], pcs, np.uint64(0))
        stamps = np.where(good, t["when"], 0).astype(np.int64)

        def record(k: int) -> AllocRecord | None:
            if not good[k]:
                return None
            pid = int(t["pid"][k])
            return AllocRecord(tuple(stacks[k, :depth[k]].tolist()), pid, int(stamps[k]),
                               int(addrs[k]), pid, int(t["cpu"][k]))

        return RecordColumns(stacks, stamps, record)

    def tracks(self, c: SimCache, obj: int) -> tuple[AllocRecord | None, AllocRecord | None]:
        """(alloc, free) tracks of an object of cache c."""
        if not c.has_tracks:
            return None, None
        a = obj + c.view.track_offset
        return self.track(a), self.track(a + self.binder["sim_track"].size)

    def records_at(self, c: SimCache, obj: int) -> list:
        alloc, free = self.tracks(c, obj)
        return [(label, r) for label, r in (("Allocated", alloc), ("Freed", free)) if r]

    def locate(self, addr: int) -> tuple[SimCache, SimSlab, int] | None:
        """(cache, slab, slot index) of the slot containing addr, metadata included."""
        import numpy as np

        for c in self.caches():
            size = c.view.size
            hit = np.flatnonzero((c.slab_base <= np.uint64(addr)) & (
                np.uint64(addr) < c.slab_base + c.slab_objects.astype(np.uint64) * size))
            if len(hit):
                s = c.slabs[int(hit[0])]
                return c, s, (addr - s.base) // size
        return None

    def whatis(self, addr: int) -> Buffer | None:
        t = self.buffers()
        i = t.find(addr)
        if i is None:
            return None
        c = self.caches()[int(t.group[i])]
        base = int(t.base[i])
        alloc, free = self.tracks(c, base)
        state = int(t.state[i])
        return Buffer(base, int(t.size[i]), state, c.name, c.addr, int(t.ctl[i]),
                      free if state == FREE and free else alloc)

    def stats(self) -> list[HeapStat]:
        rows = []
        for c in self.caches():
            v = c.view
            total = c.total
            rows.append(HeapStat(c.name, v.object_size, total, total - c.nfree,
                                 len(c.slab_base) * v.slab_size, c.addr))
        return rows

    def verify(self, progress=None) -> list[Problem]:
        self.caches()
        problems = list(self.walk_problems)
        caches = self.caches()
        for k, c in enumerate(caches):
            if c.view.flags & (SIM_RED_ZONE | SIM_POISON):
                problems += check_cache(self, c)
            if progress:
                progress(k + 1, len(caches))
        return problems
