"""Ground truth of a simulated heap: which objects leaked, which slots are corrupt.

Both are computed from the final bytes with the simulator's own knowledge (which slots are
allocated, where the roots are), never from the structures a reader walks:
- a leak is an allocated object that no chain of pointers reaches from the roots (the program's
  data and bss, every thread's stack from its stack pointer up). Pointers count the way a
  conservative scanner counts them: any aligned word whose value lies inside an allocated
  object, read from the roots and from the objects (object_size bytes, not slot metadata);
- a corrupt slot is one whose red zones, poison (free slots) or padding differ from what
  slub_debug wrote there; double frees are events the simulator saw, reported with them (the
  object is on its slab's free list twice, and counts once as free).
Everything but the graph search is vectorized (numpy), so a generated heap of a million
objects is checked in seconds. The search is a plain loop of its own over the edges: the truth
is the oracle of the engine's compiled mark, so it shares no code with it, and it imports
nothing heavy (scipy's search cost the demo 0.3 s of import for a few hundred objects).
"""

from __future__ import annotations

import json
from typing import NamedTuple

from mdbpy.sim.slub import SimCache, Slub


class Corrupt(NamedTuple):
    obj: int
    cache: str
    kind: str  # 'redzone', 'poison', 'padding' (or 'double free', added by the simulator)
    first_bad: int
    allocated: bool


def _u8(region_data) -> "np.ndarray":
    import numpy as np

    return np.frombuffer(region_data, dtype=np.uint8)


def cache_slots(slub: Slub, c: SimCache):
    """(slot bytes as an (n, size) uint8 array, slot addresses) of every slot of `c`."""
    import numpy as np

    g = c.geom
    if not c.slabs:
        return np.zeros((0, g.size), np.uint8), np.zeros(0, np.uint64)
    area = _u8(slub.slab_area.data)
    off = np.array([s.base - slub.slab_area.start for s in c.slabs], dtype=np.int64)
    idx = (off[:, None] + np.arange(g.objects, dtype=np.int64)[None, :] * g.size).ravel()
    rows = area[idx[:, None] + np.arange(g.size, dtype=np.int64)[None, :]]
    return rows, idx.astype(np.uint64) + np.uint64(slub.slab_area.start)


def allocated_mask(c: SimCache, slot_addrs) -> "np.ndarray":
    import numpy as np

    free = {o - c.geom.red_left_pad for s in c.slabs for o in s.free}
    return ~np.isin(slot_addrs, np.fromiter(free, dtype=np.uint64, count=len(free)))


def corruption(slub: Slub) -> list[Corrupt]:
    """Every slot whose debug bytes are not what slub_debug wrote, one entry per damaged
    area kind (red zones, poison of a free object, padding), with its first bad byte."""
    import numpy as np

    out = []
    for c in slub.caches:
        rows, slots = cache_slots(slub, c)
        if not len(rows):
            continue
        g = c.geom
        alloc = allocated_mask(c, slots)
        expect = np.where(alloc[:, None], np.frombuffer(g.slot_image(True), np.uint8),
                          np.frombuffer(g.slot_image(False), np.uint8))
        bad = rows != expect
        regions = g.regions()
        kinds = (("redzone", ("left redzone", "right redzone")), ("poison", ("object",)),
                 ("padding", ("padding",)))
        for kind, names in kinds:
            mask = np.zeros(g.size, bool)
            for n in names:
                a, b = regions[n]
                mask[a:b] = True
            hit = bad & mask[None, :]
            if kind == "poison":
                hit &= ~alloc[:, None]  # an allocated object's bytes are its owner's
            for r in np.flatnonzero(hit.any(axis=1)):
                col = int(np.argmax(hit[r]))
                out.append(Corrupt(int(slots[r]) + g.red_left_pad, c.name, kind,
                                   int(slots[r]) + col, bool(alloc[r])))
    return sorted(out)


def allocated_objects(slub: Slub):
    """(object addresses, object sizes) of every allocated object, sorted by address."""
    import numpy as np

    starts, sizes = [], []
    for c in slub.caches:
        rows, slots = cache_slots(slub, c)
        if not len(slots):
            continue
        a = slots[allocated_mask(c, slots)] + np.uint64(c.geom.red_left_pad)
        starts.append(a)
        sizes.append(np.full(len(a), c.geom.object_size, np.uint64))
    if not starts:
        return np.zeros(0, np.uint64), np.zeros(0, np.uint64)
    s, z = np.concatenate(starts), np.concatenate(sizes)
    order = np.argsort(s)
    return s[order], z[order]


def _words(data, start: int, lo: int, hi: int):
    """The aligned 8-byte words of [lo, hi) in a buffer that begins at address `start`."""
    import numpy as np

    lo = (lo + 7) & ~7
    n = max(0, (hi - lo) // 8)
    return np.frombuffer(data, dtype="<u8", count=n, offset=lo - start)


def unreachable(slub: Slub, roots: list[tuple[bytes | bytearray, int, int, int]]):
    """Addresses of the allocated objects no root reaches. `roots` are (buffer, buffer start
    address, lo, hi): scan [lo, hi) of each buffer."""
    import numpy as np

    starts, sizes = allocated_objects(slub)
    n = len(starts)
    if n == 0:
        return []
    ends = starts + sizes

    def targets(values):
        i = np.searchsorted(starts, values, side="right") - 1
        ok = i >= 0
        ok[ok] = values[ok] < ends[i[ok]]
        return ok, i

    root_vals = np.concatenate([_words(b, s, lo, hi) for b, s, lo, hi in roots]
                               or [np.zeros(0, np.uint64)])
    ok, i = targets(root_vals)
    root_dst = np.unique(i[ok])
    area = slub.slab_area
    counts = (sizes // np.uint64(8)).astype(np.int64)
    first = ((starts - np.uint64(area.start)) // np.uint64(8)).astype(np.int64)
    src = np.repeat(np.arange(n), counts)
    pos = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    words = np.frombuffer(area.data, dtype="<u8", count=len(area.data) // 8)[
        np.repeat(first, counts) + pos]
    ok, i = targets(words)
    src = np.concatenate([src[ok], np.full(len(root_dst), n)])
    dst = np.concatenate([i[ok], root_dst])
    # everything reachable from node n (the roots), depth first: order does not matter here
    order = np.argsort(src, kind="stable")
    heads = np.searchsorted(src[order], np.arange(n + 2)).tolist()
    out = dst[order].tolist()
    seen = bytearray(n + 1)
    seen[n] = 1
    todo = [n]
    while todo:
        v = todo.pop()
        for w in out[heads[v]:heads[v + 1]]:
            if not seen[w]:
                seen[w] = 1
                todo.append(w)
    reached = np.frombuffer(bytes(seen), bool)
    return [int(a) for a in starts[~reached[:n]]]


def cache_counts(slub: Slub) -> dict[str, dict[str, int]]:
    """Per cache with slabs: slabs, total objects, allocated, free."""
    out = {}
    for c in slub.caches:
        if not c.slabs:
            continue
        free = sum(len(set(s.free)) for s in c.slabs)  # a double free is on a list twice
        total = len(c.slabs) * c.geom.objects
        out[c.name] = {"slabs": len(c.slabs), "objects": total, "allocated": total - free,
                       "free": free}
    return out


def to_json(truth: dict) -> str:
    return json.dumps(truth, indent=1, sort_keys=True) + "\n"

