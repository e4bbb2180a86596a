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
from mdbpy_commands.umem.gather import Gather
from mdbpy_commands.umem.ptc import ptc_buffers

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


def gather(umem) -> Gather:
    """The session's Gather (pages read stay cached until the target changes)."""
    g = umem.session.cache.get("umem_gather")
    if g is None:
        g = umem.session.cache["umem_gather"] = Gather(umem.mem)
    return g


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
    (its buffer), `check(values, chain)` whether that is right for the chain it is on."""

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
            v = self.value(cur)
            ok = self.check(v, ids)
            for i, e in zip(ids[~ok].tolist(), cur[~ok].tolist()):
                broken.append((i, e, f"wild bufctl 0x{e:x}"))
            cur, ids, v = cur[ok], ids[ok], v[ok]
            elems.append(cur)
            vals.append(v)
            owners.append(ids)
            nxt = self.g.field(cur, self.next_field)
            live = nxt != 0
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
            v = self.value(cur)
            if not self.check(v, ids)[0]:
                broken.append((chain, e, f"wild bufctl 0x{e:x}"))
                break
            seen.add(e)
            es.append(e)
            vs.append(int(v[0]))
            cur = self.g.field(cur, self.next_field)
        return np.array(es, np.uint64), np.array(vs, np.uint64)


def _empty(addr: int) -> Contents:
    import numpy as np

    z = np.zeros(0, np.uint64)
    return Contents(addr, z, np.zeros(0, bool), z, np.zeros(0, bool))


def _geometry(umem, cache):
    """(chunk, slab size, usable slabs) or None when the cache's own fields are garbage."""
    chunk, slabsize = cache.cache_chunksize, cache.cache_slabsize
    what = f"cache 0x{cache.addr:x}"
    if not (8 <= chunk <= slabsize <= MAX_SLABSIZE):
        damage(umem.session).report(cache.addr, cache.addr + umem.layouts["umem_cache"].size,
                                    f"{what}: unreasonable chunk size {chunk:#x} / slab size "
                                    f"{slabsize:#x}")
        return None
    per_slab = slabsize // chunk + 1
    good = []
    for s in umem.slabs(cache):
        if 0 < s.slab_chunks <= per_slab and s.slab_base:
            good.append(s)
        else:
            damage(umem.session).report(s.addr, s.addr + umem.layouts["umem_slab"].size,
                                        f"{what} slab 0x{s.addr:x}: {s.slab_chunks} chunks "
                                        f"at 0x{s.slab_base:x} is unreasonable")
    return chunk, per_slab, good


def _compute(umem, cache) -> Contents:
    import numpy as np

    geo = _geometry(umem, cache)
    if geo is None:
        return _empty(cache.addr)
    chunk, per_slab, slabs = geo
    umem.debug(f"walking {cache.addr:x} ({cache.cstr('cache_name')}): {len(slabs)} slabs, "
               f"buf total is {cache.cache_buftotal}")
    g = gather(umem)
    dmg = damage(umem.session)
    what = f"cache 0x{cache.addr:x}"
    bc = umem.layouts["umem_bufctl"]
    hashed = bool(cache.cache_flags & L.UMF_HASH)
    base = np.array([s.slab_base for s in slabs], np.uint64)
    nchunks = np.array([s.slab_chunks for s in slabs], np.int64)
    heads = np.array([s.slab_head for s in slabs], np.uint64)
    total = int(nchunks.sum())
    idx = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(nchunks) - nchunks, nchunks)
    bufs = np.repeat(base, nchunks) + idx.astype(np.uint64) * np.uint64(chunk)
    slab_of = np.repeat(np.arange(len(slabs), dtype=np.int64), nchunks)
    order = np.argsort(bufs, kind="stable")
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
            return b - np.uint64(cache.cache_bufctl)

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
        s = slabs[k]
        dmg.report(s.slab_base, s.slab_base + s.slab_chunks * chunk,
                   f"{what} slab 0x{s.addr:x} freelist: {why}")
    on_hash = np.zeros(total, bool)
    if hashed:
        ctl[i] = fctl
        on_hash = _hash_chains(umem, cache, g, bc, buf_of, locate, ctl, total)
    in_mag = np.zeros(total, bool)
    rounds = np.array(umem.magazine_rounds(cache), np.uint64)
    i, ok = locate(rounds)
    in_mag[i[ok]] = True
    umem.debug(f"magazine layer: {int(ok.sum())} buffers")
    cached = np.array(ptc_buffers(umem, cache), np.uint64)
    if len(cached):
        i, ok = locate(cached)
        in_mag[i[ok]] = True
        umem.debug(f"per-thread caches: {int(ok.sum())} buffers")
    if bad_slabs:
        _classify(umem, cache, g, np.isin(slab_of, bad_slabs), bufs, free, on_hash, hashed)
    return Contents(cache.addr, bufs, ~free & ~in_mag, ctl, in_mag)


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


def _classify(umem, cache, g, sel, bufs, free, on_hash, hashed) -> None:
    """Buffers of slabs whose freelist is damaged: free unless found on a hash chain (UMF_HASH
    caches), or as their buftag says (bxstat = bufctl ^ UMEM_BUFTAG_FREE); without either,
    they stay allocated (and their slab is among the untrusted regions)."""
    import numpy as np

    if hashed:
        free[sel] = ~on_hash[sel]
        return
    if not cache.cache_flags & L.UMF_BUFTAG:
        return
    idx = np.nonzero(sel & ~free)[0]
    tag = bufs[idx] + np.uint64(cache.cache_buftag)
    stamp = g.u64(tag + np.uint64(16)) ^ g.u64(tag + np.uint64(8))
    free[idx[stamp == np.uint64(L.UMEM_BUFTAG_FREE)]] = True
