"""Per-thread caches and mdb's `umem_ptc_<size>` walkers.

The 2016 libumem (illumos, 53f5df3) can give malloc a per-thread cache (UMF_PTC): each thread's
tmem_t (`{size_t tm_size; void *tm_roots[16];}`, at umem_tmem_off from the thread pointer)
heads one NULL-terminated list of free buffers per umem_alloc_* size, linked through each
buffer's first word. Portable libumem before v2 has none on Linux (5cc22b9 predates them;
53f5df3 switches them off under UMEM_DEBUG and needs code generation Linux lacks).

Portable libumem v2 has its own: a thread's umem_ptc_t, found through the TLS pointer
thread_ptc, holds per size class (umem_alloc_* caches up to umem_ptc_maxsize, none with debug
flags) a bin of free buffers (slots[0 .. count)) and a pair of magazines (loaded: rounds,
previous: prounds). mdbpy finds thread_ptc in each thread from the TLS offset libumem's own
GOT slot holds (R_X86_64_TPOFF64), or, linked statically, from the executable's TLS segment.

mdb registers a walker per cache a per-thread cache can hold, named after its buffer size;
given a thread pointer it walks that thread's buffers, without an address every thread's.
Buffers in a per-thread cache are free: the umem walker leaves them out and freemem includes
them, as the magazine layer; where there is nothing to walk, the walker says why in one line.
"""

from __future__ import annotations

from mdbpy.errors import ReadError
from mdbpy.symbols import tls

from mdbpy_commands.umem import layouts as L
from mdbpy_commands.umem.damage import damage
from mdbpy_commands.umem.state import MAX_MAGSIZE

NTMEMBASE = 16  # tm_roots[] slots of a tmem_t
V2_MAXSIZE = 2048  # v2's umem_ptc_maxsize default
V2_DEBUG = L.UMF_AUDIT | L.UMF_DEADBEEF | L.UMF_REDZONE  # v2 caches none of these per thread
TM_ROOTS = 8  # offsetof(tmem_t, tm_roots): after size_t tm_size
MAX_PTC = 1 << 20  # buffers on one thread's list (umem_ptc_size caps the bytes: 1 MiB default)


def is_v2(umem) -> bool:
    """Per-thread caches in v2's form (umem_ptc_t through thread_ptc): the library has them."""
    return "umem_ptc" in umem.layouts.names()


def ptc_slots(umem) -> list[tuple[int, object]]:
    """(slot, cache) of the umem_alloc_* caches a per-thread cache can hold: the first
    NTMEMBASE sizes of umem_alloc_sizes (or of the caches' sizes when that static table is
    stripped), their tm_roots index; in v2, every one up to umem_ptc_maxsize."""
    caches = [c for c in umem.caches() if c.cstr("cache_name").startswith("umem_alloc_")]
    by_size = {c.cache_bufsize: c for c in caches}
    if is_v2(umem):
        top = umem.readvar("umem_ptc_maxsize", default=V2_MAXSIZE)
        return list(enumerate(by_size[n] for n in sorted(by_size) if n <= top))
    s = umem.sym("umem_alloc_sizes")
    if s is not None:
        sizes = [int.from_bytes(umem.mem.read(s.addr + 4 * i, 4), "little")
                 for i in range(min(s.size // 4, NTMEMBASE))]
    else:
        sizes = sorted(by_size)[:NTMEMBASE]
    return [(i, by_size[n]) for i, n in enumerate(sizes) if n in by_size]


def why_none(umem, cache) -> str | None:
    """Why this cache has no per-thread cache to walk, or None when it has one."""
    if is_v2(umem):
        if not umem.readvar("umem_ptc_enabled", default=0):
            return "per-thread caching is off in this process (umem_ptc_enabled is 0)"
        if cache.cache_flags & V2_DEBUG:
            return (f"cache {cache.cstr('cache_name')} has debugging on (UMEM_DEBUG): "
                    "libumem does not cache it per thread")
        if tls_block(umem) is None or umem.obj.lookup("thread_ptc") is None:
            return ("thread_ptc (libumem's TLS pointer to each thread's cache) cannot be "
                    "found: no TPOFF64 relocation or TLS segment names it")
        return None
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
    """Every thread's per-thread-cached buffers of the cache ([] when it has none). In v2,
    every thread's buffers of every size class: callers keep those of the cache's slabs."""
    if is_v2(umem):
        return [b for bufs in v2_thread_caches(umem).values() for b in bufs]
    for slot, c in ptc_slots(umem):
        if c.addr == cache.addr and why_none(umem, cache) is None:
            return [b for tp in thread_pointers(umem.session) for b in chain(umem, c, slot, tp)]
    return []


def tls_block(umem) -> int | None:
    """The thread-pointer offset of libumem's static TLS block (mdbpy/symbols/tls.py: a
    shared libumem's TPOFF64 slots, or the executable's PT_TLS when it is linked in)."""
    key = "umem_tls_block"
    if key not in umem.session.cache:
        umem.session.cache[key] = tls.block_offset(umem.session, umem.obj)
    return umem.session.cache[key]


def v2_thread_caches(umem) -> dict[int, list[int]]:
    """{thread pointer: the free buffers its v2 per-thread cache holds} (bins' slots and the
    rounds of its magazines, every size class), bounded; cached per session state."""
    key = "umem_ptc_v2"
    got = umem.session.cache.get(key)
    if got is not None:
        return got
    got = {}
    block, sym = tls_block(umem), umem.obj.lookup("thread_ptc")
    if (block is not None and sym is not None and
            umem.readvar("umem_ptc_enabled", default=0)):
        for tp in thread_pointers(umem.session):
            try:
                ptc = umem.mem.read_ptr(tp + block + sym.addr)
            except ReadError:
                continue
            if ptc:
                got[tp] = _v2_buffers(umem, ptc, tp)
    umem.session.cache[key] = got
    return got


def _v2_buffers(umem, ptc: int, tp: int) -> list[int]:
    """The free buffers of one umem_ptc_t: slots[0 .. count) of each bin, and the rounds of
    each size class's loaded and previous magazines."""
    what = f"per-thread cache 0x{ptc:x} of thread pointer 0x{tp:x}"
    try:
        v = umem.view("umem_ptc", ptc)
    except ReadError as e:
        damage(umem.session).report(ptc, ptc + 8, f"{what}: {e}")
        return []
    round0 = umem.layouts["umem_magazine"].offset("mag_round")
    out: list[int] = []
    for b in v.bins:
        n = b.count
        if n > L.PTC_NSLOTS:
            damage(umem.session).report(b.addr, b.addr + 8, f"{what}: bin count {n} is "
                                        "unreasonable")
            continue
        out += b.slots[:n]
    for m in v.mags:
        for mag, n in ((m.loaded, m.rounds), (m.previous, m.prounds)):
            if not mag or n <= 0:
                continue
            if n > min(max(m.magsize, 0), MAX_MAGSIZE):
                damage(umem.session).report(m.addr, m.addr + 8, f"{what}: magazine 0x{mag:x} "
                                            f"with {n} rounds of {m.magsize}")
                continue
            try:
                out += umem.words(mag + round0, n)
            except ReadError as e:
                damage(umem.session).report(m.addr, m.addr + 8, f"{what}: {e}")
    return [b for b in out if b]
