"""The sim dmod's own dcmds and walkers, in the spirit of the kernel's slab tools: ::slabinfo
(the columns of /proc/slabinfo), ::kmem_cache, addr::track (slub_debug's alloc/free tracking),
and walkers over caches, slabs and objects, plus one walker per cache named after it (added when
the module loads, see register_cache_walkers)."""

from __future__ import annotations

from mdbpy.dcmd import Walker, dcmd, walker
from mdbpy.errors import MdbError, UsageError
from mdbpy.heap.model import FREE
from mdbpy.heap.verify import format_record
from mdbpy.jsonout import Table, wants_json
from mdbpy.output import ptr0, radix_str
from mdbpy.sim.layouts import SIM_POISON, SIM_RED_ZONE, SIM_STORE_USER

from .heap import SimAllocator
from .walk import CACHE_NAME

FLAG_NAMES = ((SIM_RED_ZONE, "RED_ZONE"), (SIM_POISON, "POISON"), (SIM_STORE_USER, "STORE_USER"))


def sim_of(session) -> SimAllocator:
    """The target's simulated heap, or a one-line error saying it is not there."""
    for a in session.allocators():
        if isinstance(a, SimAllocator):
            return a
    raise MdbError("no simulated heap in this target (symbol sim_allocator not found)")


def _disabled(session) -> str | None:
    try:
        sim_of(session)
    except MdbError as e:
        return str(e)
    return None


def _cache_arg(sim: SimAllocator, addr: int):
    c = sim.cache_at(addr)
    if c is None:
        raise MdbError(f"0x{addr:x} is not a sim cache (see ::walk sim_cache)")
    return c


def flag_names(flags: int) -> str:
    names = [n for bit, n in FLAG_NAMES if flags & bit]
    return "|".join(names) if names else "-"


# -- dcmds ----------------------------------------------------------------------------------
SLABINFO_HEADER = ("# name            <active_objs> <num_objs> <objsize> <objperslab> "
                   "<pagesperslab> : slabdata <active_slabs> <num_slabs>")


@dcmd("slabinfo", "print the simulated caches as /proc/slabinfo does", enabled=_disabled,
      example="::slabinfo", help="""\
One line per cache in /proc/slabinfo's layout (its version 2.1 columns without the tunables):
the cache name, the allocated objects, all objects of its slabs, the object size callers asked
for, objects per slab, pages per slab, then the slabs holding an allocated object and all
slabs. Piped, the cache addresses.""")
def slabinfo(inv):
    if inv.args or inv.has_addr:
        raise UsageError("::slabinfo takes no arguments")
    sim = sim_of(inv.session)
    if inv.piped_out:
        for c in sim.caches():
            inv.print(radix_str(c.addr, prefix=True))
        return 0
    t = Table("{name:<17s} {active_objs:6d} {num_objs:6d} {objsize:6d} {objperslab:4d} "
              "{pagesperslab:4d} : slabdata {active_slabs:6d} {num_slabs:6d}",
              head=[SLABINFO_HEADER])
    for c in sim.caches():
        v = c.view
        num = sum(s.objects for s in c.slabs)
        t.add(name=c.name, addr=c.addr, active_objs=num - sum(len(s.free) for s in c.slabs),
              num_objs=num, objsize=v.object_size, objperslab=v.objects_per_slab,
              pagesperslab=v.slab_size // 4096,
              active_slabs=sum(1 for s in c.slabs if len(s.free) < s.objects),
              num_slabs=len(c.slabs))
    t.show(inv, "slabinfo", "caches")
    return 0


KMEM_CACHE_HEADER = (f"{'ADDR':<16s} {'NAME':<20s} {'FLAGS':<24s} {'OBJSIZE':>7s} {'SIZE':>6s} "
                     f"{'SLABS':>6s} {'OBJECTS':>8s}")
DETAIL_FIELDS = ("object_size", "size", "offset", "inuse", "red_left_pad", "track_offset",
                 "objects_per_slab", "slab_size", "nr_slabs", "total_objects")


@dcmd("kmem_cache", "print simulated caches, or one cache in detail", addr="?",
      enabled=_disabled, example="::kmem_cache", help="""\
Without an address, one line per cache: its address, name, debug flags, object size, slot size
(object plus red zones, free pointer, tracks and padding), slabs and objects. With a cache
address, every field of that sim_kmem_cache and the slot layout the debug checks use. Piped,
the cache addresses.""")
def kmem_cache(inv):
    if inv.args:
        raise UsageError(f"unexpected argument '{inv.args[0]}'")
    sim = sim_of(inv.session)
    caches = [_cache_arg(sim, inv.addr)] if inv.has_addr else sim.caches()
    if inv.piped_out:
        for c in caches:
            inv.print(radix_str(c.addr, prefix=True))
        return 0
    if inv.has_addr and not wants_json(inv):
        _cache_detail(inv, sim, caches[0])
        return 0
    t = Table("{addr:016x} {name:<20s} {flag_names:<24s} {object_size:7d} {size:6d} "
              "{slabs:6d} {objects:8d}", head=[KMEM_CACHE_HEADER] if inv.header else [])
    for c in caches:
        v = c.view
        t.add(addr=c.addr, name=c.name, flags=v.flags, flag_names=flag_names(v.flags),
              **{f: getattr(v, f) for f in DETAIL_FIELDS}, slabs=len(c.slabs),
              objects=sum(s.objects for s in c.slabs))
    t.show(inv, "kmem_cache", "caches")
    return 0


def _cache_detail(inv, sim, c) -> None:
    from .verify import slot_regions

    v = c.view
    inv.print(f"sim_kmem_cache {ptr0(c.addr)} {c.name}")
    inv.print(f"  {'flags':<17s} 0x{v.flags:x} ({flag_names(v.flags)})")
    for name in DETAIL_FIELDS:
        inv.print(f"  {name:<17s} {getattr(v, name)}")
    inv.print(f"  {'slabs':<17s} 0x{v.slabs:x}")
    inv.print("  slot layout (offsets from the slot):")
    reg = slot_regions(sim, c)
    r = v.red_left_pad
    parts = [("left red zone", reg["left"]), ("object", (r, r + v.object_size)),
             ("right red zone", (r + v.object_size, r + v.inuse)),
             ("free pointer", (r + v.offset, r + v.offset + 8))]
    if c.has_tracks:
        ts = sim.binder["sim_track"].size
        parts += [("alloc track", (r + v.track_offset, r + v.track_offset + ts)),
                  ("free track", (r + v.track_offset + ts, r + v.track_offset + 2 * ts))]
    parts.append(("padding", reg["padding"]))
    for label, (lo, hi) in parts:
        if hi > lo:
            inv.print(f"    [0x{lo:x}, 0x{hi:x}) {label}")


@dcmd("track", "print the alloc and free tracks of a simulated object", addr=":",
      enabled=_disabled, example="0x7f0000201010::track", help="""\
For the object whose slot contains addr (object, red zones or metadata), print its cache and
state, then the alloc and free tracks slub_debug's STORE_USER keeps in the slot: the caller,
timestamp (when), cpu and pid, and the stack one frame a line as sym+off.""")
def track(inv):
    if not inv.has_addr or inv.args:
        raise UsageError("usage: addr::track")
    sim = sim_of(inv.session)
    hit = sim.locate(inv.addr)
    if hit is None:
        raise MdbError(f"0x{inv.addr:x} is not in a simulated slab")
    c, slab, k = hit
    obj = c.object_at(slab, k)
    state = "free" if k in slab.free else "allocated"
    if not c.has_tracks:
        raise MdbError(f"cache {c.name} does not store tracks (no STORE_USER)")
    ta = obj + c.view.track_offset
    inv.print(f"object 0x{obj:x} in cache {c.name} ({state}), tracks at 0x{ta:x}")
    alloc, free = sim.tracks(c, obj)
    for label, rec in (("Allocated", alloc), ("Freed", free)):
        if rec is None:
            inv.print(f"INFO: {label}: never")
        else:
            for line in format_record(inv.session, label, rec):
                inv.print(line)
    return 0


# -- walkers --------------------------------------------------------------------------------
@walker("sim_cache", "walk the simulated caches (sim_kmem_cache addresses)", enabled=_disabled)
def walk_cache(session, addr):
    for c in sim_of(session).caches():
        yield c.addr


@walker("sim_slab", "walk the slabs of a simulated cache (all slabs without an address)",
        enabled=_disabled)
def walk_slab(session, addr):
    sim = sim_of(session)
    for c in [_cache_arg(sim, addr)] if addr else sim.caches():
        for s in c.slabs:
            yield s.addr


def objects(session, addr, want_free: bool):
    """Object addresses of one cache (addr) or of all, allocated or free, in address order."""
    import numpy as np

    sim = sim_of(session)
    t = sim.buffers()
    sel = (t.state == FREE) if want_free else (t.state != FREE)
    if addr:
        sel &= t.group == _cache_arg(sim, addr).index
    yield from (int(a) for a in t.base[np.nonzero(sel)[0]])


@walker("sim_obj", "walk allocated simulated objects (of one cache given its address)",
        enabled=_disabled)
def walk_obj(session, addr):
    return objects(session, addr, False)


@walker("sim_free", "walk free simulated objects (of one cache given its address)",
        enabled=_disabled)
def walk_free(session, addr):
    return objects(session, addr, True)


def register_cache_walkers(session, sim: SimAllocator, module: str) -> None:
    """One walker per cache, named after it (`::walk kmalloc-64`), yielding its allocated
    objects; a cache whose name is already a walker, or whose descriptor holds no cache name
    (damage), keeps only `::walk sim_obj`."""
    reg = session.registry
    for c in sim.cache_list():
        if not CACHE_NAME.match(c.name) or c.name in reg.walkers:
            continue

        def walk(session, addr, _cache=c.addr):
            return objects(session, _cache, False)

        reg.add_walker(Walker(c.name, walk, f"walk allocated objects of cache {c.name}",
                              enabled=_disabled), module)
