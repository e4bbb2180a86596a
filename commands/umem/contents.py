"""What a umem cache holds: every buffer of its slabs, which are allocated, and their bufctls.

A buffer is free when it is on its slab's freelist or in the magazine layer (rounds cached for
reuse); every other buffer of a slab is allocated. UMF_HASH caches keep a bufctl per buffer:
allocated ones are on the hash table's chains, free ones on the slab freelists, so each buffer
gets its bufctl address. Other caches keep only a free-list link inside free buffers and have
no bufctl for an allocated buffer (0).

The chains are followed for all slabs or buckets at once (one Gather step per link), so a cache
of hundreds of thousands of buffers costs a few numpy passes, not a Python loop per buffer.
Every link is checked (a freelist bufctl must name a buffer of its own slab, a hash bufctl one
that hashes to its bucket); a chain that leaves its slab or bucket, or never ends, is cut where
it went wrong, reported, and its slab's buffers are classified by the evidence that remains
(hash-chain membership, or the buftag's alloc/free stamp).
"""

from __future__ import annotations

from dataclasses import dataclass

from mdbpy.errors import ReadError

from mdbpy_commands.umem import layouts as L
from mdbpy_commands.umem.damage import damage
from mdbpy.heap.gather import session_gather
from mdbpy_commands.umem import ptc

MAX_SLABSIZE = 1 << 26  # libumem's slabs are at most a few pages per chunk
MAX_BUCKETS = 1 << 22
MAX_BROKEN = 64  # chains re-walked one by one to find where they went wrong


@dataclass
class Contents:
    cache: int
    bufs: object  # np.ndarray uint64, sorted
    alloc: object  # np.ndarray bool
    ctl: object  # np.ndarray uint64: bufctl address or 0
    in_mag: object  # np.ndarray bool: free in the magazine layer or a per-thread cache

    def allocated(self):
        return self.bufs[self.alloc]


def cache_contents(umem, cache) -> Contents:
    """The cache's buffers with state and bufctls (cached per session state)."""
    key = ("umem_contents", cache.addr)
    got = umem.session.cache.get(key)
    if got is None:
        got = _compute(umem, cache)
        umem.session.cache[key] = got
    return got


class _Chains:
    """Singly linked chains followed all at once. `value(elems)` gives what an element names
    (its buffer) and which elements could be read, `check(values, chain)` whether that is
    right for the chain it is on. An element or link that cannot be read cuts its chain
    there, reported as broken (never taken as a NULL link)."""

    def __init__(self, g, next_field, value, check, limit: int):
        self.g, self.next_field, self.value, self.check = g, next_field, value, check
        self.limit = limit

    def follow(self, heads):
        """(elements, values, chain ids, broken) where broken lists (chain id, element, why)
        for every chain cut short."""
        import numpy as np

        heads = np.asarray(heads, np.uint64)
        ids = np.nonzero(heads)[0]
        cur = heads[ids]
        elems, vals, owners, broken = [], [], [], []
        steps = 0
        while len(cur) and steps < self.limit:
            steps += 1
            v, read = self.value(cur)
            ok = read & self.check(v, ids)
            for i, e in zip(ids[~ok].tolist(), cur[~ok].tolist()):  # unreadable ones too
                broken.append((i, e, f"wild bufctl 0x{e:x}"))
            cur, ids, v = cur[ok], ids[ok], v[ok]
            elems.append(cur)
            vals.append(v)
            owners.append(ids)
            nxt, read = self.g.field(cur, self.next_field)
            for i, e in zip(ids[~read].tolist(), cur[~read].tolist()):
                broken.append((i, e, f"unreadable link in bufctl 0x{e:x}"))
            live = read & (nxt != 0)
            cur, ids = nxt[live], ids[live]
        if not elems:
            z = np.zeros(0, np.uint64)
            return z, z, np.zeros(0, np.int64), broken
        elems, vals, owners = (np.concatenate(x) for x in (elems, vals, owners))
        if len(cur):  # chains longer than any sound one: cycles, re-walked one at a time
            loops = np.unique(ids)
            keep = ~np.isin(owners, loops)
            parts = [(elems[keep], vals[keep], owners[keep])]
            for i in loops[:MAX_BROKEN].tolist():
                e, v = self._one(int(heads[i]), i, broken)
                parts.append((e, v, np.full(len(e), i, np.int64)))
            for i in loops[MAX_BROKEN:].tolist():
                broken.append((i, int(heads[i]), f"more than {self.limit} bufctls"))
            elems, vals, owners = (np.concatenate([p[k] for p in parts]) for k in range(3))
        return elems, vals, owners, broken

    def _one(self, head: int, chain: int, broken: list):
        """One chain, element by element, up to its first repeat."""
        import numpy as np

        seen: set[int] = set()
        es, vs = [], []
        cur = np.array([head], np.uint64)
        ids = np.array([chain], np.int64)
        while cur[0]:
            e = int(cur[0])
            if e in seen:
                broken.append((chain, e, f"cycle at 0x{e:x}"))
                break
            if len(es) >= self.limit:
                broken.append((chain, e, f"more than {self.limit} bufctls"))
                break
            v, read = self.value(cur)
            if not (read[0] and self.check(v, ids)[0]):
                broken.append((chain, e, f"wild bufctl 0x{e:x}"))
                break
            seen.add(e)
            es.append(e)
            vs.append(int(v[0]))
            cur, read = self.g.field(cur, self.next_field)
            if not read[0]:
                broken.append((chain, e, f"unreadable link in bufctl 0x{e:x}"))
                break
        return np.array(es, np.uint64), np.array(vs, np.uint64)


def _empty(addr: int) -> Contents:
    import numpy as np

    z = np.zeros(0, np.uint64)
    return Contents(addr, z, np.zeros(0, bool), z, np.zeros(0, bool))


def _geometry(umem, cache):
    """(chunk, chunks per slab at most, slabs) or None when the cache's own fields are
    garbage; slabs are (addresses, bases, chunk counts, freelist heads) arrays of the slabs
    whose fields are sound, read in bulk."""
    import numpy as np

    chunk, slabsize = cache.cache_chunksize, cache.cache_slabsize
    what = f"cache 0x{cache.addr:x}"
    if not (8 <= chunk <= slabsize <= MAX_SLABSIZE):
        damage(umem.session).report(cache.addr, cache.addr + umem.layouts["umem_cache"].size,
                                    f"{what}: unreasonable chunk size {chunk:#x} / slab size "
                                    f"{slabsize:#x}")
        return None
    per_slab = slabsize // chunk + 1
    sb = umem.layouts["umem_slab"]
    nodes, got, read = umem.slab_walk(cache)
    addrs = np.array(nodes, np.uint64)
    base, chunks, head = got["slab_base"], got["slab_chunks"], got["slab_head"]
    chunks = chunks.astype(np.int64)
    ok = read & (chunks > 0) & (chunks <= per_slab) & (base != 0)
    for a, n, b, r in zip(addrs[~ok].tolist(), chunks[~ok].tolist(), base[~ok].tolist(),
                          read[~ok].tolist()):
        damage(umem.session).report(a, a + sb.size, f"{what} slab 0x{a:x}: " + (
            f"{n} chunks at 0x{b:x} is unreasonable" if r else "unreadable"))
    return chunk, per_slab, (addrs[ok], base[ok], chunks[ok], head[ok])


def _compute(umem, cache) -> Contents:
    import numpy as np

    g = session_gather(umem.session)
    geo = _geometry(umem, cache)
    if geo is None:
        return _empty(cache.addr)
    chunk, per_slab, (slabs, base, nchunks, heads) = geo
    umem.debug(f"walking {cache.addr:x} ({cache.cstr('cache_name')}): {len(slabs)} slabs, "
               f"buf total is {cache.cache_buftotal}")
    dmg = damage(umem.session)
    what = f"cache 0x{cache.addr:x}"
    bc = umem.layouts["umem_bufctl"]
    hashed = bool(cache.cache_flags & L.UMF_HASH)
    total = int(nchunks.sum())
    idx = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(nchunks) - nchunks, nchunks)
    bufs = np.repeat(base, nchunks) + idx.astype(np.uint64) * np.uint64(chunk)
    slab_of = np.repeat(np.arange(len(slabs), dtype=np.int64), nchunks)
    order = _address_order(bufs, base, nchunks)
    bufs, slab_of = bufs[order], slab_of[order]
    if total > 1 and np.any(bufs[1:] == bufs[:-1]):
        first = int(bufs[1:][bufs[1:] == bufs[:-1]][0])
        dmg.report(first, first + chunk, f"{what}: slabs overlap at buffer 0x{first:x}")
        keep = np.concatenate(([True], bufs[1:] != bufs[:-1]))
        bufs, slab_of = bufs[keep], slab_of[keep]
        total = len(bufs)
    ctl = np.zeros(total, np.uint64)

    def locate(addrs):
        i = np.searchsorted(bufs, addrs)
        ok = i < total
        ok[ok] = bufs[i[ok]] == addrs[ok]
        return np.where(ok, i, 0), ok

    if hashed:
        def buf_of(b):
            return g.field(b, bc.field("bc_addr"))
    else:
        def buf_of(b):
            return b - np.uint64(cache.cache_bufctl), np.ones(len(b), bool)

    def in_slab(v, chain):
        i, ok = locate(v)
        return ok & (slab_of[i] == chain)

    # free buffers on the slab freelists
    fctl, fbuf, _own, broken = _Chains(g, bc.field("bc_next"), buf_of, in_slab,
                                       per_slab + 1).follow(heads)
    free = np.zeros(total, bool)
    i, _ok = locate(fbuf)
    free[i] = True
    umem.debug(f"slab freelists: {len(fbuf)} buffers")
    bad_slabs = sorted({k for k, _e, _w in broken})
    for k, _e, why in broken:
        b = int(base[k])
        dmg.report(b, b + int(nchunks[k]) * chunk, f"{what} slab 0x{int(slabs[k]):x} freelist: "
                   f"{why}")
    on_hash = None
    if hashed:
        ctl[i] = fctl
        if not _pooled_bufctls(umem, cache, g, bufs, ctl):
            on_hash = _hash_chains(umem, cache, g, bc, buf_of, locate, ctl, total)
    in_mag = np.zeros(total, bool)
    rounds = umem.magazine_rounds(cache)
    i, ok = locate(rounds)
    in_mag[i[ok]] = True
    umem.debug(f"magazine layer: {int(ok.sum())} buffers")
    cached = np.array(ptc.ptc_buffers(umem, cache), np.uint64)
    if len(cached):
        i, ok = locate(cached)
        in_mag[i[ok]] = True
        umem.debug(f"per-thread caches: {int(ok.sum())} buffers")
    if bad_slabs:
        _classify(umem, cache, g, np.isin(slab_of, bad_slabs), bufs, free, on_hash)
    return Contents(cache.addr, bufs, ~free & ~in_mag, ctl, in_mag)


def _address_order(bufs, base, nchunks):
    """The stable sort of bufs (each slab's buffers, slab after slab in list order): the
    slabs put in order of their bases, which sorts the buffers too when no two slabs
    overlap (a sort of 70,000 slabs, not of a million buffers); else a sort of them all."""
    import numpy as np

    first = np.cumsum(nchunks) - nchunks
    by_base = np.argsort(base, kind="stable")
    n = nchunks[by_base]
    order = np.repeat(first[by_base] - (np.cumsum(n) - n), n) + np.arange(len(bufs))
    got = bufs[order]
    if np.all(got[1:] > got[:-1]):
        return order
    return np.argsort(bufs, kind="stable")


def _pooled_bufctls(umem, cache, g, bufs, ctl) -> bool:
    """Every bufctl of a UMF_HASH cache is a buffer of its cache_bufctl_cache (the bufctl
    caches are plain caches, walked by their short slab freelists): read bc_cache and bc_addr
    of all their allocated records at once and keep those naming this cache's buffers,
    instead of chasing the hash chains (a table libumem has not rescaled has chains thousands
    long). True when that found every buffer's bufctl, so the chains need not be followed."""
    import numpy as np

    pool = cache.cache_bufctl_cache
    if not pool or pool == cache.addr or not len(bufs) or not cache.cache_flags & L.UMF_AUDIT:
        return False  # only audit records name their cache
    key = ("umem_bufctl_pool", pool)
    recs = umem.session.cache.get(key)
    if recs is None:
        try:
            pc = umem.cache(pool)
        except ReadError:
            return False
        if pc.cache_flags & L.UMF_HASH or pc.cache_bufctl_cache:
            return False  # a pool is a plain cache; anything else is not one
        addrs = cache_contents(umem, pc).allocated()
        b = umem.layouts["umem_bufctl_audit"]
        got, read = g.fields(addrs, b, ("bc_cache", "bc_addr"))
        owner, named = got["bc_cache"], got["bc_addr"]  # an unreadable record names no
        # buffer: the chains are followed then
        by_owner = np.argsort(owner[read], kind="stable")  # each cache's records together,
        # in address order: a slice per cache, not a pass over them all per cache
        recs = (owner[read][by_owner], addrs[read][by_owner], named[read][by_owner])
        umem.session.cache[key] = recs
    owner, addrs, named = recs
    lo, hi = np.searchsorted(owner, np.uint64(cache.addr), "left"), \
        np.searchsorted(owner, np.uint64(cache.addr), "right")
    addrs, named = addrs[lo:hi], named[lo:hi]
    i = np.searchsorted(bufs, named)
    ok = i < len(bufs)
    ok[ok] = bufs[i[ok]] == named[ok]
    if int(ok.sum()) != len(bufs):
        return False
    ctl[i[ok]] = addrs[ok]
    return True


def _hash_chains(umem, cache, g, bc, buf_of, locate, ctl, total):
    """Follow the hash table's chains; fills ctl for the allocated buffers and returns which
    buffers were found on a chain."""
    import numpy as np

    on_hash = np.zeros(total, bool)
    table = cache.cache_hash_table
    n = cache.cache_hash_mask + 1
    what = f"cache 0x{cache.addr:x}"
    dmg = damage(umem.session)
    if not table:
        return on_hash
    if not 0 < n <= MAX_BUCKETS:
        dmg.report(cache.addr, cache.addr + 8,
                   f"{what}: hash mask {cache.cache_hash_mask:#x} is unreasonable")
        return on_hash
    try:
        buckets = umem.mem.words(table, n)
    except ReadError as e:  # the table pointer itself is wild
        dmg.report(cache.addr, cache.addr + 8, f"{what}: hash table unreadable ({e})")
        return on_hash
    shift = np.uint64(min(cache.cache_hash_shift, 63))
    mask = np.uint64(cache.cache_hash_mask)

    def in_bucket(v, chain):
        _i, ok = locate(v)
        return ok & (((v >> shift) & mask).astype(np.int64) == chain)

    hctl, hbuf, _own, broken = _Chains(g, bc.field("bc_next"), buf_of, in_bucket,
                                       max(total, 1) + 1).follow(buckets)
    for k, _e, why in broken:
        slot = table + 8 * k
        dmg.report(slot, slot + 8, f"{what} hash bucket {k}: {why}")
    i, _ok = locate(hbuf)
    ctl[i] = hctl
    on_hash[i] = True
    return on_hash


def _classify(umem, cache, g, sel, bufs, free, on_hash) -> None:
    """Buffers of slabs whose freelist is damaged: free unless found on a hash chain (when
    the chains were followed), or as their buftag says (bxstat = bufctl ^ UMEM_BUFTAG_FREE);
    without either, they stay allocated (and their slab is among the untrusted regions)."""
    import numpy as np

    if on_hash is not None:
        free[sel] = ~on_hash[sel]
        return
    if not cache.cache_flags & L.UMF_BUFTAG:
        return
    idx = np.nonzero(sel & ~free)[0]
    tag = bufs[idx] + np.uint64(cache.cache_buftag)
    (bxstat, r1), (bufctl, r2) = g.u64(tag + np.uint64(16)), g.u64(tag + np.uint64(8))
    free[idx[r1 & r2 & ((bxstat ^ bufctl) == np.uint64(L.UMEM_BUFTAG_FREE))]] = True


def held_count(umem, cache) -> int | None:
    """How many of the cache's buffers per-thread caches hold (::umastat's `buf in ptc`), or
    None when the cache has no per-thread cache."""
    if cache.addr not in {c.addr for _s, c in ptc.ptc_slots(umem)} or ptc.why_none(umem, cache):
        return None
    bufs = ptc.ptc_buffers(umem, cache)
    return len(cached_in(umem, cache, bufs) if ptc.is_v2(umem) else bufs)


def cached_in(umem, cache, bufs) -> list[int]:
    """Of the buffers a per-thread cache holds (ptc_buffers), those of this cache."""
    import numpy as np

    got = np.array(bufs, np.uint64)
    return got[np.isin(got, cache_contents(umem, cache).bufs)].tolist()


def buffer_table(umem, caches, alloc_only: bool, oversize):
    """BufferTable.concat of one table per cache (its buffers with their states, or only the
    allocated ones; the bufctls of audit caches) and the oversize table, each column written
    once: the per-cache tables, their concatenation and its sort cost three passes over
    millions of rows, and as many fresh arrays. A cache's buffers are runs `chunk` apart
    (its slabs, cut where a buffer is left out); the runs of every cache and each oversize
    segment are put in address order (a sort of tens of thousands of runs), and each run
    copied where it falls (kernel.c's copy_runs). Runs that do not follow each other
    strictly (damaged slabs that overlap) are copied in concatenation order, and sorted as
    concat sorts them."""
    import numpy as np

    from mdbpy.heap import kernel
    from mdbpy.heap.model import ALLOC, FREE, KIND_BUFFER, BufferTable

    # per part: (bases, stride (0: a run per row), {column: a value per row}, {column: one
    # value for the part's rows})
    parts = []
    for k, c in enumerate(caches):
        ct = cache_contents(umem, c)
        sel = ct.alloc if alloc_only else slice(None)
        rows = {} if alloc_only else {"state": np.where(ct.alloc, ALLOC, FREE)}
        if c.cache_flags & L.UMF_AUDIT:
            rows["ctl"] = ct.ctl[sel]
        parts.append((ct.bufs[sel], c.cache_chunksize, rows, {
            "size": min(c.cache_bufsize, c.cache_chunksize), "group": k, "kind": KIND_BUFFER}))
    parts.append((oversize.base, 0, {"state": oversize.state, "ctl": oversize.ctl,
                                     "size": oversize.size, "kind": oversize.kind,
                                     "group": oversize.group + len(caches)},
                  {"size": 0, "group": 0, "kind": 0}))
    runs = []  # per part: the row each of its runs starts at (in the part)
    firsts, lasts, lens = [], [], []  # per run: its first and last buffer, its length
    for bases, stride, _rows, _one in parts:
        s = (np.flatnonzero(np.diff(bases) != np.uint64(stride)) + 1 if stride else
             np.arange(1, len(bases)))
        s = np.concatenate(([0], s)) if len(bases) else s
        ends = np.append(s[1:], len(bases)) if len(s) else s
        runs.append(s)
        firsts.append(bases[s])
        lasts.append(bases[ends - 1])
        lens.append(ends - s)
    firsts, lasts, lens = (np.concatenate(x) for x in (firsts, lasts, lens))
    to = np.cumsum(lens) - lens  # each run's first row, in concatenation order
    by_addr = np.argsort(firsts, kind="stable")
    if np.all(firsts[by_addr][1:] > lasts[by_addr][:-1]):
        to[by_addr] = np.cumsum(lens[by_addr]) - lens[by_addr]  # in address order
    n = int(lens.sum())
    table = {"base": np.empty(n, np.uint64), "ctl": np.zeros(n, np.uint64),
             "state": np.full(n, ALLOC, np.uint8)}
    order = np.argsort(to, kind="stable")  # the runs as the table holds them
    for name, t in (("size", np.uint64), ("group", np.int32), ("kind", np.uint8)):
        per_run = np.concatenate([np.full(len(s), one[name], t) for s, (*_p, one) in
                                  zip(runs, parts)])
        table[name] = np.repeat(per_run[order], lens[order])
    lib, r0 = kernel.lib(), 0
    for s, (bases, _stride, rows, _one) in zip(runs, parts):
        r1 = r0 + len(s)
        for name, values in dict(rows, base=bases).items():
            values = np.ascontiguousarray(values, table[name].dtype)
            lib.copy_runs(len(s), kernel.ptr(s), kernel.ptr(to[r0:r1]), kernel.ptr(lens[r0:r1]),
                          values.itemsize, kernel.ptr(values), kernel.ptr(table[name]))
        r0 = r1
    return BufferTable.from_columns(**table, groups=[(c.cstr("cache_name"), c.addr)
                                                     for c in caches] + oversize.groups)
