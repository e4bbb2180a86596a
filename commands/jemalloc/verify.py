"""jemalloc's tcaches checked against its slabs, one Problem per region.

A tcache holds regions the program freed; jemalloc still counts them out of their slab (their
bitmap bit clear) or, for a large class, their extent in use. So a cached pointer that is free
in its slab, or that is no region's start at all, is damage (a stale or smashed stack slot),
and a pointer cached twice is a double free the tcache took without noticing (jemalloc 5.3
checks double frees only in debug builds). When jemalloc fills freed regions with 0x5a
(opt.junk), a freed region whose fill was written after free is one Problem too (junk.py).
"""

from __future__ import annotations

from mdbpy.heap.model import Problem

from .extents import extents
from .junk import overwritten
from .regions import regions
from .tcache import cached


def verify(alloc) -> list[Problem]:
    import numpy as np

    s, st = alloc.session, alloc.state
    r = regions(st, extents(s, st))
    c = cached(s, st)
    out = [Problem(f"tcache 0x{t:x}" + (f" bin {b}" if b is not None else "") + f": {why}",
                   "jemalloc", t) for t, b, why in c.bad]
    names = st.index2size
    uniq, first, counts = np.unique(c.ptr, return_index=True, return_counts=True)
    for p, k in zip(uniq[counts > 1].tolist(), first[counts > 1].tolist()):
        out.append(Problem(f"region cached twice (double free): tcache 0x{int(c.tcache[k]):x} "
                           f"bin {names[int(c.szind[k])]}", "jemalloc", p))
    at = np.minimum(np.searchsorted(r.base, uniq), max(len(r.base) - 1, 0))
    hit = (r.base[at] == uniq) if len(r.base) else np.zeros(len(uniq), bool)
    for p, k in zip(uniq[~hit].tolist(), first[~hit].tolist()):
        out.append(Problem(f"cached pointer is no region (tcache 0x{int(c.tcache[k]):x} bin "
                           f"{names[int(c.szind[k])]})", "jemalloc", p))
    freed = hit & ~r.out[at] if len(r.base) else hit
    for p, k in zip(uniq[freed].tolist(), first[freed].tolist()):
        out.append(Problem(f"region both free in its slab and cached (tcache "
                           f"0x{int(c.tcache[k]):x})", "jemalloc", p))
    wrong = np.flatnonzero(hit & (r.szind[at] != c.szind[first])) if len(r.base) else []
    for j in wrong:
        out.append(Problem(f"region of size {int(r.size[at[j]])} cached in bin "
                           f"{names[int(c.szind[first[j]])]}", "jemalloc", int(uniq[j])))
    cached_rows = np.zeros(len(r.base), bool)
    cached_rows[at[hit]] = True
    return out + overwritten(alloc, r, cached_rows)
