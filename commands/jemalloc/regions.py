"""jemalloc's regions as the program sees them, built column-wise from the checked extents.

A slab of bin b holds bin_infos[b].nregs regions of reg_size bytes from its first byte; its
bitmap has a bit per region, set while the region is free in the slab. A large extent in use is
one region at e_addr (cache-oblivious placement puts it a random cache line into the first
page) of sz_index2size(szind) bytes. A region out of its slab (or a large extent in use) may
still be free for the program: thread caches hold freed regions for reuse, and they are marked
FREE here from every tcache's stacks (tcache.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from .extents import Extents, active
from .state import State


@dataclass
class Regions:
    """The regions, sorted by address: base, size, szind (the size class), the edata_t
    address of the extent holding it, and whether the extent's bookkeeping has it out of the
    extent (`out`: a bitmap bit clear, or a large extent in use)."""

    base: object
    size: object
    szind: object
    edata: object
    out: object

    def __len__(self) -> int:
        return len(self.base)


def regions(st: State, ex: Extents) -> Regions:
    """Every region of every extent in use: slabs expanded through their bitmaps (numpy, no
    per-region Python), large extents one region each."""
    import numpy as np

    live = ex.select(active(ex))
    slabs = live.select(live.slab)
    big = live.select(~live.slab)
    reg = np.array([b[0] for b in st.bins], np.uint64)
    nregs = np.array([b[2] for b in st.bins], np.int64)
    count = nregs[slabs.szind]
    total = int(count.sum())
    which = np.repeat(np.arange(len(slabs)), count)
    starts = np.cumsum(count) - count
    idx = np.arange(total, dtype=np.int64) - np.repeat(starts, count)
    rsize = reg[slabs.szind][which]
    base = slabs.base[which] + idx.astype(np.uint64) * rsize
    words = slabs.bitmap[which, idx >> 6]
    free = ((words >> (idx & 63).astype(np.uint64)) & np.uint64(1)).astype(bool)
    sizes = np.array(st.index2size, np.uint64)
    cols = (np.concatenate((base, big.addr)),
            np.concatenate((rsize, sizes[big.szind])),
            np.concatenate((slabs.szind[which], big.szind)).astype(np.int32),
            np.concatenate((slabs.edata[which], big.edata)),
            np.concatenate((~free, np.ones(len(big), bool))))
    order = np.argsort(cols[0], kind="stable")
    return Regions(*(c[order] for c in cols))
