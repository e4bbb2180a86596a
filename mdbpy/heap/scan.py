"""Conservative pointer scanning: roots, the reference graph, and what is reachable.

mdb's leaky.c walks word by word with an explicit stack. Here the same algorithm is done in bulk:
every candidate's memory is read in large blocks, and kernel.c (compiled) passes once over each
block's words: those that fall in [lowest base, highest limit) are located with a granule
index over the sorted buffer starts (locate.py), giving the edges (source buffer -> target
buffer) of the whole heap; the roots' words give the first marks; and one breadth-first
search over the graph marks everything transitively reachable. The graph is kept: a second
search, made when liveness is first to be explained, keeps a predecessor for each buffer. A
pointer anywhere inside a buffer counts, as in mdb.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from mdbpy.errors import MdbError
from mdbpy.heap import kernel
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


class Graph:
    """The references between n candidates, as kernel.c's search walks them: a node per
    candidate (out-degree, and its one target or its first edge's row in dst), which nodes
    have edges at all, and the edges' targets ordered by source; with the roots in the order
    they were found."""

    def __init__(self, src, dst, n: int, roots):
        import numpy as np

        if len(src) > kernel.MAX_EDGES:
            raise MdbError(f"{len(src)} references between candidates: more than findleaks "
                           "can number")
        src = np.ascontiguousarray(src, np.int32)
        dst = np.ascontiguousarray(dst, np.int32)
        self.n, self.roots = n, np.ascontiguousarray(roots, np.int32)
        self.nodes, self.inner = np.empty(n, kernel.NODE), np.zeros((n + 63) // 64, np.uint64)
        # the scan emits edges in address order, so the sources come sorted (graph_nodes
        # says when they do not)
        if kernel.lib().graph_nodes(n, kernel.ptr(src), kernel.ptr(dst), len(src),
                                    kernel.ptr(self.nodes), kernel.ptr(self.inner)) < 0:
            order = np.argsort(src, kind="stable")
            src, dst = src[order], dst[order]
            self.inner[:] = 0
            kernel.lib().graph_nodes(n, kernel.ptr(src), kernel.ptr(dst), len(src),
                                     kernel.ptr(self.nodes), kernel.ptr(self.inner))
        self.dst = dst

    def search(self, with_pred: bool):
        """(marked, pred or None, reached): one breadth-first search from the roots, in
        their order (kernel.c). pred is -1 for a root, the node a buffer was first reached
        from, or -2 for a buffer nothing reaches; it costs a store per node, so it is made
        only when asked for."""
        import numpy as np

        n = self.n
        pred = np.empty(n, np.int32) if with_pred else None
        queue, seen = np.empty(n, np.int32), np.zeros((n + 63) // 64, np.uint64)
        reached = kernel.lib().bfs(n, kernel.ptr(self.nodes), kernel.ptr(self.dst),
                                   kernel.ptr(self.inner), kernel.ptr(self.roots),
                                   len(self.roots), kernel.ptr(pred), kernel.ptr(queue),
                                   kernel.ptr(seen))
        marked = np.unpackbits(seen.view(np.uint8), count=n, bitorder="little").view(bool)
        return marked, pred, reached

    def targets(self, rows):
        """The candidates that the candidates `rows` point to (with repeats)."""
        import numpy as np

        deg = self.nodes["deg"][rows].astype(np.int64)
        ref = self.nodes["ref"][rows].astype(np.int64)
        many = deg > 1
        starts, counts = ref[many], deg[many]
        at = np.repeat(starts - (np.cumsum(counts) - counts), counts) + np.arange(counts.sum())
        return np.concatenate([ref[deg == 1], self.dst[at]]).astype(np.int64)


@dataclass
class Reach:
    marked: object  # np.ndarray bool, per candidate
    root_slot: dict  # candidate index -> (slot address or None, root label) for root-marked
    stats: ScanStats
    graph: Graph | None = None  # None when there are no candidates
    late_roots: list = field(default_factory=list)  # undecided candidates made roots
    _pred: object = None

    @property
    def pred(self):
        """np.ndarray int32: each candidate's predecessor, -1 for root-marked, -2 unmarked
        (searched again, once, when first asked: ::whyalive needs it, findleaks does not)."""
        import numpy as np

        if self._pred is None:
            self._pred = (self.graph.search(True)[1] if self.graph is not None
                          else np.zeros(0, np.int32))
        return self._pred


def _word_view(addr: int, data: bytes):
    """The aligned 64-bit words of a block and the address of the first one."""
    import numpy as np

    skip = (-addr) % 8
    n = (len(data) - skip) // 8
    if n <= 0:
        return addr + skip, np.zeros(0, "<u8")
    return addr + skip, np.frombuffer(data, dtype="<u8", count=n, offset=skip)


def candidate_extents(table: BufferTable) -> list[tuple[int, int]]:
    """The candidates as few [start, end) ranges: runs of touching buffers merged."""
    return _merged_regions(table, gap=0)


def _merged_regions(table: BufferTable, gap: int = MERGE_GAP) -> list[tuple[int, int]]:
    """Runs of candidates with no gap of more than `gap` bytes between them, as [first base,
    furthest end) (kernel.c's island pass: one loop, no million-entry temporaries)."""
    import numpy as np

    n = len(table)
    if not n:
        return []
    base, ends = np.ascontiguousarray(table.base), np.ascontiguousarray(table.ends)
    first, hi = np.empty(n, np.int64), np.empty(n, np.uint64)  # only k entries are touched
    k = kernel.lib().loc_islands(kernel.ptr(base), kernel.ptr(ends), n, gap, kernel.ptr(first),
                                 kernel.ptr(hi))
    return list(zip(base[first[:k]].tolist(), hi[:k].tolist()))


def scan_regions(mem, table: BufferTable) -> list[tuple[int, int]]:
    """What reachability() reads of the candidates: runs less than MERGE_GAP apart (slack
    is cheaper to read than a seek), clipped to the readable mappings."""
    return clip_to_mappings(mem, _merged_regions(table))


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
    """(slots or None, target indexes, source indexes or None, [words, dismissals, misses,
    hits]) of the words of one block that point into a candidate (kernel.c's scan_words): with
    `sources`, the edges between distinct candidates the block's words make; without, every
    hit with its slot address."""
    import numpy as np

    waddr0, words = _word_view(addr, data)
    n = len(words)
    dst = np.empty(n, np.int32)
    src = np.empty(n, np.int32) if sources else None
    slots = None if sources else np.empty(n, np.uint64)
    counts = np.zeros(4, np.int64)
    got = kernel.lib().scan_words(loc.struct, kernel.ptr(words), n, waddr0, None, kernel.ptr(src),
                                  kernel.ptr(dst), kernel.ptr(slots), kernel.ptr(counts))
    if sources:
        return None, dst[:got].copy(), src[:got].copy(), counts.tolist()
    return slots[:got], dst[:got], None, counts.tolist()


def add_counts(stats: ScanStats, counts) -> None:
    """Add scan_words' counts (words, dismissals, misses, hits) to the statistics."""
    stats.words += counts[0]
    stats.dismissals += counts[1]
    stats.misses += counts[2]
    stats.hits += counts[3]


def scan_range(mem, loc: Locator, start: int, end: int, stats: ScanStats):
    """Yield (word addresses, target indexes) of the words in [start, end) that point into a
    candidate."""
    for baddr, data in mem.blocks(start, end, BLOCK, failed=stats.unreadable):
        slots, dst, _, counts = _scan_block(loc, baddr, data, False)
        add_counts(stats, counts)
        if len(slots):
            yield slots, dst


def _edge_block(mem, loc: Locator, start: int, end: int):
    """(src, dst, counts, unreadable) of one block of candidate memory: the edges between
    distinct candidates its words make (run in a worker thread: the kernel and the reads
    release the GIL). The block is scanned in place where the target lends a view of it (a
    core's mapped image), else read."""
    failed: list = []
    with mem.target.mapped(start, end - start) as view:
        if view is not None:
            _, dst, src, counts = _scan_block(loc, start, view, True)
            return [src], [dst], counts, failed
    src_parts, dst_parts, total = [], [], [0, 0, 0, 0]
    for baddr, data in mem.blocks(start, end, BLOCK, failed=failed):
        _, dst, src, counts = _scan_block(loc, baddr, data, True)
        src_parts.append(src)
        dst_parts.append(dst)
        total = [t + c for t, c in zip(total, counts)]
    return src_parts, dst_parts, total, failed


def _tasks(blocks) -> list[list[tuple[int, int]]]:
    """The blocks grouped, in order, into tasks of at most about BLOCK bytes: a libumem heap is
    thousands of small spans, and a thread-pool future per span (~50 us) cost more than
    scanning it."""
    tasks: list[list[tuple[int, int]]] = []
    size = 0
    for a, b in blocks:
        if not tasks or size + (b - a) > BLOCK:
            tasks.append([])
            size = 0
        tasks[-1].append((a, b))
        size += b - a
    return tasks


def _edge_blocks(mem, loc: Locator, blocks):
    """_edge_block() of each of a task's blocks."""
    return [_edge_block(mem, loc, a, b) for a, b in blocks]


def _edges(mem, loc: Locator, regions, stats: ScanStats, progress=None, prescan=None):
    """Every edge between candidates as (sources, targets) in address order: those the
    prescan's kept words make, and those of the regions' other memory, scanned block by
    block in SCAN_THREADS threads. Results are taken in block order, so the graph never
    depends on timing. On KeyboardInterrupt the blocks not started are dropped and the
    running ones finish."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    parts, regions = (prescan.edges(loc, regions, stats, SCAN_THREADS) if prescan
                      else ([], regions))
    blocks = [(a, min(a + BLOCK, end)) for start, end in mem.target.present(regions)
              for a in range(start, end, BLOCK)]
    total = sum(b - a for a, b in blocks) + 1
    done = 0
    tasks = _tasks(blocks)
    pool = ThreadPoolExecutor(SCAN_THREADS, thread_name_prefix="mdbpy-scan")
    try:
        futures = [pool.submit(_edge_blocks, mem, loc, t) for t in tasks]
        for task, f in zip(tasks, futures):
            for (a, b), (src, dst, counts, failed) in zip(task, f.result()):
                parts += [(a, s, d) for s, d in zip(src, dst)]
                add_counts(stats, counts)
                stats.unreadable += failed
                done += b - a
            if progress:
                progress(done, total)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    if not parts:
        return np.zeros(0, np.int32), np.zeros(0, np.int32), total
    parts.sort(key=lambda p: p[0])  # stable: a block's pieces keep their order
    _, srcs, dsts = (list(c) for c in zip(*parts))
    del parts
    # one column joined, and its pieces let go, before the other: a heap of millions of
    # references holds them twice only a column at a time
    esrc = np.concatenate(srcs)
    del srcs
    return esrc, np.concatenate(dsts), total


def reachability(mem, table: BufferTable, roots: RootSet, progress=None,
                 undecided: dict[int, str] | None = None, prescan=None) -> Reach:
    """Mark every candidate reachable from the roots (transitively). The `undecided`
    candidates ({index: label}) that nothing reaches are then made roots under their label
    (memory whose being unreached is no evidence of a leak), and the search is run again.
    A prescan (prescan.py) gives the words of the candidate memory the walks already read."""
    import numpy as np

    n = len(table)
    stats = ScanStats(buffers=n)
    if n == 0:
        return Reach(np.zeros(0, bool), {}, stats)
    loc = Locator(table.base, table.ends)

    # 1. edges between candidates, from their own contents
    esrc, edst, total = _edges(mem, loc, scan_regions(mem, table), stats, progress, prescan)

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

    # 3. one breadth-first search from the roots, in the order they were found
    rooted = np.fromiter(root_slot.keys(), dtype=np.int32, count=len(root_slot))
    graph = Graph(esrc, edst, n, rooted)
    del esrc, edst  # the graph keeps what it needs of them (its targets), not the sources
    marked, _, stats.follows = graph.search(False)
    late = sorted(i for i in (undecided or {}) if not marked[i])
    if late:
        for i in late:
            root_slot[i] = (None, undecided[i])
        graph.roots = np.concatenate([graph.roots, np.asarray(late, np.int32)])
        marked, _, stats.follows = graph.search(False)
    return Reach(marked, root_slot, stats, graph, late)
