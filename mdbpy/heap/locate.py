"""Which candidate buffer contains each of millions of addresses: the inner step of the scan.

A binary search over a million buffer starts costs about twenty dependent, cache-missing probes
per address. Instead the buffers' address range is cut into granules once, small enough that a
granule holds the start of a buffer or two, and an index gives for each granule the last buffer
starting before it: an address costs one shift, one index load and a probe or two. The lookup
itself runs in kernel.c (scan_words); this module builds the index it reads.

The buffers may be spread over distant areas (brk heap, mmapped chunks, slab areas): they are
grouped into islands (runs without a gap of ISLAND_GAP), and only the islands are indexed, so
the index stays at about INDEX_PER_BUFFER entries per buffer whatever the address span.
"""

from __future__ import annotations

from mdbpy.errors import MdbError
from mdbpy.heap import kernel

ISLAND_GAP = 1 << 20
INDEX_PER_BUFFER = 2
MAX_BUFFERS = (1 << 31) - 1  # the kernel numbers buffers with int32


class Locator:
    """The granule index of a sorted, non-overlapping table (base, end arrays, uint64), as
    kernel.c's `locator` (self.struct); it holds every array the struct points into."""

    def __init__(self, base, ends):
        import numpy as np

        n = self.n = len(base)
        if n > MAX_BUFFERS:
            raise MdbError(f"{n} candidate buffers: more than findleaks can number")
        k = kernel.lib()
        self.base = np.ascontiguousarray(base, np.uint64)
        self.ends = np.ascontiguousarray(ends, np.uint64)
        first = np.empty(max(n, 1), np.int64)
        ihi = np.empty(max(n, 1), np.uint64)
        nisl = k.loc_islands(kernel.ptr(self.base), kernel.ptr(self.ends), n, ISLAND_GAP,
                             kernel.ptr(first), kernel.ptr(ihi))
        self.first, self.ihi = first[:nisl].copy(), ihi[:nisl].copy()
        self.ilo = self.base[self.first] if n else np.zeros(1, np.uint64)
        spans = self.ihi - self.ilo
        self.shift = (int(spans.sum()) // (INDEX_PER_BUFFER * max(n, 1))).bit_length()
        # each island's granules and one closing entry
        sizes = (spans >> np.uint64(self.shift)).astype(np.int64) + 2
        self.goff = np.concatenate(([0], np.cumsum(sizes))).astype(np.int64)
        self.before = np.empty(int(self.goff[-1]), np.int32)
        self.lo = int(self.base[0]) if n else 0
        self.hi = int(self.ihi.max()) if n else 0  # no value outside [lo, hi) is in a buffer
        self.struct = kernel.LocatorStruct(
            kernel.ptr(self.base), kernel.ptr(self.ends), n, self.lo, self.hi,
            kernel.ptr(self.ilo), kernel.ptr(self.ihi), kernel.ptr(self.goff), nisl, self.shift,
            kernel.ptr(self.before))
        k.loc_fill(self.struct, kernel.ptr(self.first), kernel.ptr(self.before))
