"""Reading a simulated SLUB heap: caches, slabs, free lists and objects, as the generic engines
need them (mdbpy.heap.model.Allocator).

Everything is reached from the `sim_allocator` global through the descriptors of
mdbpy/sim/layouts.py. The target is untrusted: every list (caches, slabs, free lists) is bounded
by the count its owner claims and by a hard cap, stops at the first repeated element, and every
slab must lie inside the allocator's slab area. What does not hold together is kept as a
Problem for ::heap_verify rather than raised, so a corrupt heap can still be examined. A free
list cut short (a double free's cycle, a wild free pointer) loses the free objects after the
cut; with red zones on, their inactive red zones still say they are free.

Sizes met in benchmarks are a million objects in tens of thousands of slabs, so nothing here
is a Python loop per slab or per object: slab descriptors are decoded with numpy from one read
of the metadata, in runs whose links are all checked; slabs are kept column-wise; a slab with a
free list is read in one piece and its free pointers picked out with a strided view (the walk
is one step per free object); the buffer table is expanded from the slabs; allocation tracks
are gathered in clusters (mdbpy.heap.bulk).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

from mdbpy.errors import MdbError, ReadError
from mdbpy.heap.model import (ALLOC, FREE, AllocRecord, Allocator, Buffer, BufferTable, HeapStat,
                              Problem)
from mdbpy.layout.bind import X86_64, Binder
from mdbpy.sim.layouts import (SIM_ALLOCATOR_SYMBOL, SIM_LAYOUTS, SIM_MAGIC, SIM_POISON,
                               SIM_RED_ZONE, SIM_REDZONE_ACTIVE, SIM_REDZONE_INACTIVE,
                               SIM_STORE_USER)

from .verify import check_cache, slot_regions

MAX_CACHES = 4096
MAX_SLABS = 1 << 24
MAX_SLAB_BYTES = 1 << 30  # one slab larger than this is corrupt
MAX_METADATA = 256 << 20  # a larger metadata region is not read in one piece

ALREADY_FREE = "Object already free"
FREECHAIN = "Freechain corrupt"


def decoded(view) -> SimpleNamespace:
    """Every field of a view decoded once, as plain attributes: the walks below read cache
    fields per slab and per object, where decoding on each access would dominate."""
    return SimpleNamespace(addr=view.addr, **{n: getattr(view, n) for n in view.struct.fields})


@dataclass
class SimSlab:
    addr: int  # its sim_slab descriptor
    base: int
    objects: int
    free: list[int] = field(default_factory=list)  # slot indexes on the free list, in order


@dataclass
class SimCache:
    """A cache and its slabs, kept column-wise (numpy arrays in list order, one entry per
    slab) so that a heap of tens of thousands of slabs becomes a buffer table without a
    Python object per slab; `slabs` makes those objects for the commands that want them."""

    view: object  # sim_kmem_cache, decoded
    name: str
    index: int
    slab_addr: object = None  # np.ndarray uint64: the sim_slab descriptors
    slab_base: object = None  # np.ndarray uint64: their first slots
    slab_objects: object = None  # np.ndarray int64
    free: dict = field(default_factory=dict)  # slab position -> free slot indexes, in order
    _slabs: list | None = None

    @property
    def addr(self) -> int:
        return self.view.addr

    @property
    def slabs(self) -> list[SimSlab]:
        if self._slabs is None:
            cols = zip(self.slab_addr.tolist(), self.slab_base.tolist(),
                       self.slab_objects.tolist())
            self._slabs = [SimSlab(a, b, n, self.free.get(i, []))
                           for i, (a, b, n) in enumerate(cols)]
        return self._slabs

    @property
    def total(self) -> int:
        return int(self.slab_objects.sum())

    @property
    def nfree(self) -> int:
        return sum(len(f) for f in self.free.values())

    def object_at(self, slab: SimSlab, k: int) -> int:
        """The object (what the program got from malloc) of slot k."""
        v = self.view
        return slab.base + k * v.size + v.red_left_pad

    @property
    def has_tracks(self) -> bool:
        return bool(self.view.flags & SIM_STORE_USER)


class SimAllocator(Allocator):
    """The simulator's SLUB-like allocator, found through its `sim_allocator` global."""

    name = "sim"
    record_name = "track"

    def __init__(self, session, root):
        super().__init__(session)
        self.root = root  # the sim_allocator view
        self.binder = session.cache.get(("sim", "binder")) or Binder(SIM_LAYOUTS, X86_64)
        session.cache[("sim", "binder")] = self.binder
        self.version = (root.version,)
        self._list: list[SimCache] | None = None
        self._caches: list[SimCache] | None = None
        self._meta: tuple[int, bytes] | None = None
        self._table: BufferTable | None = None
        self.walk_problems: list[Problem] = []

    @classmethod
    def detect(cls, session) -> SimAllocator | None:
        sym = session.symbols.lookup(SIM_ALLOCATOR_SYMBOL)
        if sym is None:
            return None
        binder = Binder(SIM_LAYOUTS, X86_64)
        session.cache[("sim", "binder")] = binder
        try:
            root = binder["sim_allocator"].view(session.mem, sym.addr)
        except ReadError as e:
            session.warn(f"sim: {SIM_ALLOCATOR_SYMBOL} is unreadable: {e}")
            return None
        if root.magic != SIM_MAGIC:
            session.warn(f"sim: {SIM_ALLOCATOR_SYMBOL} at 0x{sym.addr:x} has magic "
                         f"0x{root.magic:x}, not 0x{SIM_MAGIC:x}")
            return None
        return cls(session, root)

    # -- walking the structures ---------------------------------------------------------------
    def cache_list(self) -> list[SimCache]:
        """Every cache's descriptor, its slabs not read yet: enough to name the caches."""
        if self._list is None:
            self._list = self._read_cache_list()
        return self._list

    def caches(self) -> list[SimCache]:
        """Every cache with its slabs and free lists (read once per session state)."""
        if self._caches is None:
            caches = self.cache_list()
            for c in caches:
                self._read_slabs(c)
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

    def _read_cache_list(self) -> list[SimCache]:
        mem = self.session.mem
        kc = self.binder["sim_kmem_cache"]
        limit = min(self.root.ncaches, MAX_CACHES)
        out: list[SimCache] = []
        seen = set()
        cur = self.root.caches
        while cur and cur not in seen:
            if len(out) >= limit:
                self.session.warn(f"sim: more caches than the {limit} sim_allocator claims; "
                                  "the rest are ignored")
                break
            seen.add(cur)
            try:
                v = kc.view(mem, cur)
            except ReadError as e:
                raise MdbError(f"sim: cache list broken at 0x{cur:x}: {e}") from None
            out.append(SimCache(decoded(v), v.cstr("name"), len(out)))
            cur = v.next
        return out

    def _metadata(self) -> tuple[int, bytes]:
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

    def _read_slabs(self, c: SimCache) -> None:
        """The cache's slab list, bounded by nr_slabs and cycle-safe, into c's columns; a
        descriptor outside the slab area or claiming too many objects is reported and skipped.
        Only the slabs with a free list are visited one by one."""
        import numpy as np

        ks = self.binder["sim_slab"]
        v = c.view
        lo, hi = self.root.slab_area, self.root.slab_area_end
        limit = min(v.nr_slabs, MAX_SLABS)
        seen: set[int] = set()
        runs = []
        cur = v.slabs
        while cur:
            if len(seen) >= limit:
                self._problem(FREECHAIN, c, cur, note=f"more slabs than nr_slabs ({limit})")
                break
            try:
                run = self._slab_run(cur, limit - len(seen))
            except ReadError as e:
                self._problem(FREECHAIN, c, cur, note=f"slab list broken: {e}")
                break
            addrs = range(cur, cur + len(run) * ks.size, ks.size)
            if not seen.isdisjoint(addrs):  # the list runs into itself: stop at the repeat
                run = run[:next(i for i, a in enumerate(addrs) if a in seen)]
                addrs = addrs[:len(run)]
            seen.update(addrs)
            addr = np.arange(cur, cur + len(run) * ks.size, ks.size, dtype=np.uint64)
            nbytes = run["objects"].astype(object) * v.size
            bad = ((run["objects"] > v.objects_per_slab) | (nbytes > MAX_SLAB_BYTES)
                   | (run["base"] < lo) | (run["base"] + nbytes > hi)).astype(bool)
            for i in np.flatnonzero(bad).tolist():
                self._problem(FREECHAIN, c, int(addr[i]), note=f"slab 0x{int(addr[i]):x} lies "
                              f"outside the slab area or claims {int(run['objects'][i])} "
                              "objects; skipped")
            runs.append((addr[~bad], run[~bad]))
            cur = int(run["next"][-1]) if len(run) else 0
            if cur in seen:
                break
        c.slab_addr = np.concatenate([a for a, _ in runs] or [np.zeros(0, np.uint64)])
        c.slab_base = np.concatenate([r["base"] for _, r in runs] or [np.zeros(0, np.uint64)])
        c.slab_objects = np.concatenate([r["objects"] for _, r in runs]
                                        or [np.zeros(0, np.uint32)]).astype(np.int64)
        freelist = np.concatenate([r["freelist"] for _, r in runs] or [np.zeros(0, np.uint64)])
        for i in np.flatnonzero(freelist).tolist():
            free = self._walk_freelist(c, int(c.slab_addr[i]), int(c.slab_base[i]),
                                       int(c.slab_objects[i]), int(freelist[i]))
            if free:
                c.free[i] = free

    def _slab_run(self, addr: int, most: int):
        """The sim_slab descriptors from addr on that follow each other in memory and in the
        list (each one's `next` is the one after it), at least one and at most `most`, as a
        numpy record array. The simulator carves slab descriptors in runs, so a list of tens
        of thousands of slabs is decoded in a few steps, while every link is still checked."""
        import numpy as np

        ks = self.binder["sim_slab"]
        meta_lo, meta = self._metadata()
        off = addr - meta_lo
        if off < 0 or off % 8 or off + ks.size > len(meta):
            return np.frombuffer(self.session.mem.read(addr, ks.size), ks.dtype())
        n = min(most, (len(meta) - off) // ks.size)
        run = np.ndarray((n,), ks.dtype(), buffer=meta, offset=off)
        step = addr + ks.size * np.arange(1, n + 1, dtype=np.uint64)
        breaks = np.flatnonzero(run["next"] != step)
        return run[:int(breaks[0]) + 1 if len(breaks) else n]

    def _walk_freelist(self, c: SimCache, addr: int, base: int, objects: int,
                       cur: int) -> list[int]:
        """The free slot indexes of the slab at `addr`, following its free list from `cur`
        through the free pointers of its slots (read in one block). At most one step per slot:
        a repeated object is a double free (the list cycles from there, so it is reported once
        and the walk stops), a pointer to no slot ends the walk. Either way the rest of the
        list is cut off; `_cut_off` finds those objects."""
        import numpy as np

        v = c.view
        size = v.size
        if not objects:
            return []
        try:
            data = self.session.mem.read(base, objects * size)
        except ReadError as e:
            self._problem(FREECHAIN, c, base, note=f"slab unreadable: {e}")
            return []
        fpoff = v.red_left_pad + v.offset
        if fpoff + 8 > size:
            self._problem(FREECHAIN, c, base, note="free pointer lies outside the slot")
            return []
        fps = np.ndarray((objects,), dtype="<u8", buffer=data, offset=fpoff, strides=(size,))
        first = base + v.red_left_pad
        free: list[int] = []
        on_list = set()
        while cur:
            k, rem = divmod(cur - first, size)
            if cur < first or rem or k >= objects:
                self._problem(FREECHAIN, c, cur, note=f"free pointer 0x{cur:x} in slab "
                              f"0x{addr:x} points to no object")
                break
            if k in on_list:
                lost = self._cut_off(c, data, free)
                self._problem(ALREADY_FREE, c, cur, size=v.object_size,
                              note="the object is on its slab's free list twice" + (
                                  f"; {lost} free object{'s' if lost > 1 else ''} after it "
                                  "cut off the list (known by their inactive red zones)"
                                  if lost else ""))
                return free
            on_list.add(k)
            free.append(k)
            cur = int(fps[k])
        if cur:
            self._cut_off(c, data, free)
        return free

    def _cut_off(self, c: SimCache, data: bytes, free: list[int]) -> int:
        """Add to `free` the slots of a slab (its bytes) off the list that slub_debug's red
        zones mark free (more 0xbb than 0xcc bytes: an overflow into a zone does not change
        its verdict); returns how many. Without red zones nothing tells: they stay allocated."""
        import numpy as np

        v = c.view
        if not v.flags & SIM_RED_ZONE:
            return 0
        slots = np.frombuffer(data, np.uint8).reshape(-1, v.size)
        reg = slot_regions(self, c)
        zones = np.concatenate([slots[:, lo:hi] for lo, hi in (reg["left"], reg["right"])],
                               axis=1)
        marked = (zones == SIM_REDZONE_INACTIVE).sum(axis=1) > \
            (zones == SIM_REDZONE_ACTIVE).sum(axis=1)
        marked[free] = False
        lost = np.flatnonzero(marked).tolist()
        free += lost
        return len(lost)

    def _problem(self, kind: str, c: SimCache, addr: int, size: int = 0, note: str = ""):
        p = Problem(kind, c.name, addr, size, note=note)
        if kind == ALREADY_FREE:
            p.records = self.records_at(c, addr)
        self.walk_problems.append(p)

    # -- the Allocator interface ----------------------------------------------------------------
    def buffers(self) -> BufferTable:
        if self._table is None:
            self._table = self._build_table()
        return self._table

    def _build_table(self) -> BufferTable:
        """The objects of every slab, built from the slab columns: the slabs are sorted by
        address (slabs never overlap, so their slots come out sorted too) and expanded into
        slots with numpy, the free slots marked from the free lists."""
        import numpy as np

        caches = [c for c in self.caches() if len(c.slab_base)]
        names = [c.name for c in self.caches()]
        if not caches:
            return BufferTable.from_columns([], [], [], groups=names)

        def per_slab(f):
            return np.concatenate([np.full(len(c.slab_base), f(c), np.uint64) for c in caches])

        slab_base = np.concatenate([c.slab_base for c in caches])
        counts = np.concatenate([c.slab_objects for c in caches])
        first_obj = slab_base + per_slab(lambda c: c.view.red_left_pad)
        stride = per_slab(lambda c: c.view.size)
        osize = per_slab(lambda c: c.view.object_size)
        track = per_slab(lambda c: c.view.track_offset)
        tracked = per_slab(lambda c: c.has_tracks).astype(bool)
        group = per_slab(lambda c: c.index).astype(np.int32)
        order = np.argsort(slab_base, kind="stable")
        counts = counts[order]
        start = np.concatenate(([0], np.cumsum(counts)[:-1]))  # each sorted slab's first row
        n = int(counts.sum())
        k = (np.arange(n, dtype=np.int64) - np.repeat(start, counts)).astype(np.uint64)
        objs = np.repeat(first_obj[order], counts) + k * np.repeat(stride[order], counts)
        ctl = np.where(np.repeat(tracked[order], counts),
                       objs + np.repeat(track[order], counts), np.uint64(0))
        state = np.full(n, ALLOC, np.uint8)
        rank = np.empty(len(order), np.int64)
        rank[order] = np.arange(len(order))
        pos, offset = [], 0  # rows of the free slots
        for c in caches:
            for i, slots in c.free.items():
                pos.append(start[rank[offset + i]] + np.asarray(slots, np.int64))
            offset += len(c.slab_base)
        if pos:
            state[np.concatenate(pos)] = FREE
        return BufferTable.from_columns(objs, np.repeat(osize[order], counts), state,
                                        np.repeat(group[order], counts), ctl, groups=names,
                                        sort=False)

    def metadata_regions(self) -> list[tuple[int, int]]:
        """The cache and slab descriptors, and sim_allocator itself (its pointers lead to the
        metadata and to the first slot, never to a live object)."""
        r = self.root
        return [(r.metadata, r.metadata_end), (r.addr, r.addr + r.struct.size)]

    def heap_regions(self) -> list[tuple[int, int]]:
        return [(self.root.slab_area, self.root.slab_area_end)]

    def group_addr(self, table: BufferTable, i: int) -> int:
        return self.caches()[int(table.group[i])].addr

    def record(self, table: BufferTable, i: int) -> AllocRecord | None:
        ctl = int(table.ctl[i])
        return self.track(ctl) if ctl else None

    def records(self, table: BufferTable, indexes) -> list[AllocRecord | None]:
        import numpy as np

        ctl = table.ctl[np.asarray(indexes, dtype=np.int64)]
        recs = self.tracks_at(ctl[ctl != 0])
        it = iter(recs)
        return [next(it) if c else None for c in ctl.tolist()]

    def track(self, addr: int) -> AllocRecord | None:
        """The sim_track at addr as a record (None for a track never written)."""
        return self.tracks_at([addr])[0]

    def tracks_at(self, addrs) -> list[AllocRecord | None]:
        """The sim_tracks at many addresses, read in clusters and decoded in one step."""
        import numpy as np

        from mdbpy.heap.bulk import gather

        st = self.binder["sim_track"]
        rows, ok = gather(self.session.mem, addrs, st.size)
        t = rows.view(st.dtype()).reshape(len(rows))
        pcs = t["addrs"]
        depth = np.where((pcs == 0).any(axis=1), (pcs == 0).argmax(axis=1), pcs.shape[1])
        pcs = pcs[:, :int(depth.max(initial=0))]  # only the frames some record has
        ok &= (depth > 0) | (t["when"] != 0)
        cols = zip(ok.tolist(), pcs.tolist(), depth.tolist(), t["pid"].tolist(),
                   t["cpu"].tolist(), t["when"].tolist(), np.asarray(addrs).tolist())
        return [AllocRecord(tuple(stack[:n]), pid, when, addr, pid, cpu) if good else None
                for good, stack, n, pid, cpu, when, addr in cols]

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
