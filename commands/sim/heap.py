"""Reading a simulated SLUB heap: caches, slabs, free lists and objects, as the generic engines
need them (mdbpy.heap.model.Allocator).

Everything is reached from the `sim_allocator` global through the descriptors of
mdbpy/sim/layouts.py. The target is untrusted: every list (caches, slabs, free lists) is bounded
by the count its owner claims and by a hard cap, stops at the first repeated element, and every
slab must lie inside the allocator's slab area. What does not hold together is kept as a
Problem for ::heap_verify rather than raised, so a corrupt heap can still be examined. A free
list cut short (a double free's cycle, a wild free pointer) loses the free objects after the
cut; with red zones on, their inactive red zones still say they are free.

A slab's slots are read in one read; its free pointers are picked out of that block with a
strided numpy view, so only the free-list walk itself is a Python loop (one step per free
object).
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

ALREADY_FREE = "Object already free"
FREECHAIN = "Freechain corrupt"


def decoded(view) -> SimpleNamespace:
    """Every field of a view decoded once, as plain attributes: the walks below read cache
    fields per slab and per object, where decoding on each access would dominate."""
    return SimpleNamespace(addr=view.addr, **{n: getattr(view, n) for n in view.struct.fields})


def unpacker(bound):
    """(struct.Struct, field names) decoding every integer field of a bound struct in one
    unpack, at the offsets the binding computed: tens of thousands of slab descriptors are read
    this way instead of through views."""
    import struct

    codes = {1: "B", 2: "H", 4: "I", 8: "Q"}
    fmt, names, pos = "<", [], 0
    for f in sorted(bound.fields.values(), key=lambda f: f.offset):
        if f.kind not in ("int", "ptr") or f.size not in codes or f.offset < pos:
            continue
        fmt += "x" * (f.offset - pos) + (codes[f.size].lower() if f.signed else codes[f.size])
        names.append(f.name)
        pos = f.offset + f.size
    return struct.Struct(fmt + "x" * (bound.size - pos)), names


@dataclass
class SimSlab:
    view: object  # sim_slab, decoded
    base: int
    objects: int
    free: list[int] = field(default_factory=list)  # slot indexes on the free list, in order


@dataclass
class SimCache:
    view: object  # sim_kmem_cache, decoded
    name: str
    index: int
    slabs: list[SimSlab] = field(default_factory=list)

    @property
    def addr(self) -> int:
        return self.view.addr

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
        self._caches: list[SimCache] | None = None
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
    def caches(self) -> list[SimCache]:
        """Every cache with its slabs and free lists (read once per session state)."""
        if self._caches is None:
            self._caches = self._read_caches()
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

    def _read_caches(self) -> list[SimCache]:
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
            c = SimCache(decoded(v), v.cstr("name"), len(out))
            self._read_slabs(c)
            out.append(c)
            cur = v.next
        return out

    def _read_slabs(self, c: SimCache) -> None:
        mem = self.session.mem
        ks = self.binder["sim_slab"]
        fmt, names = unpacker(ks)
        v = c.view
        lo, hi = self.root.slab_area, self.root.slab_area_end
        limit = min(v.nr_slabs, MAX_SLABS)
        seen = set()
        cur = v.slabs
        while cur and cur not in seen:
            if len(c.slabs) >= limit:
                self._problem(FREECHAIN, c, cur, note=f"more slabs than nr_slabs ({limit})")
                break
            seen.add(cur)
            try:
                s = SimpleNamespace(addr=cur, **dict(zip(names, fmt.unpack(
                    mem.read(cur, fmt.size)))))
            except ReadError as e:
                self._problem(FREECHAIN, c, cur, note=f"slab list broken: {e}")
                break
            nbytes = s.objects * v.size
            if (s.objects > v.objects_per_slab or nbytes > MAX_SLAB_BYTES
                    or not lo <= s.base <= s.base + nbytes <= hi):
                self._problem(FREECHAIN, c, cur, note=f"slab 0x{cur:x} lies outside the slab "
                              f"area or claims {s.objects} objects; skipped")
            else:
                slab = SimSlab(s, s.base, s.objects)
                self._walk_freelist(c, slab)
                c.slabs.append(slab)
            cur = s.next

    def _walk_freelist(self, c: SimCache, slab: SimSlab) -> None:
        """Follow the slab's free list through the free pointers of its slots (read in one
        block). At most one step per slot: a repeated object is a double free (the list cycles
        from there, so it is reported once and the walk stops), a pointer to no slot ends the
        walk. Either way the rest of the list is cut off; `_cut_off` finds those objects."""
        import numpy as np

        v = c.view
        if not slab.objects or not slab.view.freelist:
            return  # a full slab: nothing to read
        size = v.size
        try:
            data = self.session.mem.read(slab.base, slab.objects * size)
        except ReadError as e:
            self._problem(FREECHAIN, c, slab.base, note=f"slab unreadable: {e}")
            return
        fpoff = v.red_left_pad + v.offset
        if fpoff + 8 > size:
            self._problem(FREECHAIN, c, slab.base, note="free pointer lies outside the slot")
            return
        fps = np.ndarray((slab.objects,), dtype="<u8", buffer=data, offset=fpoff,
                         strides=(size,))
        first = slab.base + v.red_left_pad
        on_list = set()
        cur = slab.view.freelist
        while cur:
            k, rem = divmod(cur - first, size)
            if cur < first or rem or k >= slab.objects:
                self._problem(FREECHAIN, c, cur, note=f"free pointer 0x{cur:x} in slab "
                              f"0x{slab.view.addr:x} points to no object")
                break
            if k in on_list:
                lost = self._cut_off(c, slab, data)
                self._problem(ALREADY_FREE, c, cur, size=v.object_size,
                              note="the object is on its slab's free list twice" + (
                                  f"; {lost} free object{'s' if lost > 1 else ''} after it "
                                  "cut off the list (known by their inactive red zones)"
                                  if lost else ""))
                return
            on_list.add(k)
            slab.free.append(k)
            cur = int(fps[k])
        if cur:
            self._cut_off(c, slab, data)

    def _cut_off(self, c: SimCache, slab: SimSlab, data: bytes) -> int:
        """Add to slab.free the slots off the list that slub_debug's red zones mark free
        (more 0xbb than 0xcc bytes: an overflow into a zone does not change its verdict);
        returns how many. Without red zones nothing tells, and they stay allocated."""
        import numpy as np

        v = c.view
        if not v.flags & SIM_RED_ZONE:
            return 0
        slots = np.frombuffer(data, np.uint8).reshape(slab.objects, v.size)
        reg = slot_regions(self, c)
        zones = np.concatenate([slots[:, lo:hi] for lo, hi in (reg["left"], reg["right"])],
                               axis=1)
        free = (zones == SIM_REDZONE_INACTIVE).sum(axis=1) > \
            (zones == SIM_REDZONE_ACTIVE).sum(axis=1)
        free[slab.free] = False
        lost = np.flatnonzero(free).tolist()
        slab.free += lost
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
        import numpy as np

        cols: list[list] = [[], [], [], [], []]  # base, size, state, group, ctl
        for c in self.caches():
            if not c.slabs:
                continue
            v = c.view
            counts = np.array([s.objects for s in c.slabs], np.int64)
            first = np.concatenate(([0], np.cumsum(counts)[:-1]))
            n = int(counts.sum())
            k = np.arange(n, dtype=np.int64) - np.repeat(first, counts)  # slot in its slab
            starts = np.array([s.base + v.red_left_pad for s in c.slabs], np.uint64)
            objs = np.repeat(starts, counts) + k.astype(np.uint64) * np.uint64(v.size)
            st = np.full(n, ALLOC, np.uint8)
            free = [f + int(first[j]) for j, s in enumerate(c.slabs) for f in s.free]
            st[free] = FREE
            cols[0].append(objs)
            cols[1].append(np.full(n, v.object_size, np.uint64))
            cols[2].append(st)
            cols[3].append(np.full(n, c.index, np.int32))
            cols[4].append(objs + np.uint64(v.track_offset) if c.has_tracks
                           else np.zeros(n, np.uint64))
        names = [c.name for c in self.caches()]
        if not cols[0]:
            return BufferTable.from_columns([], [], [], groups=names)
        return BufferTable.from_columns(*(np.concatenate(x) for x in cols), groups=names)

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

    def track(self, addr: int) -> AllocRecord | None:
        """The sim_track at addr as a record (None for a track never written)."""
        try:
            t = self.binder["sim_track"].view(self.session.mem, addr)
        except ReadError:
            return None
        stack = []
        for pc in t.addrs:
            if not pc:
                break
            stack.append(pc)
        if not stack and not t.when:
            return None
        return AllocRecord(tuple(stack), t.pid, t.when, addr, t.pid, t.cpu)

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
        for c in self.caches():
            size = c.view.size
            for s in c.slabs:
                if s.base <= addr < s.base + s.objects * size:
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
            total = sum(s.objects for s in c.slabs)
            free = sum(len(s.free) for s in c.slabs)
            rows.append(HeapStat(c.name, v.object_size, total, total - free,
                                 len(c.slabs) * v.slab_size, c.addr))
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
