"""Random damage to a simulated heap, after its descriptors are written and before it becomes a
core: what a wild write, a stray DMA or a bit flip does to a real one.

Each damage picks its victim and its new bytes from a seeded generator (the same seed damages
the same bytes), writes them into the simulated process, and is recorded for the ground truth:
its kind, where it wrote, the old and new bytes, a description, and the objects whose state or
contents a reader can no longer be sure of (`objects`: the truth's leaks and corruption outside
them are what a reader that survives the damage must still report exactly).

Kinds (KINDS), each one smash of up to eight bytes:
  cache_word      a word of a cache descriptor (sim_kmem_cache)
  cache_next      a cache's `next`: itself, an earlier cache, garbage, or 0
  nr_slabs        a cache's slab count cut short, or if it already is, too large (the
                  list itself is intact)
  slab_word       a word of a slab descriptor (sim_slab)
  slab_next       a slab's `next`: itself, an earlier slab of its cache, garbage, or 0
  freeptr         a free object's free pointer: outside the slab, into the middle of an
                  object, into another slab, or 0
  freelist_cycle  a free object's free pointer aimed at an object before it on the same list
                  (`new` is where the cycle closes: the object a reader sees twice)
  track           a word of an alloc or free track record
  object          a word of an object (the owner's data, or a free object's poison)
  redzone         bytes of a left or right red zone
  padding         bytes of a slot's padding
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field

from mdbpy.sim import layouts as L
from mdbpy.sim.slub import SimCache, Slab

KINDS = ("cache_word", "cache_next", "nr_slabs", "slab_word", "slab_next", "freeptr",
         "freelist_cycle", "track", "object", "redzone", "padding")
WILD = 0xDEAD_0000  # unmapped in every simulated process
MAX_DAMAGE = 1000


@dataclass
class Damage:
    kind: str
    address: int  # the first byte written
    size: int  # bytes written (1 to 8)
    old: int  # the bytes before, little-endian
    new: int  # the bytes written, little-endian
    what: str  # e.g. 'cache kmalloc-64 next', 'slab 0x... freelist'
    objects: list[int] = field(default_factory=list)  # objects a reader may no longer trust

    def as_dict(self) -> dict:
        return asdict(self)


def apply(sim, seed: int, count: int, kinds=KINDS) -> list[Damage]:
    """Apply `count` damages of the given kinds (a kind with no possible victim, e.g. a
    free-list cycle in a heap without free objects, is passed over for another) to a finished
    Simulation; returns them in the order applied."""
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise ValueError(f"unknown damage kind '{bad[0]}' (one of {', '.join(KINDS)})")
    if not 0 < count <= MAX_DAMAGE:
        raise ValueError(f"damage count {count} is out of range [1, {MAX_DAMAGE}]")
    d = _Damager(sim, random.Random(seed))
    out = []
    for _ in range(count):
        for kind in d.rng.sample(list(kinds), len(kinds)):
            hit = getattr(d, kind)()
            if hit is not None:
                out.append(hit)
                break
        else:
            raise ValueError("nothing in this heap can take damage of kind " + "/".join(kinds))
    return out


def _field_at(struct, off: int) -> str:
    """The name of the field of a bound struct that holds byte `off`."""
    for name, f in struct.fields.items():
        if f.offset <= off < f.offset + f.size:
            return name
    return "padding"


class _Damager:
    """One damage per method: picks a victim, writes, returns the Damage (None when the heap
    has nothing of that kind)."""

    def __init__(self, sim, rng: random.Random):
        self.sim, self.rng = sim, rng
        self.slub = sim.slub
        self.b = sim.slub.b

    # -- victims ------------------------------------------------------------------------
    def _caches(self, with_slabs: bool = True) -> list[SimCache]:
        return [c for c in self.slub.caches if c.slabs or not with_slabs]

    def _slab(self, free: bool = False) -> Slab | None:
        slabs = [s for c in self._caches() for s in c.slabs
                 if not free or (s.free and len(set(s.free)) == len(s.free))]
        return self.rng.choice(slabs) if slabs else None

    def _slot(self) -> tuple[Slab, int] | None:
        s = self._slab()
        if s is None:
            return None
        g = s.cache.geom
        return s, s.base + self.rng.randrange(g.objects) * g.size

    @staticmethod
    def objects_of(*slabs: Slab) -> list[int]:
        return [s.base + k * s.cache.geom.size + s.cache.geom.red_left_pad
                for s in slabs for k in range(s.cache.geom.objects)]

    def _later_caches(self, c: SimCache) -> list[int]:
        later = self.slub.caches[self.slub.caches.index(c) + 1:]
        return self.objects_of(*(s for x in later for s in x.slabs))

    # -- values -------------------------------------------------------------------------
    def _garbage(self, old: int) -> int:
        """A word as garbage usually is: zero, all ones, a flipped bit, a random number, an
        unmapped pointer, or a pointer elsewhere into the heap or its metadata."""
        rng, sim = self.rng, self.sim
        for _ in range(8):
            new = rng.choice((
                lambda: 0, lambda: (1 << 64) - 1, lambda: old ^ (1 << rng.randrange(64)),
                lambda: rng.getrandbits(64), lambda: WILD + 8 * rng.randrange(4096),
                lambda: self._inside(sim.slab_area), lambda: self._inside(sim.meta)))()
            if new != old:
                return new
        return old ^ 1

    def _inside(self, region) -> int:
        """An aligned address in a region (its start when it is empty)."""
        return (region.start + self.rng.randrange(max(len(region.data), 8))) & ~7

    def _write(self, region, kind: str, addr: int, new: bytes, what: str,
               objects: list[int]) -> Damage:
        view = region.view(addr, len(new))
        old = bytes(view)
        view[:] = new
        return Damage(kind, addr, len(new), int.from_bytes(old, "little"),
                      int.from_bytes(new, "little"), what, objects)

    def _word(self, region, kind, addr, new: int, what, objects) -> Damage:
        return self._write(region, kind, addr, new.to_bytes(8, "little"), what, objects)

    def _old(self, region, addr: int) -> int:
        return int.from_bytes(region.view(addr, 8), "little")

    # -- descriptor damage --------------------------------------------------------------
    def cache_word(self) -> Damage | None:
        kc = self.b["sim_kmem_cache"]
        c = self.rng.choice(self._caches(False))
        off = 8 * self.rng.randrange(kc.size // 8)
        name = _field_at(kc, off)
        risk = self.objects_of(*c.slabs)
        if name == "next":
            risk += self._later_caches(c)
        a = c.addr + off
        return self._word(self.sim.meta, "cache_word", a, self._garbage(self._old(
            self.sim.meta, a)), f"cache {c.name} word +0x{off:x} ({name})", risk)

    def _relink(self, kind: str, nodes: list, i: int, struct: str, what: str,
                risk: list[int]) -> Damage | None:
        """Point the `next` of nodes[i] (caches or slabs, in list order) at itself, at an
        earlier node (a cycle), at garbage or at 0 (the list ends early)."""
        a = nodes[i].addr + self.b[struct].offset("next")
        old = self._old(self.sim.meta, a)
        choices = [nodes[i].addr, nodes[self.rng.randrange(i + 1)].addr, self._garbage(old), 0]
        new = next((v for v in self.rng.sample(choices, 4) if v != old), None)
        return None if new is None else self._word(self.sim.meta, kind, a, new, what, risk)

    def cache_next(self) -> Damage | None:
        c = self.rng.choice(self.slub.caches)
        return self._relink("cache_next", self.slub.caches, self.slub.caches.index(c),
                            "sim_kmem_cache", f"cache {c.name} next", self._later_caches(c))

    def nr_slabs(self) -> Damage | None:
        caches = self._caches()
        if not caches:
            return None
        c = self.rng.choice(caches)
        a = c.addr + self.b["sim_kmem_cache"].offset("nr_slabs")
        old = self._old(self.sim.meta, a)
        cut = [n for n in range(len(c.slabs)) if n != old]
        new = self.rng.choice(cut) if cut else old + 1 + self.rng.randrange(1 << 20)
        return self._word(self.sim.meta, "nr_slabs", a, new, f"cache {c.name} nr_slabs", [])

    def slab_word(self) -> Damage | None:
        s = self._slab()
        if s is None:
            return None
        ks = self.b["sim_slab"]
        off = 8 * self.rng.randrange(ks.size // 8)
        name = _field_at(ks, off)
        a = s.addr + off
        new = self._garbage(self._old(self.sim.meta, a))
        risk = self._slab_risk(s, name == "next")
        if name == "base":  # garbage, or another slab's memory; the slabs it now overlaps
            new = self.rng.choice([new, *(x.base for x in self.slub.slab_list if x is not s)])
            span = s.cache.geom.slab_size
            risk += self.objects_of(*(x for x in self.slub.slab_list
                                      if x.base < new + span and new < x.base +
                                      x.cache.geom.slab_size))
        return self._word(self.sim.meta, "slab_word", a, new,
                          f"slab 0x{s.addr:x} ({s.cache.name}) word +0x{off:x} ({name})", risk)

    def _slab_risk(self, s: Slab, with_later: bool) -> list[int]:
        slabs = s.cache.slabs
        return self.objects_of(*(slabs[slabs.index(s):] if with_later else [s]))

    def slab_next(self) -> Damage | None:
        s = self._slab()
        if s is None:
            return None
        slabs = s.cache.slabs
        i = slabs.index(s)
        return self._relink("slab_next", slabs, i, "sim_slab",
                            f"slab 0x{s.addr:x} ({s.cache.name}) next",
                            self.objects_of(*slabs[i + 1:]))

    # -- free list damage ---------------------------------------------------------------
    def _free_victim(self):
        """(slab, its free list head first, position i, address of L[i]'s free pointer)."""
        s = self._slab(free=True)
        if s is None:
            return None
        order = s.free[::-1]
        i = self.rng.randrange(len(order))
        return s, order, i, order[i] + s.cache.geom.offset

    def freeptr(self) -> Damage | None:
        v = self._free_victim()
        if v is None:
            return None
        s, order, i, a = v
        g = s.cache.geom
        other = self._slab()
        choices = [WILD + 8 * self.rng.randrange(4096), 0, order[i] + 8,
                   s.base + g.slab_size + 8 * self.rng.randrange(64), self._garbage(
                       self._old(self.sim.slab_area, a))]
        if other is not None and other is not s:
            choices.append(other.base + g.red_left_pad)
        old = self._old(self.sim.slab_area, a)
        new = next((x for x in self.rng.sample(choices, len(choices)) if x != old), None)
        if new is None:
            return None
        return self._word(self.sim.slab_area, "freeptr", a, new,
                          f"free pointer of 0x{order[i]:x} (slab 0x{s.addr:x}, {s.cache.name})",
                          self.objects_of(s))

    def freelist_cycle(self) -> Damage | None:
        v = self._free_victim()
        if v is None:
            return None
        s, order, i, a = v
        back = order[self.rng.randrange(i + 1)]
        return self._word(self.sim.slab_area, "freelist_cycle", a, back,
                          f"free pointer of 0x{order[i]:x} (slab 0x{s.addr:x}, "
                          f"{s.cache.name})", self.objects_of(s))

    # -- slot damage --------------------------------------------------------------------
    def track(self) -> Damage | None:
        hit = self._slot()
        if hit is None:
            return None
        s, slot = hit
        g = s.cache.geom
        which = self.rng.randrange(2)
        off = 8 * self.rng.randrange(g.track_size // 8)
        a = slot + g.red_left_pad + g.track_offset + which * g.track_size + off
        obj = slot + g.red_left_pad
        return self._word(self.sim.slab_area, "track", a, self._garbage(
            self._old(self.sim.slab_area, a)),
            f"{('alloc', 'free')[which]} track of 0x{obj:x} word +0x{off:x}", [obj])

    def _slot_bytes(self, kind: str, avoid: tuple[int, ...]) -> Damage | None:
        """Up to eight bytes of one area of a random slot, none of them a fill byte the
        area may hold (so the damage is there to find)."""
        hit = self._slot()
        if hit is None:
            return None
        s, slot = hit
        g = s.cache.geom
        reg = g.regions()
        lo, hi = self.rng.choice({"object": [reg["object"]], "padding": [reg["padding"]],
                                  "redzone": [reg["left redzone"], reg["right redzone"]]}[kind])
        start = self.rng.randrange(lo, hi)
        n = self.rng.randint(1, min(8, hi - start))
        values = [b for b in range(256) if b not in avoid]
        new = bytes(self.rng.choice(values) for _ in range(n))
        obj = slot + g.red_left_pad
        return self._write(self.sim.slab_area, kind, slot + start, new,
                           f"{kind} of 0x{obj:x} at {start - g.red_left_pad:+#x}", [obj])

    def object(self) -> Damage | None:
        return self._slot_bytes("object", (L.SIM_POISON_FREE, L.SIM_POISON_END))

    def redzone(self) -> Damage | None:
        return self._slot_bytes("redzone", (L.SIM_REDZONE_INACTIVE, L.SIM_REDZONE_ACTIVE))

    def padding(self) -> Damage | None:
        return self._slot_bytes("padding", (L.SIM_PADDING_BYTE,))
