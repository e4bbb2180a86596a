"""slub_debug's consistency checks on a simulated cache (Linux mm/slub.c check_object and
check_pad_bytes), one slab at a time and vectorized over its slots.

Per slot, in the kernel's order, each damaged area reported once with its first bad byte (the
kernel stops at an object's first failure; a post-mortem check shows them all):
  - red zones, left [slot, object) and right [object + object_size, object + inuse): 0xcc while
    the object is allocated, 0xbb while it is free (`Redzone overwritten`);
  - a free object's poison: 0x6b bytes ending in 0xa5 (`Poison overwritten`);
  - padding, from the end of the metadata (free pointer, alloc and free tracks) to the end of
    the slot: 0x5a (`Object padding overwritten`).
Free-list damage (`Object already free`, `Freechain corrupt`) is found while walking the lists
(heap.py).
"""

from __future__ import annotations

from mdbpy.errors import ReadError
from mdbpy.heap.model import Problem
from mdbpy.heap.verify import mismatches
from mdbpy.sim.layouts import (SIM_PADDING_BYTE, SIM_POISON, SIM_POISON_END, SIM_POISON_FREE,
                               SIM_RED_ZONE, SIM_REDZONE_ACTIVE, SIM_REDZONE_INACTIVE,
                               SIM_STORE_USER)

REDZONE = "Redzone overwritten"
POISON = "Poison overwritten"
PADDING = "Object padding overwritten"
KIND_ORDER = {REDZONE: 0, POISON: 1, PADDING: 2}


def slot_regions(alloc, c) -> dict:
    """Slot-relative [lo, hi) of each checked area of cache c, without the free pointer."""
    v = c.view
    r, osz = v.red_left_pad, v.object_size
    fp = (r + v.offset, r + v.offset + 8)
    meta_end = max(v.inuse, v.offset + 8)
    if v.flags & SIM_STORE_USER:
        meta_end = max(meta_end, v.track_offset + 2 * alloc.binder["sim_track"].size)

    def minus_fp(lo, hi):
        # the free pointer is data, never fill; cut it out of a range (keeping the first part)
        if fp[0] < hi and lo < fp[1]:
            return (lo, fp[0]) if lo < fp[0] else (fp[1], hi)
        return lo, hi

    return {"left": (0, r), "right": minus_fp(r + osz, r + v.inuse),
            "poison": minus_fp(r, r + osz), "padding": (r + meta_end, v.size)}


def check_cache(alloc, c) -> list[Problem]:
    import numpy as np

    v = c.view
    flags = v.flags
    reg = slot_regions(alloc, c)
    plo, phi = reg["poison"]
    poison = np.full(max(phi - plo, 0), SIM_POISON_FREE, np.uint8)
    if phi == v.red_left_pad + v.object_size and len(poison):
        poison[-1] = SIM_POISON_END
    found: dict[tuple, Problem] = {}  # (slot, kind) -> the first bad byte of that area
    for slab in c.slabs:
        try:
            data = alloc.session.mem.read(slab.base, slab.objects * v.size)
        except ReadError:
            continue  # already reported by the free-list walk
        slots = np.frombuffer(data, np.uint8).reshape(slab.objects, v.size)
        free = np.zeros(slab.objects, bool)
        free[slab.free] = True
        rows_free, rows_alloc = np.nonzero(free)[0], np.nonzero(~free)[0]
        checks = []
        if flags & SIM_RED_ZONE:
            for side in ("left", "right"):
                checks.append((REDZONE, reg[side], SIM_REDZONE_ACTIVE, rows_alloc))
                checks.append((REDZONE, reg[side], SIM_REDZONE_INACTIVE, rows_free))
        if flags & SIM_POISON:
            checks.append((POISON, reg["poison"], poison, rows_free))
            checks.append((PADDING, reg["padding"], SIM_PADDING_BYTE, None))
        for kind, (lo, hi), want, rows in checks:
            if rows is not None and not len(rows):
                continue
            idx, first, last = mismatches(slots, lo, hi, want, rows)
            for k, a, b in zip(idx.tolist(), first.tolist(), last.tolist()):
                slot = slab.base + k * v.size
                key = (slot, KIND_ORDER[kind])
                if key in found:  # the right red zone after the left one
                    continue
                exp = int(want if np.isscalar(want) else want[a - lo])
                found[key] = Problem(kind, c.name, c.object_at(slab, k), v.object_size,
                                     slot + a, slot + b + 1, int(slots[k, a]), exp)
    problems = [found[key] for key in sorted(found)]
    for p in problems:
        p.records = alloc.records_at(c, p.addr)
    return problems
