"""The regions each thread's tcache holds: freed by the program, still out of their slabs.

A tcache_t has a cache_bin_t per size class it caches (the small classes and the large ones up
to opt.tcache_max). In 5.3 a bin's cached pointers are a stack [stack_head, empty) whose end
is kept as its low 16 bits (low_bits_empty), so ncached = (low_bits_empty -
(uint16_t)stack_head) / 8; in 5.2 a bin keeps ncached and the stack's end (avail), the
pointers at avail[-ncached .. -1], and its small and large bins are two arrays. Every
tcache's bins are read at once, then every stack at once.
"""

from __future__ import annotations

from dataclasses import dataclass

from mdbpy.heap.gather import session_gather

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


def _stacks(v, facts):
    """(first cached slot, count) of each cache_bin_t of a numpy record array: 5.3 keeps the
    stack's head and the low 16 bits of its end; 5.2 the count and the end (avail)."""
    import numpy as np

    if "stack_head" in v.dtype.names:
        head = v["stack_head"].astype(np.uint64)
        n = ((v["low_bits_empty"].astype(np.int64) - (head & np.uint64(0xffff)).astype(np.int64))
             & 0xffff) // 8
        return head, n
    n = v["ncached"].astype(np.int64)
    return v["avail"].astype(np.uint64) - (np.clip(n, 0, facts.ncached_max) * 8).astype(
        np.uint64), n


def _read(session, st: State) -> Cached:
    import numpy as np

    tcs = tcaches(session, st)
    g = session_gather(session)
    tc, cb = st.binder["tcache_s"], st.binder["cache_bin_s"]
    addrs = np.array([t.addr for t in tcs], np.uint64)
    bad, unreadable = [], set()
    cols = []  # (tcache index, szind, first slot, count) per cached bin, per array
    for name, first_szind in st.facts.bin_arrays:
        arr = tc.field(name)
        nb = arr.count or 0
        rows, ok = g.rows(addrs + np.uint64(arr.offset), nb * cb.size)
        unreadable |= set(addrs[~ok].tolist())
        v = rows.reshape(-1).view(np.uint8).reshape(len(addrs) * nb, cb.size).copy().view(
            cb.dtype()).reshape(len(addrs), nb)
        head, n = _stacks(v, st.facts)
        n[~ok] = 0
        wrong = (n < 0) | (n > st.facts.ncached_max) | ((head % np.uint64(8) != 0) & (n > 0))
        for t, b in zip(*np.nonzero(wrong)):
            k = int(b) + first_szind
            bad.append((int(addrs[t]), k, f"bin {k}: stack 0x{int(head[t, b]):x} with "
                                          f"{int(n[t, b])} cached"))
        n[wrong] = 0
        t_idx, b_idx = np.nonzero(n)
        cols.append((t_idx, b_idx + first_szind, head[t_idx, b_idx], n[t_idx, b_idx]))
    bad = [(int(a), None, "unreadable tcache_t") for a in sorted(unreadable)] + bad
    t_idx, b_idx, first, counts = (np.concatenate(c) for c in zip(*cols))
    total = int(counts.sum())
    rep = np.repeat(np.arange(len(counts)), counts)
    k = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    slots = first[rep] + k.astype(np.uint64) * np.uint64(8)
    ptrs, pok = g.u64(slots)
    for j in np.unique(rep[~pok]).tolist():
        bad.append((int(addrs[t_idx[j]]), int(b_idx[j]), "unreadable cache_bin stack "
                                                         f"0x{int(first[j]):x}"))
    return Cached(ptrs[pok], b_idx[rep][pok], addrs[t_idx][rep][pok], bad)
