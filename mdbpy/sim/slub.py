"""The allocator model: SLUB with slub_debug (red zones, poisoning, user tracking) writing every
structure through the layout descriptors of mdbpy/sim/layouts.py.

Slots follow the layout docstring there. Slabs are carved from the slab area in creation order,
naturally aligned; a cache allocates from the first of its slabs (in list order) that has a free
object, and a free pushes the object on its slab's free list (LIFO), as SLUB does without
CONFIG_SLAB_FREELIST_RANDOM. Descriptors (caches, slabs, the allocator root) are written once,
when the scenario ends, by `finish`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mdbpy.layout.bind import Binder, BoundStruct, X86_64
from mdbpy.sim import layouts as L
from mdbpy.sim.machine import PAGE, Region

KMALLOC_SIZES = (8, 16, 32, 64, 96, 128, 192, 256, 512, 1024, 2048, 4096, 8192)
DEBUG_FLAGS = L.SIM_RED_ZONE | L.SIM_POISON | L.SIM_STORE_USER
MIN_OBJECTS = 16  # a slab grows (in powers of two) until it holds this many ...
MAX_SLAB = 8 * PAGE  # ... or reaches order 3
WORD = 8


def bind() -> Binder:
    return Binder(L.SIM_LAYOUTS, X86_64)


def pack(s: BoundStruct, **values) -> bytes:
    """The bytes of struct `s` with the given field values (others zero): integers and
    pointers as ints, char arrays as bytes, arrays of scalars as sequences of ints."""
    out = bytearray(s.size)
    for name, v in values.items():
        f = s.field(name)
        if f.kind == "array" and f.elem_kind == "char":
            raw = bytes(v)[:f.size - 1]
        elif f.kind == "array":
            vals = list(v)[:f.count]
            raw = b"".join(x.to_bytes(f.elem_size, "little") for x in vals)
        else:
            raw = v.to_bytes(f.size, "little", signed=f.signed)
        out[f.offset:f.offset + len(raw)] = raw
    return bytes(out)


def _align(n: int, a: int = WORD) -> int:
    return -(-n // a) * a


@dataclass(frozen=True)
class Geometry:
    """Where everything sits in a slot, as SLUB's calculate_sizes() lays it out with
    RED_ZONE | POISON | STORE_USER: object offsets are from the object, `size` is the slot."""

    object_size: int
    inuse: int  # the object rounded up to a word, plus a red zone word if it was one already
    offset: int  # the free pointer
    track_offset: int
    track_size: int
    red_left_pad: int
    size: int
    slab_size: int

    @classmethod
    def of(cls, object_size: int, track_size: int) -> Geometry:
        inuse = _align(object_size)
        if inuse == object_size:  # room for a right red zone
            inuse += WORD
        offset = inuse
        track_offset = offset + WORD
        end = track_offset + 2 * track_size + WORD  # RED_ZONE: a word of padding after tracks
        size = _align(WORD + end)
        slab = PAGE
        while slab // size < MIN_OBJECTS and slab < MAX_SLAB:
            slab *= 2
        return cls(object_size, inuse, offset, track_offset, track_size, WORD, size, slab)

    @property
    def objects(self) -> int:
        return self.slab_size // self.size

    @property
    def padding_start(self) -> int:
        """Slot offset of the padding (after both tracks)."""
        return self.red_left_pad + self.track_offset + 2 * self.track_size

    def regions(self) -> dict[str, tuple[int, int]]:
        """Slot-relative [start, end) of each checked area."""
        o = self.red_left_pad
        return {"left redzone": (0, o), "object": (o, o + self.object_size),
                "right redzone": (o + self.object_size, o + self.inuse),
                "padding": (self.padding_start, self.size)}

    def slot_image(self, allocated: bool) -> bytearray:
        """A slot as slub_debug initializes it: red zones active or inactive, the object
        poisoned (a new allocation keeps the poison until its owner writes), tracks and free
        pointer zero, padding 0x5a."""
        img = bytearray(self.size)
        red = L.SIM_REDZONE_ACTIVE if allocated else L.SIM_REDZONE_INACTIVE
        for name, (a, b) in self.regions().items():
            fill = L.SIM_PADDING_BYTE if name == "padding" else red
            img[a:b] = bytes([fill]) * (b - a)
        o = self.red_left_pad
        img[o:o + self.object_size] = poison(self.object_size)
        return img


def poison(n: int) -> bytes:
    return bytes([L.SIM_POISON_FREE]) * (n - 1) + bytes([L.SIM_POISON_END])


@dataclass
class Slab:
    addr: int  # its sim_slab descriptor
    base: int  # its first slot
    cache: SimCache
    free: list[int] = field(default_factory=list)  # free objects, the list head last

    @property
    def inuse(self) -> int:
        """Allocated objects: a double-freed object is on `free` twice but counts once."""
        return self.cache.geom.objects - len(set(self.free))


@dataclass
class SimCache:
    name: str
    addr: int  # its sim_kmem_cache descriptor
    geom: Geometry
    slabs: list[Slab] = field(default_factory=list)


class Slub:
    """The caches and their slabs; slot bytes live in `slab_area`, descriptors in `metadata`."""

    def __init__(self, slab_area: Region, metadata: Region, binder: Binder | None = None):
        self.b = binder or bind()
        self.slab_area = slab_area
        self.metadata = metadata
        self.caches: list[SimCache] = []
        self.by_name: dict[str, SimCache] = {}
        self.slab_bases: list[int] = []  # sorted, as slabs are carved in address order
        self.slab_list: list[Slab] = []
        self.track_size = self.b["sim_track"].size
        for size in KMALLOC_SIZES:
            self.create_cache(f"kmalloc-{size}", size)

    def _meta(self, n: int) -> int:
        a = self.metadata.end
        self.metadata.data += bytes(_align(n, 16))
        return a

    def create_cache(self, name: str, object_size: int) -> SimCache:
        if name in self.by_name:
            raise ValueError(f"cache {name} already exists")
        c = SimCache(name, self._meta(self.b["sim_kmem_cache"].size),
                     Geometry.of(object_size, self.track_size))
        self.caches.append(c)
        self.by_name[name] = c
        return c

    def kmalloc_cache(self, size: int) -> SimCache:
        for s in KMALLOC_SIZES:
            if size <= s:
                return self.by_name[f"kmalloc-{s}"]
        raise ValueError(f"kmalloc size {size} is larger than {KMALLOC_SIZES[-1]}")

    # -- slabs --------------------------------------------------------------------------
    def new_slabs(self, cache: SimCache, count: int, chain: bool = True) -> list[Slab]:
        """Carve `count` contiguous slabs of free slots (naturally aligned) for `cache`. With
        `chain`, each slab's free pointers link its objects in address order (a fresh slab's
        list); without, the caller fills the slabs and sets their free lists (the generator)."""
        g = cache.geom
        area = self.slab_area
        base = _align(area.end, g.slab_size)
        img = g.slot_image(False) * g.objects
        img += bytes([L.SIM_PADDING_BYTE]) * (g.slab_size - len(img))  # slab_pad_check
        area.data += bytes(base - area.end)
        area.data += img * count
        new = []
        descs = self._meta(self.b["sim_slab"].size * count)
        for k in range(count):
            s = Slab(descs + k * self.b["sim_slab"].size, base + k * g.slab_size, cache)
            if chain:
                objs = [s.base + i * g.size + g.red_left_pad for i in range(g.objects)]
                for obj, nxt in zip(objs, objs[1:] + [0]):
                    self.put_word(obj + g.offset, nxt)
                s.free = objs[::-1]
            new.append(s)
        cache.slabs += new
        self.slab_bases += [s.base for s in new]
        self.slab_list += new
        return new

    def put_word(self, addr: int, value: int) -> None:
        self.slab_area.view(addr, 8)[:] = value.to_bytes(8, "little")

    def locate(self, addr: int) -> tuple[Slab, int] | None:
        """(slab, slot index) of the slot containing addr, None outside every slot."""
        import bisect

        i = bisect.bisect_right(self.slab_bases, addr) - 1
        if i < 0:
            return None
        s = self.slab_list[i]
        g = s.cache.geom
        k = (addr - s.base) // g.size
        return (s, k) if k < g.objects else None

    # -- alloc and free -----------------------------------------------------------------
    def alloc(self, cache: SimCache, track: bytes) -> int:
        slab = next((s for s in cache.slabs if s.free), None)
        if slab is None:
            slab = self.new_slabs(cache, 1)[0]
        g = cache.geom
        obj = slab.free.pop()
        self._redzones(obj, g, L.SIM_REDZONE_ACTIVE)
        self.put_word(obj + g.offset, 0)
        self.slab_area.view(obj + g.track_offset, len(track))[:] = track
        return obj

    def free(self, obj: int, track: bytes) -> str:
        """kfree: 'freed', or 'double' when the object is already free. A double free is not
        refused (as when slub_debug's consistency checks are off): the object is poisoned and
        pushed again, so the damage is in the image. Freed twice in a row, its free pointer
        points at itself and the rest of the slab's list is cut off."""
        slab, _ = self.locate(obj)
        g = slab.cache.geom
        t = obj + g.track_offset + g.track_size
        self.slab_area.view(t, len(track))[:] = track
        again = obj in slab.free
        self.slab_area.view(obj, g.object_size)[:] = poison(g.object_size)
        self._redzones(obj, g, L.SIM_REDZONE_INACTIVE)
        self.put_word(obj + g.offset, slab.free[-1] if slab.free else 0)
        slab.free.append(obj)
        return "double" if again else "freed"

    def _redzones(self, obj: int, g: Geometry, byte: int) -> None:
        left = g.red_left_pad
        self.slab_area.view(obj - left, left)[:] = bytes([byte]) * left
        n = g.inuse - g.object_size
        self.slab_area.view(obj + g.object_size, n)[:] = bytes([byte]) * n

    # -- descriptors --------------------------------------------------------------------
    def finish(self, root: Region, root_addr: int, clock: int, cpus: int) -> None:
        """Write every descriptor: caches (a list through `next`), each cache's slabs (a
        list through `next`), and the sim_allocator root at root_addr in `root`."""
        kc, sl, al = self.b["sim_kmem_cache"], self.b["sim_slab"], self.b["sim_allocator"]
        meta = self.metadata
        for i, c in enumerate(self.caches):
            g = c.geom
            nxt = self.caches[i + 1].addr if i + 1 < len(self.caches) else 0
            meta.view(c.addr, kc.size)[:] = pack(
                kc, name=c.name.encode(), flags=DEBUG_FLAGS, object_size=g.object_size,
                size=g.size, offset=g.offset, inuse=g.inuse, red_left_pad=g.red_left_pad,
                track_offset=g.track_offset, objects_per_slab=g.objects,
                slab_size=g.slab_size, nr_slabs=len(c.slabs),
                total_objects=len(c.slabs) * g.objects, next=nxt,
                slabs=c.slabs[0].addr if c.slabs else 0)
            for j, s in enumerate(c.slabs):
                nxt = c.slabs[j + 1].addr if j + 1 < len(c.slabs) else 0
                meta.view(s.addr, sl.size)[:] = pack(
                    sl, next=nxt, cache=c.addr, base=s.base,
                    freelist=s.free[-1] if s.free else 0, inuse=s.inuse, objects=g.objects)
        root.view(root_addr, al.size)[:] = pack(
            al, magic=L.SIM_MAGIC, version=1, ncaches=len(self.caches),
            caches=self.caches[0].addr, slab_area=self.slab_area.start,
            slab_area_end=self.slab_area.end, metadata=meta.start, metadata_end=meta.end,
            clock=clock, cpus=cpus)
