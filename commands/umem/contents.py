"""What a umem cache holds: every buffer of its slabs, which are allocated, and their bufctls.

A buffer is free when it is on its slab's freelist or in the magazine layer (rounds cached for
reuse); every other buffer of a slab is allocated. UMF_HASH caches keep a bufctl per buffer:
allocated ones are on the hash table's chains, free ones on the slab freelists, so each buffer
gets its bufctl address. Other caches keep only a free-list link inside free buffers and have
no bufctl for an allocated buffer (0).

The chains are followed for all slabs or buckets at once (one Gather step per link), so a cache
of hundreds of thousands of buffers costs a few numpy passes, not a Python loop per buffer.
"""

from __future__ import annotations

from dataclasses import dataclass

from mdbpy.errors import MdbError

from mdbpy_commands.umem import layouts as L
from mdbpy_commands.umem.gather import Gather


@dataclass
class Contents:
    cache: int
    bufs: object  # np.ndarray uint64, sorted
    alloc: object  # np.ndarray bool
    ctl: object  # np.ndarray uint64: bufctl address or 0
    in_mag: object  # np.ndarray bool: free in the magazine layer

    def allocated(self):
        return self.bufs[self.alloc]


def _follow(gather, heads, next_field, value, limit: int):
    """Follow every chain from `heads` at once; returns (elements, value(elements)) of all
    links. A chain longer than `limit` is corrupt (a cycle) and ends the walk with an error."""
    import numpy as np

    elems, vals = [], []
    cur = heads[heads != 0]
    steps = 0
    while len(cur):
        steps += 1
        if steps > limit:
            raise MdbError(f"a chain from 0x{int(cur[0]):x} is longer than {limit} "
                           "(corrupt or cyclic)")
        elems.append(cur)
        vals.append(value(cur))
        cur = gather.field(cur, next_field)
        cur = cur[cur != 0]
    if not elems:
        return np.zeros(0, np.uint64), np.zeros(0, np.uint64)
    return np.concatenate(elems), np.concatenate(vals)


def cache_contents(umem, cache) -> Contents:
    """The cache's buffers with state and bufctls (cached per session state)."""
    key = ("umem_contents", cache.addr)
    got = umem.session.cache.get(key)
    if got is None:
        got = _compute(umem, cache)
        umem.session.cache[key] = got
    return got


def _compute(umem, cache) -> Contents:
    import numpy as np

    g = umem.session.cache.get("umem_gather")
    if g is None:
        g = umem.session.cache["umem_gather"] = Gather(umem.mem)
    bc = umem.layouts["umem_bufctl"]
    chunk = cache.cache_chunksize
    hashed = bool(cache.cache_flags & L.UMF_HASH)
    slabs = umem.slabs(cache)
    per_slab = cache.cache_slabsize // chunk + 1 if chunk else 0
    base = np.array([s.slab_base for s in slabs], np.uint64)
    nchunks = np.array([min(max(s.slab_chunks, 0), per_slab) for s in slabs], np.int64)
    heads = np.array([s.slab_head for s in slabs], np.uint64)
    total = int(nchunks.sum())
    idx = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(nchunks) - nchunks, nchunks)
    bufs = np.repeat(base, nchunks) + idx.astype(np.uint64) * np.uint64(chunk)
    order = np.argsort(bufs, kind="stable")
    bufs = bufs[order]
    ctl = np.zeros(total, np.uint64)

    def locate(addrs):
        i = np.searchsorted(bufs, addrs)
        ok = i < total
        ok[ok] = bufs[i[ok]] == addrs[ok]
        return i[ok], ok

    # free buffers on the slab freelists
    if hashed:
        def buf_of(b):
            return g.field(b, bc.field("bc_addr"))
    else:
        def buf_of(b):
            return b - np.uint64(cache.cache_bufctl)
    fctl, fbuf = _follow(g, heads, bc.field("bc_next"), buf_of, per_slab + 1)
    free = np.zeros(total, bool)
    i, ok = locate(fbuf)
    free[i] = True
    if hashed:
        ctl[i] = fctl[ok]
        table = cache.cache_hash_table
        n = cache.cache_hash_mask + 1
        if table and 0 < n <= 1 << 26:
            buckets = umem.mem.words(table, n)
            hctl, hbuf = _follow(g, buckets, bc.field("bc_next"), buf_of, max(total, 1) + 1)
            i, ok = locate(hbuf)
            ctl[i] = hctl[ok]
    in_mag = np.zeros(total, bool)
    rounds = np.array(umem.magazine_rounds(cache), np.uint64)
    i, _ok = locate(rounds)
    in_mag[i] = True
    return Contents(cache.addr, bufs, ~free & ~in_mag, ctl, in_mag)
