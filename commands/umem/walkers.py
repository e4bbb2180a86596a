"""The libumem walkers: caches, buffers, bufctls, slabs, CPU caches, the hash table, the
transaction log, and the vmem arenas and their segments (mdb's libumem walkers, same names).

Buffers and bufctls come from contents.py (every slab's buffers minus its freelist and the
magazine layer), so `umem`, `freemem`, `bufctl` and `freectl` always partition a cache exactly.
Walks of a cache yield addresses in address order.
"""

from __future__ import annotations

from mdbpy.dcmd import Walker, walker
from mdbpy.errors import MdbError, ReadError

from mdbpy_commands.umem import layouts as L
from mdbpy_commands.umem import ptc
from mdbpy_commands.umem.contents import MAX_BUCKETS, cache_contents, cached_in
from mdbpy_commands.umem.damage import damage, walk_chain
from mdbpy_commands.umem.state import Umem, missing


def _caches(umem, addr, touch_only: bool = True) -> list:
    """The cache at addr, or every cache (but UMC_NOTOUCH ones, as mdb skips them)."""
    if addr is not None:
        umem.check_ready()
        return [umem.cache(addr)]
    return [c for c in umem.caches()
            if not (touch_only and c.cache_cflags & L.UMC_NOTOUCH)]


def buffers(session, addr, which: str):
    """Addresses of one kind from the cache(s): 'alloc' buffers, 'free' buffers, 'ctl'
    (bufctls of allocated buffers) or 'freectl' (bufctls of free buffers)."""
    umem = Umem.get(session)
    for c in _caches(umem, addr):
        ct = cache_contents(umem, c)
        if which == "alloc":
            yield from ct.bufs[ct.alloc].tolist()
        elif which == "free":
            yield from ct.bufs[~ct.alloc].tolist()
        elif c.cache_flags & L.UMF_HASH:
            sel = ct.alloc if which == "ctl" else ~ct.alloc
            yield from (x for x in ct.ctl[sel].tolist() if x)


@walker("umem_cache", "walk list of umem caches", enabled=missing)
def walk_umem_cache(session, addr):
    """Every cache, from umem_null_cache's cache_next list."""
    return iter(Umem.get(session).cache_addrs())


@walker("umem", "walk allocated umem buffers", enabled=missing)
def walk_umem(session, addr):
    """addr::walk umem: the allocated buffers of the cache at addr; ::walk umem: of every
    cache but UMC_NOTOUCH ones. Buffers in the magazine layer are free, not allocated."""
    return buffers(session, addr, "alloc")


@walker("freemem", "walk free umem buffers", enabled=missing)
def walk_freemem(session, addr):
    """Free buffers: on slab freelists and in the magazine layer."""
    return buffers(session, addr, "free")


@walker("bufctl", "walk allocated umem bufctls", enabled=missing)
def walk_bufctl(session, addr):
    """The bufctls of allocated buffers (UMF_HASH caches only: others have none)."""
    return buffers(session, addr, "ctl")


@walker("freectl", "walk free umem bufctls", enabled=missing)
def walk_freectl(session, addr):
    """The bufctls of free buffers (UMF_HASH caches only)."""
    return buffers(session, addr, "freectl")


@walker("bufctl_history", "walk the available history of a bufctl", needs_addr=True,
        enabled=missing)
def walk_bufctl_history(session, addr):
    """addr, then older records of the same buffer through bc_lastlog (the transaction log),
    while address, cache and slab agree and timestamps decrease."""
    if addr is None:
        raise MdbError("bufctl_history walk doesn't support global walks")
    umem = Umem.get(session)
    bc = umem.bufctl(addr)
    nxt = addr
    if bc.bc_lastlog:
        try:
            first = umem.bufctl(bc.bc_lastlog)
        except MdbError:
            first = None
        if first is not None and all(getattr(first, f) == getattr(bc, f) for f in (
                "bc_addr", "bc_cache", "bc_slab", "bc_timestamp", "bc_thread")):
            nxt = bc.bc_lastlog
    last_ts = 0
    for _ in range(1 << 16):
        if not nxt:
            return
        try:
            b = umem.bufctl(nxt)
        except ReadError:
            damage(session).report(addr, addr + 8, f"bufctl 0x{addr:x} history: unreadable "
                                   f"record 0x{nxt:x}")
            return
        if (b.bc_addr != bc.bc_addr or b.bc_cache != bc.bc_cache or b.bc_slab != bc.bc_slab
                or (last_ts and b.bc_timestamp >= last_ts)):
            return
        yield nxt
        last_ts = b.bc_timestamp
        nxt = b.bc_lastlog


@walker("umem_slab", "given a umem cache, walk its slabs", needs_addr=True, enabled=missing)
def walk_umem_slab(session, addr):
    if addr is None:
        raise MdbError("umem_slab doesn't support global walks")
    umem = Umem.get(session)
    return (s.addr for s in umem.slabs(umem.cache(addr)))


@walker("umem_slab_partial", "given a umem cache, walk its partially allocated slabs "
        "(min 1)", needs_addr=True, enabled=missing)
def walk_umem_slab_partial(session, addr):
    """From cache_freelist; when no slab is partial, the last full slab."""
    if addr is None:
        raise MdbError("umem_slab_partial doesn't support global walks")
    umem = Umem.get(session)
    return (s.addr for s in umem.slabs(umem.cache(addr), partial=True))


@walker("umem_cpu", "walk the umem CPU structures", enabled=missing)
def walk_umem_cpu(session, addr):
    """umem_cpus[0 .. umem_max_ncpus)."""
    umem = Umem.get(session)
    base = umem.mem.read_ptr(umem.addr_of("umem_cpus"))
    size = umem.layouts["umem_cpu"].size
    return iter([base + i * size for i in range(umem.ncpus)])


@walker("umem_cpu_cache", "given a umem cache, walk its per-CPU caches", needs_addr=True,
        enabled=missing)
def walk_umem_cpu_cache(session, addr):
    if addr is None:
        raise MdbError("umem_cpu_cache doesn't support global walks")
    umem = Umem.get(session)
    return iter([cc.addr for cc in umem.cpu_caches(umem.cache(addr))])


@walker("umem_hash", "given a umem cache, walk its allocated hash table", needs_addr=True,
        enabled=missing)
def walk_umem_hash(session, addr):
    """The bufctls on the hash chains, bucket by bucket (allocated and magazine buffers)."""
    if addr is None:
        raise MdbError("umem_hash doesn't support global walks")
    umem = Umem.get(session)
    c = umem.cache(addr)
    if not c.cache_flags & L.UMF_HASH:
        session.warn(f"cache {addr:x} doesn't have a hash table")
        return
    n = c.cache_hash_mask + 1
    if not 0 < n <= MAX_BUCKETS:
        raise MdbError(f"cache {addr:x}: hash mask {c.cache_hash_mask:#x} is unreasonable")
    limit = min(max(c.cache_buftotal, 1), MAX_BUCKETS) + 1
    for k, head in enumerate(umem.mem.words(c.cache_hash_table, n).tolist()):
        for bc in walk_chain(umem, f"cache 0x{addr:x} hash bucket {k}", head, "umem_bufctl",
                             "bc_next", limit, "bufctl"):
            yield bc.addr


MAX_LOG = 1 << 28  # bytes of one log (UMEM_LOGGING's default transaction log is 64k)
LOG_BLOCK = 1 << 20  # bytes of a log read at once (whole records)


def log_records(umem, header: int | None = None) -> list[tuple[int, object]]:
    """(address, record) of every used slot of a log, newest first (mdb's umem_log order)."""
    if header is None:
        header = umem.readvar("umem_transaction_log")
        if not header:
            raise MdbError("the umem transaction log is disabled (UMEM_LOGGING unset)")
    lh = umem.view("umem_log_header", header)
    size = L.audit_size(umem.stack_depth)
    per = lh.lh_chunksize // size  # mdb reads one slot less per chunk and misses records
    total = lh.lh_chunksize * lh.lh_nchunks
    if not 0 < total <= MAX_LOG or per <= 0:
        raise MdbError(f"log header at {header:x} is unreasonable")
    b = umem.layouts["umem_bufctl_audit"]
    step = max(LOG_BLOCK // size, 1) * size
    used = per * size
    out = []
    for i in range(lh.lh_nchunks):
        chunk = lh.lh_base + i * lh.lh_chunksize
        for off in range(0, used, step):  # a log may be MAX_LOG bytes: read in blocks
            data = umem.mem.read(chunk + off, min(step, used - off))
            for j in range(0, len(data), size):
                rec = b.from_bytes(data[j:j + size], chunk + off + j, umem.mem)
                if rec.bc_timestamp:
                    out.append((chunk + off + j, rec))
    out.sort(key=lambda r: -r[1].bc_timestamp)
    return out


@walker("umem_log", "walk the umem transaction log", enabled=missing)
def walk_umem_log(session, addr):
    """The transaction log (or the log whose header is at addr), newest first; slots never
    written (timestamp 0) are left out."""
    return iter([a for a, _r in log_records(Umem.get(session), addr)])


def by_thread(session, thread: int, which: str) -> list[tuple[int, object]]:
    """(bufctl, record) of the buffers `thread` allocated ('ctl') or freed ('freectl'),
    newest first."""
    umem = Umem.get(session)
    out = []
    for c in umem.caches():
        if not c.cache_flags & L.UMF_AUDIT:
            continue
        for b in buffers(session, c.addr, which):
            rec = umem.bufctl(b)
            if rec.bc_thread == thread:
                out.append((b, rec))
    out.sort(key=lambda r: -r[1].bc_timestamp)
    return out


@walker("allocdby", "given a thread, walk its allocated bufctls", needs_addr=True,
        enabled=missing)
def walk_allocdby(session, addr):
    if addr is None:
        raise MdbError("allocdby walk needs a thread")
    return iter([b for b, _r in by_thread(session, addr, "ctl")])


@walker("freedby", "given a thread, walk its freed bufctls", needs_addr=True, enabled=missing)
def walk_freedby(session, addr):
    if addr is None:
        raise MdbError("freedby walk needs a thread")
    return iter([b for b, _r in by_thread(session, addr, "freectl")])


# -- vmem -----------------------------------------------------------------------------------
@walker("vmem", "walk vmem structures in pre-fix order", enabled=missing)
def walk_vmem(session, addr):
    """Every arena, parents before children (from addr's arena on when given)."""
    arenas = [v.addr for v in Umem.get(session).arenas_prefix()]
    return iter(arenas[arenas.index(addr):] if addr in arenas else arenas)


@walker("vmem_postfix", "walk vmem structures in post-fix order", enabled=missing)
def walk_vmem_postfix(session, addr):
    return iter([v.addr for v in Umem.get(session).arenas_prefix(postfix=True)])


def segs_of(session, addr, vtype: int | None, name: str):
    if addr is None:
        raise MdbError(f"vmem_{name} does not support global walks")
    umem = Umem.get(session)
    if vtype is None:
        return iter(umem.seg_addrs(addr))
    return iter(umem.seg_columns(addr, (vtype,))["addr"].tolist())


@walker("vmem_seg", "given a vmem_t, walk all of its vmem_segs", needs_addr=True,
        enabled=missing)
def walk_vmem_seg(session, addr):
    return segs_of(session, addr, None, "seg")


@walker("vmem_alloc", "given a vmem_t, walk its allocated vmem_segs", needs_addr=True,
        enabled=missing)
def walk_vmem_alloc(session, addr):
    return segs_of(session, addr, L.VMEM_ALLOC, "alloc")


@walker("vmem_free", "given a vmem_t, walk its free vmem_segs", needs_addr=True,
        enabled=missing)
def walk_vmem_free(session, addr):
    return segs_of(session, addr, L.VMEM_FREE, "free")


@walker("vmem_span", "given a vmem_t, walk its spanning vmem_segs", needs_addr=True,
        enabled=missing)
def walk_vmem_span(session, addr):
    return segs_of(session, addr, L.VMEM_SPAN, "span")


def register_ptc_walkers(session, umem, module: str) -> None:
    """One `umem_ptc_<bufsize>` walker per umem_alloc_* cache a per-thread cache can hold."""
    reg = session.registry
    for slot, c in ptc.ptc_slots(umem):
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
        why = ptc.why_none(umem, cache)
        if why is not None:
            raise MdbError(f"{name}: {why}")
        tps = [addr] if addr is not None else ptc.thread_pointers(session)
        if ptc.is_v2(umem):
            held = ptc.v2_thread_caches(umem)
            return iter(cached_in(umem, cache, [b for tp in tps for b in held.get(tp, [])]))
        return iter([b for tp in tps for b in ptc.chain(umem, cache, slot, tp)])

    return walk
