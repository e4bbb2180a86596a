"""The regions each thread's tcache holds: freed by the program, still out of their slabs.

A tcache_t has a cache_bin_t per size class it caches (the small classes and the large ones up
to opt.tcache_max). A bin's cached pointers are a stack [stack_head, empty) whose end is kept as
its low 16 bits (low_bits_empty), so ncached = (low_bits_empty - (uint16_t)stack_head) / 8,
at most CACHE_BIN_NCACHED_MAX. Every tcache's bins are read at once, then every stack at once.
"""

from __future__ import annotations

from dataclasses import dataclass

from mdbpy.heap.gather import session_gather

from .layouts import CACHE_BIN_NCACHED_MAX
from .state import State, tcaches


@dataclass
class Cached:
    """The cached pointers: address, the size class of the bin holding it, and its tcache."""

    ptr: object
    szind: object
    tcache: object
    bad: list  # (tcache, bin, why): bins that could not be read or make no sense


def cached(session, st: State) -> Cached:
    """Every pointer held by every thread's tcache (cached per stop of the target)."""
    c = session.cache.get("jemalloc.cached")
    if c is None:
        c = session.cache["jemalloc.cached"] = _read(session, st)
    return c


def _read(session, st: State) -> Cached:
    import numpy as np

    tcs = tcaches(session, st)
    g = session_gather(session)
    tc, cb = st.binder["tcache_s"], st.binder["cache_bin_s"]
    bins = tc.field("bins")
    nb = bins.count or 0
    addrs = np.array([t.addr for t in tcs], np.uint64)
    rows, ok = g.rows(addrs + np.uint64(bins.offset), nb * cb.size)
    bad = [(int(a), None, "unreadable tcache_t") for a in addrs[~ok].tolist()]
    v = rows.reshape(-1).view(np.uint8).reshape(len(addrs) * nb, cb.size).copy().view(
        cb.dtype()).reshape(len(addrs), nb)
    head = v["stack_head"].astype(np.uint64)
    n = ((v["low_bits_empty"].astype(np.int64) - (head & np.uint64(0xffff)).astype(np.int64))
         & 0xffff) // 8
    n[~ok] = 0
    wrong = (n > CACHE_BIN_NCACHED_MAX) | ((head % np.uint64(8) != 0) & (n > 0))
    for t, b in zip(*np.nonzero(wrong)):
        bad.append((int(addrs[t]), int(b), f"bin {b}: stack_head 0x{int(head[t, b]):x} with "
                                           f"{int(n[t, b])} cached"))
    n[wrong] = 0
    t_idx, b_idx = np.nonzero(n)
    counts = n[t_idx, b_idx]
    total = int(counts.sum())
    first = head[t_idx, b_idx]
    rep = np.repeat(np.arange(len(counts)), counts)
    k = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    slots = first[rep] + k.astype(np.uint64) * np.uint64(8)
    ptrs, pok = g.u64(slots)
    for j in np.unique(rep[~pok]).tolist():
        bad.append((int(addrs[t_idx[j]]), int(b_idx[j]), "unreadable cache_bin stack "
                                                         f"0x{int(first[j]):x}"))
    return Cached(ptrs[pok], b_idx[rep][pok], addrs[t_idx][rep][pok], bad)
