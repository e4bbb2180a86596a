"""Walking a simulated SLUB heap's lists when they may be damaged: the cache list, each cache's
slab list and each slab's free list, and the record of what could not be trusted.

A debugger is pointed at heaps that are already broken, so every list walk here is bounded (by
what fits in the metadata region, by hard caps) and cycle-safe, every descriptor is checked
before it is believed (a cache's geometry must describe a slot, a slab must name its cache and
lie naturally aligned inside the slab area, slabs must not overlap), and meeting garbage gives
one warning line saying where (`sim: cache kmalloc-64 slab 0x...: free pointer 0x... outside
the slab`). The walk then goes on with what it can still trust: a cache or slab that fails its
checks is skipped, a free list cut short is completed from slub_debug's red zones. The memory
whose metadata was not trusted is kept (mdbpy/heap/damage.py's DamageLog) for Allocator.untrusted(), so ::findleaks
names it instead of reporting a silently incomplete count.

Sizes met in benchmarks are a million objects in tens of thousands of slabs, so slab
descriptors are decoded with numpy in runs from one read of the metadata, and a slab's free
pointers are picked out of one read of the slab with a strided view.
"""

from __future__ import annotations

import re

from mdbpy.errors import ReadError
from mdbpy.heap import walk
from mdbpy.sim.layouts import (SIM_POISON, SIM_RED_ZONE, SIM_REDZONE_ACTIVE,
                               SIM_REDZONE_INACTIVE, SIM_STORE_USER)

from .model import SimCache, decoded

MAX_CACHES = 4096
MAX_SLABS = 1 << 24
MAX_SLAB_BYTES = 1 << 30  # one slab larger than this is corrupt
MAX_METADATA = 256 << 20  # a larger metadata region is not read in one piece
KNOWN_FLAGS = SIM_RED_ZONE | SIM_POISON | SIM_STORE_USER
CACHE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*\Z")

ALREADY_FREE = "Object already free"
FREECHAIN = "Freechain corrupt"


def geometry_fault(v, track_size: int) -> str | None:
    """Why a decoded sim_kmem_cache cannot describe a slot (None when it can): every region
    of the slot must fit in it and the slots in a slab of a plausible size."""
    r, size = v.red_left_pad, v.size
    checks = (
        (8 <= size <= MAX_SLAB_BYTES and size % 8 == 0, f"slot size {size} is implausible"),
        (0 < v.object_size and r + v.object_size <= size,
         f"object_size {v.object_size} does not fit the slot"),
        (v.object_size <= v.inuse and r + v.inuse <= size,
         f"inuse {v.inuse} does not fit the slot"),
        (r + v.offset + 8 <= size, f"free pointer offset {v.offset} does not fit the slot"),
        (not v.flags & SIM_STORE_USER or r + v.track_offset + 2 * track_size <= size,
         f"track_offset {v.track_offset} does not fit the slot"),
        (0 < v.objects_per_slab and v.objects_per_slab * size <= v.slab_size <= MAX_SLAB_BYTES,
         f"{v.objects_per_slab} objects do not fit a slab of {v.slab_size} bytes"),
    )
    return next((why for ok, why in checks if not ok), None)


def read_cache_list(sim) -> list:
    """Every cache descriptor on the list from sim_allocator.caches (mdbpy/heap/walk.py's
    chain: bounded by the count the root claims and cycle-safe); each link must land inside
    the metadata. A cache whose geometry fails geometry_fault is kept (its descriptor can be
    printed) but marked `bad`: its slabs are not read."""
    root, log = sim.root, sim.damage
    kc = sim.binder["sim_kmem_cache"]
    limit = min(root.ncaches, MAX_CACHES)

    def read(addr):
        try:
            return decoded(kc.view(sim.session.mem, addr))
        except ReadError:
            return None

    def check(addr):
        return None if sim.in_metadata(addr, kc.size) else \
            f"link 0x{addr:x} points outside the metadata"

    views, broke = walk.chain(root.caches, read, lambda v: v.next, limit, "cache", check)
    out = [_cache(sim, v, i) for i, v in enumerate(views)]
    last = (out[-1].addr, out[-1].addr + kc.size, f"cache {out[-1].name}") if out else \
        (root.addr, root.addr + root.struct.size, "sim_allocator")
    if broke is not None and broke.cause == "limit":
        log.report(root.addr, root.addr + root.struct.size,
                   f"cache list: more caches than the {limit} sim_allocator claims; "
                   "the rest are ignored")
    elif broke is not None:
        log.report(last[0], last[1], f"cache list: {broke.why} (linked from {last[2]} at "
                   f"0x{last[0]:x}); the caches after it are lost")
    elif len(out) < root.ncaches:
        log.report(last[0], last[1], f"cache list: ends after {len(out)} caches, "
                   f"sim_allocator claims {root.ncaches}")
    return out


def _cache(sim, v, index: int):
    """A cache read from the list, its name, flags and geometry checked (each fault
    reported; a bad geometry marks it bad)."""
    log, kc = sim.damage, sim.binder["sim_kmem_cache"]
    cur = v.addr
    name = v.name.split(b"\0", 1)[0].decode("latin-1")
    c = SimCache(v, name, index)
    if not CACHE_NAME.match(name):
        c.name = f"cache@0x{cur:x}"
        log.report(cur, cur + kc.size, f"cache at 0x{cur:x}: name {name[:32]!r} is not "
                   f"a cache name; called {c.name}")
    if v.flags & ~KNOWN_FLAGS:
        log.report(cur, cur + kc.size, f"cache {c.name}: flags 0x{v.flags:x} has unknown "
                   "bits; only the debug bits are used")
        v.flags &= KNOWN_FLAGS
    fault = geometry_fault(v, sim.binder["sim_track"].size)
    if fault:
        c.bad = True
        log.report(cur, cur + kc.size, f"cache {c.name} at 0x{cur:x}: {fault}; its slabs "
                   "are not read")
    return c


def read_slab_list(sim, c) -> None:
    """The cache's slab list into c's columns (descriptor, base, objects, inuse, freelist),
    cycle-safe and bounded by what fits in the metadata. A link outside the metadata ends the
    walk; a descriptor that does not name this cache, lies outside the slab area, is not
    naturally aligned or claims too many objects is reported and skipped (its `next` is still
    followed: one smashed word does not lose the slabs after it)."""
    import numpy as np

    ks = sim.binder["sim_slab"]
    v = c.view
    meta_lo, meta = sim.metadata()
    limit = min(len(meta) // ks.size if meta else v.nr_slabs, MAX_SLABS)
    # The walk goes run by run (_slab_run), and stops where a run starts again: a cycle
    # into the middle of a run is met there on its second turn at the latest. The first
    # repeated slab is then found among the slabs read, as if each had been checked.
    starts: set[int] = set()
    runs, total = [], 0
    cur, why, looped = v.slabs, None, False  # why: what ended the walk early
    while cur and not c.bad:
        if cur in starts:
            looped = True
            break
        if total >= limit:
            why = f"more than {limit} slabs"
            break
        if not sim.in_metadata(cur, ks.size):
            why = f"link 0x{cur:x} points outside the metadata"
            break
        try:
            run = _slab_run(sim, cur, limit - total)
        except ReadError:
            why = f"slab 0x{cur:x} is unreadable"
            break
        starts.add(cur)
        runs.append((np.arange(cur, cur + len(run) * ks.size, ks.size, dtype=np.uint64), run))
        total += len(run)
        cur = int(run["next"][-1])
    addr = np.concatenate([a for a, _ in runs] or [np.zeros(0, np.uint64)])
    # one run (the usual case) is used where it lies; several are joined as bytes (numpy's
    # concatenate copies record dtypes field by field, a hundred times slower)
    rec = runs[0][1] if len(runs) == 1 else np.frombuffer(
        b"".join(r.tobytes() for _, r in runs), ks.dtype())
    walked = np.append(addr, np.uint64(cur)) if looped else addr
    again = _first_repeat(walked)
    if again is not None:
        cur = int(walked[again])
        why = f"cycle at 0x{cur:x}"
        addr, rec = addr[:again], rec[:again]
    if why:
        prev = int(addr[-1]) if len(addr) else None
        at, size = (prev, ks.size) if prev else (c.addr, sim.binder["sim_kmem_cache"].size)
        owner = f"slab 0x{prev:x}" if prev else "the cache"
        sim.damage.report(at, at + size, f"cache {c.name} slab list: {why} (linked from "
                          f"{owner}); the slabs after it are lost")
        sim.problem(FREECHAIN, c, cur, note=f"slab list broken: {why}")
    elif not c.bad and len(addr) != v.nr_slabs:
        sim.damage.report(c.addr, c.addr + sim.binder["sim_kmem_cache"].size,
                          f"cache {c.name}: nr_slabs says {v.nr_slabs}, its slab list has "
                          f"{len(addr)}")
    keep = _check_slabs(sim, c, addr, rec)
    c.slab_addr = addr[keep]
    c.slab_base = rec["base"][keep].astype(np.uint64)
    c.slab_objects = rec["objects"][keep].astype(np.int64)
    c.slab_inuse = rec["inuse"][keep].astype(np.int64)
    c.slab_freelist = rec["freelist"][keep].astype(np.uint64)


def _first_repeat(addr) -> int | None:
    """The first position whose address came earlier in the array, or None (a list carved in
    address order, the usual case, is seen to have none in one pass)."""
    import numpy as np

    d = np.diff(addr.astype(np.int64))
    if (d > 0).all() or (d < 0).all():
        return None
    _, first = np.unique(addr, return_index=True)
    if len(first) == len(addr):
        return None
    repeated = np.ones(len(addr), bool)
    repeated[first] = False
    return int(np.flatnonzero(repeated)[0])


def _check_slabs(sim, c, addr, rec):
    """The mask of slab descriptors worth believing; each other one is reported."""
    import numpy as np

    v = c.view
    lo, hi = sim.root.slab_area, sim.root.slab_area_end
    objects = rec["objects"].astype(np.uint64)
    base = rec["base"].astype(np.uint64)
    # base + objects * size > hi, without the sum wrapping for a hostile base or count
    room = (np.uint64(hi) - np.minimum(base, np.uint64(hi))) // np.uint64(max(v.size, 1))
    faults = (
        (rec["cache"] != np.uint64(c.addr), lambda i: f"names cache 0x{int(rec['cache'][i]):x}"),
        ((rec["objects"] == 0) | (rec["objects"] > v.objects_per_slab),
         lambda i: f"claims {int(rec['objects'][i])} objects"),
        ((base < np.uint64(lo)) | (objects > room),
         lambda i: f"base 0x{int(rec['base'][i]):x} lies outside the slab area"),
        (rec["base"] % np.uint64(v.slab_size) != 0,
         lambda i: f"base 0x{int(rec['base'][i]):x} is not slab-aligned"),
    )
    keep = np.ones(len(addr), bool)
    placed = ~(faults[1][0] | faults[2][0] | faults[3][0])
    for bad, why in faults:
        for i in np.flatnonzero(bad & keep).tolist():
            a = int(addr[i])
            # its objects are not known: the memory they are in, where the slab says that
            lo, hi = (int(rec["base"][i]), int(rec["base"][i] + rec["objects"][i] * v.size)) \
                if placed[i] else (a, a + sim.binder["sim_slab"].size)
            sim.damage.report(lo, hi, f"cache {c.name} slab 0x{a:x}: {why(i)}; skipped")
            sim.problem(FREECHAIN, c, a, note=f"slab 0x{a:x} {why(i)}; skipped")
            keep[i] = False
    return keep


def _slab_run(sim, addr: int, most: int):
    """The sim_slab descriptors from addr on that follow each other in memory and in the
    list (each one's `next` is the one after it), at least one and at most `most`, as a
    numpy record array. The simulator carves slab descriptors in runs, so a list of tens
    of thousands of slabs is decoded in a few steps, while every link is still checked."""
    import numpy as np

    ks = sim.binder["sim_slab"]
    meta_lo, meta = sim.metadata()
    off = addr - meta_lo
    if off < 0 or off % 8 or off + ks.size > len(meta):
        return np.frombuffer(sim.session.mem.read(addr, ks.size), ks.dtype())
    n = max(1, min(most, (len(meta) - off) // ks.size))
    run = np.ndarray((n,), ks.dtype(), buffer=meta, offset=off)
    step = addr + ks.size * np.arange(1, n + 1, dtype=np.uint64)
    breaks = np.flatnonzero(run["next"] != step)
    return run[:int(breaks[0]) + 1 if len(breaks) else n]


def drop_overlaps(sim, caches: list) -> None:
    """Slabs of one heap never overlap; where two descriptors claim the same memory (a
    smashed base), the one whose span starts later (on a tie, the later in list order) is
    reported and skipped. Vectorized: only the overlapping slabs are visited one by one."""
    import numpy as np

    live = [c for c in caches if len(c.slab_base)]
    if sum(len(c.slab_base) for c in live) < 2:
        return
    base = np.concatenate([c.slab_base for c in live])
    end = base + np.concatenate([c.slab_objects.astype(np.uint64) * np.uint64(c.view.size)
                                 for c in live])
    owner = np.concatenate([np.full(len(c.slab_base), k) for k, c in enumerate(live)])
    pos = np.concatenate([np.arange(len(c.slab_base)) for c in live])
    order = np.argsort(base, kind="stable")
    reach = np.maximum.accumulate(end[order])
    hits = np.flatnonzero(base[order][1:] < reach[:-1]) + 1
    drop: dict[int, list[int]] = {}
    for h in hits.tolist():
        i = int(order[h])
        j = int(order[np.flatnonzero(end[order][:h] > base[i])[0]])  # one slab it overlaps
        if _holds_freelist(live[owner[j]], pos[j]) < _holds_freelist(live[owner[i]], pos[i]):
            i, j = j, i  # the other one's free list lies outside its claimed memory
        c, o = live[owner[i]], live[owner[j]]
        a, b = int(c.slab_addr[pos[i]]), int(o.slab_addr[pos[j]])
        sim.damage.report(a, a + sim.binder["sim_slab"].size,
                          f"cache {c.name} slab 0x{a:x}: overlaps slab 0x{b:x} of cache "
                          f"{o.name}; skipped")
        drop.setdefault(int(owner[i]), []).append(int(pos[i]))
    for k, rows in drop.items():
        c = live[k]
        keep = np.ones(len(c.slab_base), bool)
        keep[rows] = False
        for col in ("slab_addr", "slab_base", "slab_objects", "slab_inuse", "slab_freelist"):
            setattr(c, col, getattr(c, col)[keep])


def _holds_freelist(c, i: int) -> bool:
    """Whether slab i of c has no free list or one that starts at an object of its own."""
    head, base, v = int(c.slab_freelist[i]), int(c.slab_base[i]), c.view
    k, rem = divmod(head - base - v.red_left_pad, v.size)
    return not head or (not rem and 0 <= k < int(c.slab_objects[i]))


def walk_freelists(sim, c) -> None:
    """Every slab's free list of cache c into c.free (slab position -> free slot indexes)."""
    import numpy as np

    visit = (c.slab_freelist != 0) | (c.slab_inuse < c.slab_objects)
    for i in np.flatnonzero(visit).tolist():
        free = _walk_freelist(sim, c, i)
        if free:
            c.free[i] = free


def _walk_freelist(sim, c, i: int) -> list[int]:
    """The free slot indexes of slab i of c, following its free list through the free pointers
    of its slots (read in one block). At most one step per slot: a repeated object is a double
    free (the list cycles from there: reported once by ::heap_verify), a pointer to no object
    ends the walk with a warning, and so does a list shorter than the slab's `inuse` says.
    Either way the rest of the list is cut off; `_cut_off` finds those objects."""
    import numpy as np

    v = c.view
    size = v.size
    addr, base = int(c.slab_addr[i]), int(c.slab_base[i])
    objects, cur = int(c.slab_objects[i]), int(c.slab_freelist[i])
    where = f"cache {c.name} slab 0x{addr:x}"
    try:
        data = sim.session.mem.read(base, objects * size)
    except ReadError as e:
        sim.damage.report(base, base + objects * size, f"{where}: slots unreadable")
        sim.problem(FREECHAIN, c, base, note=f"slab unreadable: {e}")
        return []
    fps = np.ndarray((objects,), dtype="<u8", buffer=data, offset=v.red_left_pad + v.offset,
                     strides=(size,))
    first = base + v.red_left_pad
    free: list[int] = []
    on_list = set()
    why = None
    while cur:
        k, rem = divmod(cur - first, size)
        if cur < first or k >= objects:
            why = f"free pointer 0x{cur:x} outside the slab"
        elif rem:
            why = f"free pointer 0x{cur:x} is not an object of the slab"
        elif k in on_list:
            lost = _cut_off(sim, c, data, free)
            sim.problem(ALREADY_FREE, c, cur, size=v.object_size,
                        note="the object is on its slab's free list twice" + (
                            f"; {lost} free object{'s' if lost > 1 else ''} after it "
                            "cut off the list (known by their inactive red zones)"
                            if lost else ""))
            if not v.flags & SIM_RED_ZONE:
                sim.damage.report(base, base + objects * size, f"{where}: free list cycles "
                                  f"back to 0x{cur:x}; no red zones tell the rest")
            return free
        if why:
            sim.problem(FREECHAIN, c, cur, note=f"free pointer 0x{cur:x} in slab 0x{addr:x} "
                        "points to no object")
            break
        on_list.add(k)
        free.append(k)
        cur = int(fps[k])
    claimed = objects - int(c.slab_inuse[i])
    if why is None and len(free) < claimed:
        why = f"free list ends after {len(free)} objects, inuse says {claimed} are free"
    if why:
        sim.damage.report(base, base + objects * size, f"{where}: {why}")
        _cut_off(sim, c, data, free)
    return free


def _cut_off(sim, c, data: bytes, free: list[int]) -> int:
    """Add to `free` the slots of a slab (its bytes) off the list that slub_debug's red
    zones mark free (more 0xbb than 0xcc bytes: an overflow into a zone does not change
    its verdict); returns how many. Without red zones nothing tells: they stay allocated."""
    import numpy as np

    from .verify import slot_regions

    v = c.view
    if not v.flags & SIM_RED_ZONE:
        return 0
    slots = np.frombuffer(data, np.uint8).reshape(-1, v.size)
    reg = slot_regions(sim, c)
    zones = np.concatenate([slots[:, lo:hi] for lo, hi in (reg["left"], reg["right"])],
                           axis=1)
    marked = (zones == SIM_REDZONE_INACTIVE).sum(axis=1) > \
        (zones == SIM_REDZONE_ACTIVE).sum(axis=1)
    marked[free] = False
    lost = np.flatnonzero(marked).tolist()
    free += lost
    return len(lost)
