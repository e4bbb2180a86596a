"""Per-thread caches (UMF_PTC) and mdb's `umem_ptc_<size>` walkers.

The 2016 libumem (illumos, 53f5df3) can give malloc a per-thread cache: each thread's tmem_t
(`{size_t tm_size; void *tm_roots[16];}`, at umem_tmem_off from the thread pointer) heads one
NULL-terminated list of free buffers per umem_alloc_* size, linked through each buffer's first
word. mdb registers a walker per such cache, named after its buffer size; given a thread it
walks that thread's list, without an address every thread's. Buffers in a per-thread cache are
free: the umem walker leaves them out and freemem includes them, as the magazine layer.

Portable libumem has no per-thread caches on Linux (5cc22b9 predates them; 53f5df3 switches
them off under UMEM_DEBUG and needs code generation Linux lacks), so the walkers exist for the
umem_alloc_* caches, as in mdb, and say in one line why there is nothing to walk.
"""

from __future__ import annotations

from mdbpy.dcmd import Walker
from mdbpy.errors import MdbError, ReadError

from mdbpy_commands.umem import layouts as L
from mdbpy_commands.umem.damage import damage
from mdbpy_commands.umem.state import Umem

NTMEMBASE = 16  # tm_roots[] slots of a tmem_t
TM_ROOTS = 8  # offsetof(tmem_t, tm_roots): after size_t tm_size
MAX_PTC = 1 << 20  # buffers on one thread's list (umem_ptc_size caps the bytes: 1 MiB default)


def ptc_slots(umem) -> list[tuple[int, object]]:
    """(tm_roots index, cache) of the umem_alloc_* caches a per-thread cache can hold: the
    first NTMEMBASE sizes of umem_alloc_sizes (or of the caches' sizes when that static
    table is stripped)."""
    caches = [c for c in umem.caches() if c.cstr("cache_name").startswith("umem_alloc_")]
    by_size = {c.cache_bufsize: c for c in caches}
    s = umem.sym("umem_alloc_sizes")
    if s is not None:
        sizes = [int.from_bytes(umem.mem.read(s.addr + 4 * i, 4), "little")
                 for i in range(min(s.size // 4, NTMEMBASE))]
    else:
        sizes = sorted(by_size)[:NTMEMBASE]
    return [(i, by_size[n]) for i, n in enumerate(sizes) if n in by_size]


def why_none(umem, cache) -> str | None:
    """Why this cache has no per-thread cache to walk, or None when it has one."""
    if umem.sym("umem_ptc_size") is None:
        return ("this libumem has no per-thread caches (portable libumem before UMF_PTC; "
                "mdb's Linux port has none either)")
    if not umem.readvar("umem_ptc_enabled", default=0):
        return ("per-thread caching is off in this process (umem_ptc_enabled is 0: "
                "UMEM_DEBUG is set, or the library cannot generate its malloc on Linux)")
    if umem.sym("umem_tmem_off") is None:
        return "this libumem has no umem_tmem_off: the per-thread roots cannot be found"
    if not cache.cache_flags & L.UMF_PTC:
        return f"cache {cache.cstr('cache_name')} is not cached per thread"
    return None


def thread_pointers(session) -> list[int]:
    """Every thread's thread pointer (fs_base): where libumem's curthread() points."""
    return [t.regs["fs_base"] for t in session.target.threads() if t.regs.get("fs_base")]


def chain(umem, cache, slot: int, tp: int) -> list[int]:
    """The buffers on one thread's list for tm_roots[slot], bounded and cycle-safe."""
    root = tp + umem.readvar("umem_tmem_off") + TM_ROOTS + 8 * slot
    what = f"cache 0x{cache.addr:x} per-thread cache of thread pointer 0x{tp:x}"
    out: list[int] = []
    seen: set[int] = set()
    try:
        cur = umem.mem.read_ptr(root)
        while cur:
            if cur in seen or len(out) >= MAX_PTC:
                why = f"cycle at 0x{cur:x}" if cur in seen else f"more than {MAX_PTC} buffers"
                damage(umem.session).report(root, root + 8, f"{what}: {why}")
                break
            seen.add(cur)
            out.append(cur)
            cur = umem.mem.read_ptr(cur)
    except ReadError as e:
        damage(umem.session).report(root, root + 8, f"{what}: {e}")
    return out


def ptc_buffers(umem, cache) -> list[int]:
    """Every thread's per-thread-cached buffers of the cache ([] when it has none)."""
    for slot, c in ptc_slots(umem):
        if c.addr == cache.addr and why_none(umem, cache) is None:
            return [b for tp in thread_pointers(umem.session) for b in chain(umem, c, slot, tp)]
    return []


def register(session, umem, module: str) -> None:
    """One `umem_ptc_<bufsize>` walker per umem_alloc_* cache a per-thread cache can hold."""
    reg = session.registry
    for slot, c in ptc_slots(umem):
        name = f"umem_ptc_{c.cache_bufsize}"
        if name not in reg.walkers:
            reg.add_walker(Walker(name, _walker(c.addr, slot, name),
                                  f"walk the per-thread cache for {c.cstr('cache_name')}"),
                           module)


def _walker(cache_addr: int, slot: int, name: str):
    def walk(session, addr):
        """A thread's (addr: its thread pointer) or every thread's per-thread-cached
        buffers of this cache."""
        umem = Umem.get(session)
        cache = umem.cache(cache_addr)
        why = why_none(umem, cache)
        if why is not None:
            raise MdbError(f"{name}: {why}")
        tps = [addr] if addr is not None else thread_pointers(session)
        return iter([b for tp in tps for b in chain(umem, cache, slot, tp)])

    return walk
