"""Which candidate buffer contains each of millions of addresses: the inner step of the scan.

A binary search over a million buffer starts costs about twenty dependent, cache-missing probes
per address. Instead the buffers are cut into runs (equal buffers at equal spacing: a slab's
objects), the runs' address range into granules small enough that a granule holds the start of
a run or two, and an index gives for each granule the last run starting before it: an address
costs one shift, one index load, a probe or two and a division, in tables small enough to stay
in the CPU's caches. The lookup itself runs in kernel.c (scan_words); this module builds the
index it reads.

The runs may be spread over distant areas (brk heap, mmapped chunks, slab areas): they are
grouped into islands (no gap of ISLAND_GAP inside one), and only the islands are indexed, so
the index stays at about INDEX_PER_RUN entries per run whatever the address span.
"""

from __future__ import annotations

from mdbpy.errors import MdbError
from mdbpy.heap import kernel

ISLAND_GAP = 1 << 20
INDEX_PER_RUN = 2
MAX_BUFFERS = (1 << 31) - 1  # the kernel numbers buffers with int32


class Locator:
    """The run and granule index of a sorted, non-overlapping table (base, end arrays, uint64),
    as kernel.c's `locator` (self.struct); it holds every array the struct points into."""

    def __init__(self, base, ends):
        import numpy as np

        n = self.n = len(base)
        if n > MAX_BUFFERS:
            raise MdbError(f"{n} candidate buffers: more than findleaks can number")
        k = kernel.lib()
        self.base = np.ascontiguousarray(base, np.uint64)
        self.ends = np.ascontiguousarray(ends, np.uint64)
        room = max(n, 1)
        # counted first, then made to measure. Where most buffers are runs of their own (a
        # glibc heap's chunks: a few neighbours of one size join) runs would save nothing, so
        # each buffer is taken as its own run and no run array is made at all: five n-sized
        # arrays, 40 bytes a buffer (160 MiB on four million chunks), whose first touch alone
        # cost a fresh process 0.05-0.1 s a million
        nruns = k.loc_runs(kernel.ptr(self.base), kernel.ptr(self.ends), n, 0, 0, 0, 0, 0)
        if 2 * nruns > n:
            nruns = n
            self.rbase, self.rend = self.base, self.ends
            self.rstride = self.rsize = self.rfirst = None
        else:
            self.rbase, self.rend, self.rstride, self.rsize = (np.empty(nruns, np.uint64)
                                                               for _ in range(4))
            self.rfirst = np.empty(nruns, np.int64)
            k.loc_runs(kernel.ptr(self.base), kernel.ptr(self.ends), n,
                       *(kernel.ptr(a) for a in (self.rbase, self.rend, self.rstride,
                                                 self.rsize, self.rfirst)))
        first = np.empty(room, np.int64)  # only the islands' entries are touched
        ihi = np.empty(room, np.uint64)
        nisl = k.loc_islands(kernel.ptr(self.rbase), kernel.ptr(self.rend), nruns, ISLAND_GAP,
                             kernel.ptr(first), kernel.ptr(ihi))
        first, self.ihi = first[:nisl].copy(), ihi[:nisl].copy()  # first: for loc_fill only
        self.ilo = self.rbase[first] if n else np.zeros(1, np.uint64)
        spans = self.ihi - self.ilo
        self.shift = (int(spans.sum()) // (INDEX_PER_RUN * max(nruns, 1))).bit_length()
        # each island's granules and one closing entry
        sizes = (spans >> np.uint64(self.shift)).astype(np.int64) + 2
        self.goff = np.concatenate(([0], np.cumsum(sizes))).astype(np.int64)
        self.before = np.empty(int(self.goff[-1]), np.int32)
        self.lo = int(self.base[0]) if n else 0
        self.hi = int(self.ihi.max()) if n else 0  # no value outside [lo, hi) is in a buffer
        self.struct = kernel.LocatorStruct(
            kernel.ptr(self.base), kernel.ptr(self.ends), n, self.lo, self.hi,
            *(kernel.ptr(a) for a in (self.rbase, self.rend, self.rstride, self.rsize,
                                      self.rfirst)), nruns,
            kernel.ptr(self.ilo), kernel.ptr(self.ihi), kernel.ptr(self.goff), nisl, self.shift,
            kernel.ptr(self.before))
        k.loc_fill(self.struct, kernel.ptr(first), kernel.ptr(self.before))
