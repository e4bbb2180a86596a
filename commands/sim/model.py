"""A simulated heap's caches and slabs as read: descriptors decoded once, slabs kept
column-wise. What the walks (walk.py) produce and the allocator (heap.py) and the dcmds read."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

from mdbpy.sim.layouts import SIM_STORE_USER


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
    slab_inuse: object = None  # np.ndarray int64: what each descriptor claims
    slab_freelist: object = None  # np.ndarray uint64: each slab's free list head
    bad: bool = False  # its descriptor fails the geometry checks: no slabs are read
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
