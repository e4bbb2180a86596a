"""Which candidate buffer contains each of millions of addresses: the inner step of the scan.

A binary search (numpy's searchsorted) over a million buffer starts costs about twenty
dependent, cache-missing probes per address; it was the largest cost of findleaks. Here the
buffers' address range is cut into granules once, small enough that a granule holds the start
of at most a few buffers, and an index gives for each granule the last buffer starting before
it. An address then costs one shift, one index load and a few vectorized "does the next buffer
start at or below me?" steps.

The buffers may be spread over distant areas (brk heap, mmapped chunks, slab areas): they are
grouped into islands (runs without a gap of ISLAND_GAP), and only the islands are indexed, so
the index stays at about INDEX_PER_BUFFER entries per buffer whatever the address span. A table
whose buffers crowd more than MAX_STEPS starts into one granule is located by binary search.
"""

from __future__ import annotations

ISLAND_GAP = 1 << 20
INDEX_PER_BUFFER = 2
MAX_STEPS = 8


class Locator:
    """locate(values) -> (indexes, ok): the buffer of a sorted, non-overlapping table (base,
    end arrays) containing each value; ok is False for values in no buffer."""

    def __init__(self, base, ends):
        import numpy as np

        self.base, self.ends = base, ends
        n = self.n = len(base)
        self.steps = None
        if n == 0:
            self.lo = self.hi = 0
            return
        self.lo, self.hi = base[0], ends.max()  # no value outside [lo, hi) is in a buffer
        reach = np.maximum.accumulate(ends)  # robust to a buffer inside its predecessor
        cut = np.flatnonzero(base[1:] > reach[:-1] + np.uint64(ISLAND_GAP)) + 1
        first, last = np.concatenate(([0], cut)), np.concatenate((cut - 1, [n - 1]))
        self.ilo, self.ihi = base[first], reach[last]
        spans = self.ihi - self.ilo
        self.shift = np.uint64((int(spans.sum()) // (INDEX_PER_BUFFER * n)).bit_length())
        counts = (spans >> self.shift).astype(np.int64) + 1  # granules per island
        self.goff = np.concatenate(([0], np.cumsum(counts)[:-1]))
        island = np.repeat(np.arange(len(first)), last - first + 1)
        g = self.goff[island] + ((base - self.ilo[island]) >> self.shift).astype(np.int64)
        starts = np.bincount(g, minlength=int(counts.sum()))
        steps = int(starts.max())
        if steps > MAX_STEPS:
            return  # too crowded: binary search
        self.steps = steps
        # the last buffer starting before each granule (-1: none)
        self.before = (np.cumsum(starts) - starts - 1).astype(np.int32 if n < 1 << 31
                                                               else np.int64)

    def __call__(self, values):
        import numpy as np

        if self.n == 0:
            return np.zeros(len(values), np.int64), np.zeros(len(values), bool)
        if self.steps is None:
            idx = np.searchsorted(self.base, values, side="right").astype(np.int64) - 1
            ok = idx >= 0
        else:
            if len(self.ilo) == 1:
                k = np.zeros(len(values), np.int64)
            else:
                k = np.maximum(np.searchsorted(self.ilo, values, side="right") - 1, 0)
            ok = (values >= self.ilo[k]) & (values < self.ihi[k])
            g = self.goff[k] + ((values - self.ilo[k]) >> self.shift).astype(np.int64)
            g[~ok] = 0
            idx = self.before[g].astype(np.int64)
            last = self.n - 1
            for _ in range(self.steps):
                nxt = np.minimum(idx + 1, last)
                idx += (idx < last) & (self.base[nxt] <= values)
            ok &= idx >= 0
        idx[~ok] = 0
        ok &= values < self.ends[idx]
        return idx, ok
