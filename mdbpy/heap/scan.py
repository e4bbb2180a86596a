"""Conservative pointer scanning: roots, the reference graph, and what is reachable.

mdb's leaky.c walks word by word with an explicit stack. Here the same algorithm is done in bulk:
every candidate's memory is read in large blocks and viewed as numpy words; words that fall in
[lowest base, highest limit) are located with a granule index over the sorted buffer starts
(locate.py), giving the edges (source buffer -> target buffer) of the whole heap at once; the roots' words
give the first marks; and one breadth-first search over the sparse graph (scipy) marks
everything transitively reachable, keeping a predecessor for each buffer so liveness can be
explained. A pointer anywhere inside a buffer counts, as in mdb.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from mdbpy.heap.locate import Locator
from mdbpy.heap.model import BufferTable

MERGE_GAP = 64 << 10  # candidates closer than this are read as one region
BLOCK = 4 << 20  # a read and a scan step (the filter's temporaries stay in the cache)
SCAN_THREADS = min(os.cpu_count() or 1, 4)


@dataclass
class Root:
    start: int
    end: int
    label: str  # e.g. 'a.out data', 'libc.so.6 data', 'thread 1234 stack'


@dataclass
class RootSet:
    ranges: list[Root] = field(default_factory=list)
    values: list[tuple[int, str]] = field(default_factory=list)  # (register value, label)


@dataclass
class ScanStats:
    buffers: int = 0
    words: int = 0  # potential pointers examined
    dismissals: int = 0  # outside [lowest base, highest limit)
    misses: int = 0  # inside the range but in no buffer
    hits: int = 0  # words that point into a buffer
    follows: int = 0  # buffers marked
    unreadable: list = field(default_factory=list)  # [(start, end)] that could not be read


@dataclass
class Reach:
    marked: object  # np.ndarray bool, per candidate
    pred: object  # np.ndarray int32: predecessor candidate, -1 for root-marked, -2 unmarked
    root_slot: dict  # candidate index -> (slot address or None, root label) for root-marked
    stats: ScanStats
    edges_src: object = None  # np.ndarray int32 (for referrer queries)
    edges_dst: object = None


def _word_view(addr: int, data: bytes):
    """The aligned 64-bit words of a block and the address of the first one."""
    import numpy as np

    skip = (-addr) % 8
    n = (len(data) - skip) // 8
    return addr + skip, np.frombuffer(data, dtype="<u8", count=max(n, 0), offset=skip)


def candidate_extents(table: BufferTable) -> list[tuple[int, int]]:
    """The candidates as few [start, end) ranges: runs of touching buffers merged."""
    return _merged_regions(table, table.base + table.size, gap=0)


def _merged_regions(table: BufferTable, ends, gap: int = MERGE_GAP) -> list[tuple[int, int]]:
    """Runs of candidates whose gaps are at most `gap` bytes, as [first base, last end)."""
    import numpy as np

    if not len(table):
        return []
    starts = table.base
    gaps = starts[1:] - ends[:-1]
    breaks = np.nonzero(gaps > gap)[0]
    firsts = np.concatenate(([0], breaks + 1))
    lasts = np.concatenate((breaks, [len(table) - 1]))
    return [(int(starts[a]), int(ends[b])) for a, b in zip(firsts, lasts)]


def scan_regions(mem, table: BufferTable) -> list[tuple[int, int]]:
    """What reachability() reads of the candidates: runs less than MERGE_GAP apart (slack
    is cheaper to read than a seek), clipped to the readable mappings."""
    return clip_to_mappings(mem, _merged_regions(table, table.base + table.size))


def _import_csgraph() -> None:
    import scipy.sparse.csgraph  # noqa: F401


def clip_to_mappings(mem, ranges) -> list[tuple[int, int]]:
    """The parts of [start, end) ranges that lie in readable mappings, so holes between
    mappings are not mistaken for unreadable memory."""
    import bisect

    maps = [m for m in mem.mappings() if m.readable]
    starts = [m.start for m in maps]
    out = []
    for start, end in ranges:
        i = max(bisect.bisect_right(starts, start) - 1, 0)
        while i < len(maps) and maps[i].start < end:
            a, b = max(start, maps[i].start), min(end, maps[i].end)
            if a < b:
                out.append((a, b))
            i += 1
    return out


def _scan_block(loc: Locator, addr: int, data: bytes, sources: bool):
    """(word addresses, target indexes, source indexes or None, (words, dismissals, misses,
    hits)) of the words of one block that point into a candidate."""
    import numpy as np

    waddr0, words = _word_view(addr, data)
    pos = np.nonzero((words >= loc.lo) & (words < loc.hi))[0]
    dst, ok = loc(words[pos])
    hits = int(ok.sum())
    counts = (len(words), len(words) - len(pos), len(pos) - hits, hits)
    pos, dst = pos[ok], dst[ok]
    slots = np.uint64(waddr0) + pos.astype(np.uint64) * np.uint64(8)
    if not sources:
        return slots, dst, None, counts
    src, sok = loc(slots)
    return slots[sok], dst[sok], src[sok], counts


def _count(stats: ScanStats, counts) -> None:
    stats.words += counts[0]
    stats.dismissals += counts[1]
    stats.misses += counts[2]
    stats.hits += counts[3]


def scan_range(mem, loc: Locator, start: int, end: int, stats: ScanStats):
    """Yield (word addresses, target indexes) of the words in [start, end) that point into a
    candidate."""
    for baddr, data in mem.blocks(start, end, BLOCK, failed=stats.unreadable):
        slots, dst, _, counts = _scan_block(loc, baddr, data, False)
        _count(stats, counts)
        if len(slots):
            yield slots, dst


def _edge_block(mem, loc: Locator, start: int, end: int):
    """(src, dst, counts, unreadable) of one block of candidate memory: the edges between
    distinct candidates its words make (run in a worker thread: numpy and the reads release
    the GIL)."""
    import numpy as np

    failed: list = []
    src_parts, dst_parts, total = [], [], [0, 0, 0, 0]
    for baddr, data in mem.blocks(start, end, BLOCK, failed=failed):
        _, dst, src, counts = _scan_block(loc, baddr, data, True)
        keep = src != dst
        src_parts.append(src[keep].astype(np.int32))
        dst_parts.append(dst[keep].astype(np.int32))
        total = [t + c for t, c in zip(total, counts)]
    return src_parts, dst_parts, total, failed


def _edges(mem, loc: Locator, regions, stats: ScanStats, progress=None):
    """Every edge between candidates, scanning the regions block by block in SCAN_THREADS
    threads; results are taken in block order, so the graph never depends on timing. On
    KeyboardInterrupt the blocks not started are dropped and the running ones finish."""
    from concurrent.futures import ThreadPoolExecutor

    blocks = [(a, min(a + BLOCK, end)) for start, end in regions
              for a in range(start, end, BLOCK)]
    total = sum(b - a for a, b in blocks) + 1
    src_parts, dst_parts, done = [], [], 0
    pool = ThreadPoolExecutor(SCAN_THREADS, thread_name_prefix="mdbpy-scan")
    try:
        futures = [pool.submit(_edge_block, mem, loc, a, b) for a, b in blocks]
        for (a, b), f in zip(blocks, futures):
            src, dst, counts, failed = f.result()
            src_parts += src
            dst_parts += dst
            _count(stats, counts)
            stats.unreadable += failed
            done += b - a
            if progress:
                progress(done, total)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return src_parts, dst_parts, total


def _csr_arrays(src, dst, n: int):
    """(data, indices, indptr) of the graph's adjacency matrix, built directly. The scan emits
    edges in address order, so the sources are already sorted and the rows need no sort; the
    breadth-first search does not care about duplicate edges or unsorted columns, so the
    coordinate-format conversion (which sorts and sums them: a third of the search's cost on a
    million buffers) is skipped."""
    import numpy as np

    if len(src) > 1 and np.any(src[1:] < src[:-1]):
        order = np.argsort(src, kind="stable")
        src, dst = src[order], dst[order]
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(src, minlength=n), out=indptr[1:])
    return np.ones(len(dst), np.float64), dst, indptr


def reachability(mem, table: BufferTable, roots: RootSet, progress=None) -> Reach:
    """Mark every candidate reachable from the roots (transitively), vectorized."""
    import threading

    import numpy as np

    # scipy takes ~0.3 s to import: do it while numpy (which releases the GIL) scans memory
    importer = threading.Thread(target=_import_csgraph, daemon=True)
    importer.start()
    n = len(table)
    stats = ScanStats(buffers=n)
    if n == 0:
        empty = np.zeros(0, bool)
        return Reach(empty, np.zeros(0, np.int32), {}, stats)
    loc = Locator(table.base, table.base + table.size)

    # 1. edges between candidates, from their own contents
    src_parts, dst_parts, total = _edges(mem, loc, scan_regions(mem, table), stats, progress)

    # 2. root marks: register values and root memory
    root_slot: dict[int, tuple[int | None, str]] = {}
    for value, label in roots.values:
        i = table.find(value)
        if i is not None:
            root_slot.setdefault(i, (None, label))
    for r in roots.ranges:
        for slots, dst in scan_range(mem, loc, r.start, r.end, stats):
            uniq, first = np.unique(dst, return_index=True)
            for i, j in zip(uniq.tolist(), first.tolist()):
                if i not in root_slot:
                    root_slot[i] = (int(slots[j]), r.label)
    if progress:
        progress(total, total)

    # 3. breadth-first search from a virtual root node n (duplicate edges are summed away)
    importer.join()
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import breadth_first_order

    rooted = np.fromiter(root_slot.keys(), dtype=np.int32, count=len(root_slot))
    src = np.concatenate(src_parts + [np.full(len(rooted), n, np.int32)])
    dst = np.concatenate(dst_parts + [rooted])
    graph = csr_matrix(_csr_arrays(src, dst, n + 1), shape=(n + 1, n + 1))
    # csgraph's input check would otherwise sort and sum the duplicate edges (astype(float)
    # dedups a non-canonical matrix); a breadth-first search visits the same nodes either way
    graph.has_canonical_format = True
    order, pred = breadth_first_order(graph, n, directed=True, return_predecessors=True)
    marked = np.zeros(n, bool)
    reached = order[order != n]
    marked[reached] = True
    p = np.full(n, -2, np.int32)
    p[reached] = pred[reached]
    p[p == n] = -1
    stats.follows = int(marked.sum())
    esrc = np.concatenate(src_parts) if src_parts else np.zeros(0, np.int32)
    edst = np.concatenate(dst_parts) if dst_parts else np.zeros(0, np.int32)
    return Reach(marked, p, root_slot, stats, esrc, edst)
