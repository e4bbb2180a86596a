"""One pass over a live heap: findleaks' scan fed by the blocks the allocators' walks read.

Walking glibc's chunks reads the whole heap (its headers lie between the chunks), and the
conservative scan then needs every byte of the same heap again; from a live process each read
is a copy through the kernel, so the heap would be read twice. Instead, while the buffer table
is being built, every large read the walks make is shown to a Prescan (AddressSpace.tap): it
keeps the block's words whose values could point into a candidate, with their addresses
(kernel.c's pick_words), and once the table exists they are resolved as the scan would have
resolved them had it read the block itself (scan_words over the kept words). The scan then
reads only the candidate memory no walk read.

Exact: a kept value is one in [lo, hi) of the writable mappings, and every candidate must lie
there (checked once the table exists; if one does not, all that was kept is dropped and the
scan reads everything, as without a Prescan). A word outside that range cannot point into a
candidate and is a dismissal either way, so the edges and the statistics equal the two-pass
scan's. Bounded: at most MAX_KEPT words are kept (16 bytes each); blocks read past that are
left for the scan to read again.
"""

from __future__ import annotations

import bisect
from collections import deque

from mdbpy.heap import kernel
from mdbpy.heap.scan import add_counts

MAX_KEPT = 4 << 20  # words kept at most (64 MiB of addresses and values), about
MAX_PENDING = 16  # blocks read and not yet picked, at most


class Prescan:
    """The words kept from the blocks the walks read, per block: (start, end, the future of
    its addresses and values, the addresses ascending); blocks never overlap (a block overlapping one kept is
    not kept: the walks' small re-reads around a header)."""

    def __init__(self, mem):
        maps = [m for m in mem.mappings() if m.readable and m.writable]
        self.lo = min((m.start for m in maps), default=0)
        self.hi = max((m.end for m in maps), default=0)
        self._maps = [(m.start, m.end) for m in maps]
        self._map_starts = [m.start for m in maps]
        self.parts: list[tuple[int, int, object]] = []  # (start, end, future of the pick)
        self._starts: list[int] = []
        self.kept = 0
        self._at = self._val = ()
        self._pool = None  # the worker that picks words, started with the first block
        self._pending = deque()  # its work not yet waited for, oldest first

    def feed(self, addr: int, data: bytes) -> None:
        """Keep what the scan needs of a block just read (AddressSpace.tap)."""
        end = addr + len(data)
        i = bisect.bisect_right(self._map_starts, addr) - 1
        if self.kept >= MAX_KEPT or i < 0 or end > self._maps[i][1]:
            return  # budget spent, or not (all) writable memory: no candidate lies there
        j = bisect.bisect_right(self._starts, addr)
        if (j > 0 and self.parts[j - 1][1] > addr) or (j < len(self.parts)
                                                       and self.parts[j][0] < end):
            return
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(1, thread_name_prefix="mdbpy-prescan")
        # picked on the other CPU while the walk goes on with the next block (kernel.c runs
        # without the GIL); the block's bytes are held until then
        picked = self._pool.submit(self._pick, addr, data)
        self.parts.insert(j, (addr, end, picked))
        self._starts.insert(j, addr)
        self._pending.append(picked)
        if len(self._pending) > MAX_PENDING:  # never more than so many blocks held
            self._pending.popleft().result()

    def _pick(self, addr: int, data: bytes):
        """(addresses, values) of the block's words in [lo, hi) (one worker thread: the
        scratch pair is its own)."""
        import numpy as np

        skip = (-addr) % 8
        words = np.frombuffer(data, "<u8", (len(data) - skip) // 8, skip)
        if len(self._at) < len(words):  # one scratch pair for every block, grown as needed
            self._at, self._val = np.empty((2, len(words)), np.uint64)
        m = kernel.lib().pick_words(kernel.ptr(words), len(words), addr + skip, self.lo,
                                    self.hi, kernel.ptr(self._at), kernel.ptr(self._val))
        self.kept += m
        return self._at[:m].copy(), self._val[:m].copy()

    def close(self) -> None:
        """Wait for the blocks being picked (their results stay in parts)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def edges(self, loc, regions, stats, threads: int = 1):
        """([(start, src, dst)], the parts of regions no kept block covers): the edges the
        kept words make inside the regions (the scan's), by kept block and region, counted
        into stats as the scan counts them; nothing when a candidate lies outside the range
        the words were kept for. The pieces are resolved in `threads` threads (kernel.c runs
        without the GIL), as the scan's blocks are."""
        from concurrent.futures import ThreadPoolExecutor

        self.close()
        if not self.parts or loc.n == 0 or loc.lo < self.lo or loc.hi > self.hi:
            return [], list(regions)
        pieces, rest = [], []
        for a, b in regions:
            cur = a
            j = max(bisect.bisect_right(self._starts, a) - 1, 0)
            while j < len(self.parts) and self.parts[j][0] < b:
                start, end, picked = self.parts[j]
                x, y = max(a, start), min(b, end)
                j += 1
                if x >= y:
                    continue
                if cur < x:
                    rest.append((cur, x))
                cur = y
                pieces.append((x, y, picked.result()))
            if cur < b:
                rest.append((cur, b))
        # the kept words are resolved once: let them go with `pieces` (up to 64 MiB) before
        # the graph is built, findleaks' peak
        self.parts, self._starts, self._at, self._val = [], [], (), ()
        with ThreadPoolExecutor(threads, thread_name_prefix="mdbpy-prescan") as pool:
            done = list(pool.map(lambda p: _resolve(loc, *p), pieces))
        starts = [p[0] for p in pieces]
        del pieces
        out = []
        for x, (words, src, dst, counts) in zip(starts, done):
            # the words not kept were outside [self.lo, self.hi), so outside the
            # candidates' range: dismissals, as the scan would have counted them
            misses, hits = int(counts[2]), int(counts[3])
            add_counts(stats, (words, words - misses - hits, misses, hits))
            out.append((x, src, dst))
        return out, rest


def _resolve(loc, x: int, y: int, picked):
    """(words in [x, y), sources, targets, the scan's counts) of the kept words of one block
    that lie in [x, y): scan_words over them, at their own addresses."""
    import numpy as np

    at, val = picked
    first = x + (-x) % 8
    words = max((y - first) // 8, 0)
    lo, hi = np.searchsorted(at, [first, first + 8 * words])
    src = np.empty(hi - lo, np.int32)
    dst = np.empty(hi - lo, np.int32)
    counts = np.zeros(4, np.int64)
    got = kernel.lib().scan_words(loc.struct, kernel.ptr(val[lo:hi]), hi - lo, 0,
                                  kernel.ptr(at[lo:hi]), kernel.ptr(src), kernel.ptr(dst),
                                  None, kernel.ptr(counts))
    return words, src[:got], dst[:got], counts
