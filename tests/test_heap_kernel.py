"""The compiled findleaks kernel (mdbpy/heap/kernel.c) against plain numpy answers: the locator
against a binary search on tables with islands, crowded granules and gaps; the edge scan's
sources, targets and counts; the breadth-first search against scipy's, predecessors and all."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mdbpy.heap.locate import ISLAND_GAP, Locator
from mdbpy.heap.model import BufferTable
from mdbpy.heap.scan import _scan_block


def table_from(sizes_gaps, start=0x10000000):
    """A sorted, non-overlapping table from (size, gap before) pairs."""
    base, size, at = [], [], start
    for sz, gap in sizes_gaps:
        at += gap
        base.append(at)
        size.append(sz)
        at += sz
    return np.array(base, np.uint64), np.array(size, np.uint64)


def expected_owner(base, size, values):
    """The buffer holding each value, by binary search (-1: none)."""
    i = np.searchsorted(base, values, side="right").astype(np.int64) - 1
    ok = (i >= 0) & (values < base[np.maximum(i, 0)] + size[np.maximum(i, 0)])
    return np.where(ok, i, -1)


def locate_all(loc, values):
    """The kernel's answer for each value, through the root-mode scan (every hit kept)."""
    words = np.asarray(values, np.uint64)
    slots, dst, _, counts = _scan_block(loc, 0x1000, words.tobytes(), False)
    out = np.full(len(words), -1, np.int64)
    out[(slots - np.uint64(0x1000)) // np.uint64(8)] = dst
    return out, counts


# buffers of 1 byte to 64 KiB, with gaps from none to several islands apart
pieces = st.lists(st.tuples(st.integers(1, 1 << 16),
                            st.sampled_from([0, 0, 0, 8, 100, 4096, ISLAND_GAP + 1, 1 << 32])),
                  min_size=1, max_size=300)


@settings(max_examples=150, deadline=None)
@given(pieces, st.data())
def test_locator_matches_binary_search(sizes_gaps, data):
    base, size = table_from(sizes_gaps)
    loc = Locator(base, base + size)
    # every buffer's first, last and one-past-last byte, the gaps, and far values
    probes = np.concatenate([base, base + size - np.uint64(1), base + size,
                             base - np.uint64(1), np.array([0, 2 ** 64 - 1], np.uint64)])
    extra = data.draw(st.lists(st.integers(int(base[0]) - 10, int((base + size).max()) + 10),
                               max_size=50))
    probes = np.concatenate([probes, np.array(extra, np.uint64)])
    got, counts = locate_all(loc, probes)
    want = expected_owner(base, size, probes)
    assert got.tolist() == want.tolist()
    inside = (probes >= base[0]) & (probes < (base + size).max())
    assert counts == [len(probes), int((~inside).sum()), int(inside.sum() - (want >= 0).sum()),
                      int((want >= 0).sum())]


# slabs: runs of equal buffers at a fixed stride (with a gap inside each slot: red zones),
# between single buffers of other sizes
slabs = st.lists(st.tuples(st.integers(1, 40), st.integers(1, 300), st.integers(0, 64),
                           st.sampled_from([0, 16, 4096, ISLAND_GAP + 1])), min_size=1,
                 max_size=12)


@settings(max_examples=150, deadline=None)
@given(slabs, st.data())
def test_locator_over_runs_matches_binary_search(runs, data):
    """The run index (a slab's objects located by a division) against a binary search: every
    object's first and last byte, the slack after each object inside its slot, the gaps."""
    pieces = []
    for count, size, slack, gap in runs:
        pieces.append((size, gap))
        pieces += [(size, slack)] * (count - 1)
    base, size = table_from(pieces)
    loc = Locator(base, base + size)
    ends = base + size
    probes = np.concatenate([base, ends - np.uint64(1), ends, ends + np.uint64(3),
                             base - np.uint64(1)])
    extra = data.draw(st.lists(st.integers(int(base[0]), int(ends.max())), max_size=60))
    probes = np.concatenate([probes, np.array(extra, np.uint64)])
    got, _ = locate_all(loc, probes)
    assert got.tolist() == expected_owner(base, size, probes).tolist()


def test_own_runs_make_no_run_arrays():
    """Where most buffers are runs of their own (a glibc heap: sizes vary, a few neighbours of
    one size join), each buffer is taken as its own run: no run array is made (five n-sized
    copies of the table), and every address is still located exactly; a slab table keeps its
    runs."""
    sizes = [(16 * (1 + i % 7), 16) for i in range(999)] + [(48, 16)] * 3
    base, size = table_from(sizes)
    loc = Locator(base, base + size)
    assert (loc.struct.nruns, loc.rfirst, loc.rbase is loc.base) == (len(base), None, True)
    probes = np.concatenate([base, base + size - np.uint64(1), base + size])
    got, _ = locate_all(loc, probes)
    assert got.tolist() == expected_owner(base, size, probes).tolist()
    base, size = table_from([(64, 0)] * 1000)
    loc = Locator(base, base + size)
    assert (loc.struct.nruns, len(loc.rfirst)) == (1, 1)


def test_crowded_granule_still_exact():
    """One huge buffer then thousands of tiny ones: the granules are large, so a granule holds
    the starts of hundreds of buffers, and the bisection inside it must find the right one."""
    base, size = table_from([(1 << 30, 0)] + [(8, 8)] * 5000)
    loc = Locator(base, base + size)
    probes = np.concatenate([base + np.uint64(3), base + np.uint64(9)])
    got, _ = locate_all(loc, probes)
    assert got.tolist() == expected_owner(base, size, probes).tolist()
    assert got[:5001].tolist() == list(range(5001))


def test_edges_between_distinct_buffers_in_slot_order():
    """A block spanning three buffers and a gap: each word pointing into another buffer is an
    edge from the buffer holding it; self-pointers, words in the gap and non-pointers are not."""
    base = np.array([0x1000, 0x1040, 0x1100], np.uint64)
    size = np.array([0x40, 0x40, 0x40], np.uint64)
    loc = Locator(base, base + size)
    words = np.zeros(0x180 // 8, np.uint64)
    words[0] = 0x1048  # buffer 0 -> 1
    words[1] = 0x1000  # buffer 0 -> itself: no edge
    words[(0x1040 - 0x1000) // 8] = 0x1100  # buffer 1 -> 2
    words[(0x1090 - 0x1000) // 8] = 0x1000  # in the gap: not a source
    words[(0x1138 - 0x1000) // 8] = 0x107F  # buffer 2 -> 1 (its last byte)
    words[(0x1108 - 0x1000) // 8] = 0x10A0  # buffer 2 -> the gap: a miss
    _, dst, src, counts = _scan_block(loc, 0x1000, words.tobytes(), True)
    assert list(zip(src.tolist(), dst.tolist())) == [(0, 1), (1, 2), (2, 1)]
    assert counts == [48, 42, 1, 5]


@settings(max_examples=100, deadline=None)
@given(slabs, st.data())
def test_edge_scan_matches_reference(runs, data):
    """The edge scan against the definition: for every word whose address lies in a buffer,
    an edge to the buffer its value points into, when that is another buffer; the block may
    start and end inside buffers, unaligned."""
    pieces = []
    for count, size, slack, gap in runs:
        pieces += [(size, gap)] + [(size, slack)] * (count - 1)
    base, size = table_from(pieces)
    ends = base + size
    loc = Locator(base, ends)
    lo, hi = int(base[0]), int(ends.max())
    start = data.draw(st.integers(max(lo - 64, 0), hi)) & ~7
    n = data.draw(st.integers(0, min((hi - start) // 8 + 8, 600)))
    values = data.draw(st.lists(st.one_of(st.integers(lo - 8, hi + 8),
                                          st.integers(0, 2 ** 64 - 1)), min_size=n, max_size=n))
    skew = data.draw(st.integers(0, 7))
    words = np.array(values, np.uint64)
    _, dst, src, counts = _scan_block(loc, start - skew, b"\0" * skew + words.tobytes(), True)
    slots = np.uint64(start) + np.arange(n, dtype=np.uint64) * np.uint64(8)
    owner, target = expected_owner(base, size, slots), expected_owner(base, size, words)
    keep = (owner >= 0) & (target >= 0) & (owner != target)
    assert list(zip(src.tolist(), dst.tolist())) == list(zip(owner[keep].tolist(),
                                                             target[keep].tolist()))
    ranged = (words >= np.uint64(lo)) & (words < np.uint64(hi))
    assert counts == [n, int((~ranged).sum()), int((ranged & (target < 0)).sum()),
                      int((ranged & (target >= 0)).sum())]


def test_unaligned_block_is_scanned_from_its_first_aligned_word():
    base = np.array([0x2000], np.uint64)
    loc = Locator(base, base + np.uint64(0x100))
    data = b"\xff" * 3 + np.array([0x2010, 0x2020], np.uint64).tobytes() + b"\0" * 5
    slots, dst, _, counts = _scan_block(loc, 0x1ffd, data, False)
    assert slots.tolist() == [0x2000, 0x2008] and dst.tolist() == [0, 0]
    assert counts[0] == 2


def test_empty_table_dismisses_everything():
    loc = Locator(np.zeros(0, np.uint64), np.zeros(0, np.uint64))
    _, dst, _, counts = _scan_block(loc, 0x1000, np.arange(64, dtype=np.uint64).tobytes(), False)
    assert len(dst) == 0 and counts == [64, 64, 0, 0]


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 400), st.data(), st.booleans())
def test_bfs_matches_scipy(n, data, presorted):
    """The mark (kernel.c's graph_nodes and bfs) against scipy's breadth-first search from a
    virtual node whose edges go to the roots, predecessors and all; on edges in source order
    (as the scan emits them), with single-target nodes and long chains, or in any order. And
    Graph.targets against the edges themselves."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import breadth_first_order

    from mdbpy.heap.scan import Graph

    m = data.draw(st.integers(0, 4 * n))
    src = np.array(data.draw(st.lists(st.integers(0, n - 1), min_size=m, max_size=m)), np.int32)
    dst = np.array(data.draw(st.lists(st.integers(0, n - 1), min_size=m, max_size=m)), np.int32)
    chain = data.draw(st.permutations(range(n)))[:data.draw(st.integers(0, n))]
    src = np.concatenate([src, np.array(chain[:-1], np.int32)])  # a linked list
    dst = np.concatenate([dst, np.array(chain[1:], np.int32)])
    if presorted:
        order = np.argsort(src, kind="stable")
        src, dst = src[order], dst[order]
    roots = data.draw(st.lists(st.integers(0, n - 1), max_size=5, unique=True))
    if chain:
        roots.append(chain[0])
    graph = Graph(src, dst, n, np.array(roots, np.int32))
    marked, pred, reached = graph.search(True)
    quick, none, again = graph.search(False)  # without predecessors: the same marks
    assert none is None and again == reached and quick.tolist() == marked.tolist()
    rows = np.array(sorted(set(data.draw(st.lists(st.integers(0, n - 1), max_size=n)))),
                    np.int64)
    assert sorted(graph.targets(rows).tolist()) == sorted(dst[np.isin(src, rows)].tolist())
    # scipy on the same rows: edges stably sorted by source, then the virtual root's
    order = np.argsort(src, kind="stable")
    s2 = np.concatenate([src[order], np.full(len(roots), n, np.int32)])
    d2 = np.concatenate([dst[order], np.array(roots, np.int32)])
    g = csr_matrix((np.ones(len(s2)), d2, np.concatenate(
        ([0], np.cumsum(np.bincount(s2, minlength=n + 1))))), shape=(n + 1, n + 1))
    g.has_canonical_format = True
    sorder, spred = breadth_first_order(g, n, directed=True, return_predecessors=True)
    want = np.full(n, -2, np.int32)
    hit = sorder[sorder != n]
    want[hit] = spred[hit]
    want[want == n] = -1
    assert reached == len(hit)
    assert pred.tolist() == want.tolist()
    assert marked.tolist() == (want != -2).tolist()


def test_too_many_buffers_is_a_clear_error(monkeypatch):
    from mdbpy.errors import MdbError
    from mdbpy.heap import locate

    monkeypatch.setattr(locate, "MAX_BUFFERS", 2)
    base = np.array([0, 16, 32], np.uint64)
    with pytest.raises(MdbError, match="3 candidate buffers"):
        Locator(base, base + np.uint64(8))


def test_too_many_edges_is_a_clear_error(monkeypatch):
    from mdbpy.errors import MdbError
    from mdbpy.heap import kernel
    from mdbpy.heap.scan import Graph

    monkeypatch.setattr(kernel, "MAX_EDGES", 2)
    edges = np.zeros(3, np.int32)
    with pytest.raises(MdbError, match="3 references between candidates"):
        Graph(edges, edges, 1, np.zeros(1, np.int32))


def test_buffer_table_round_trip_through_reachability():
    """reachability() on a tiny synthetic memory: a root slot reaches a chain of buffers, the
    rest is unmarked, and the predecessors spell the chain."""
    from mdbpy.heap.scan import Root, RootSet, reachability
    from mdbpy.memory import AddressSpace
    from mdbpy.target.synthetic import SyntheticTarget

    heap = np.zeros(0x100 // 8, np.uint64)
    heap[0] = 0x10040  # buffer 0 -> 2
    heap[0x40 // 8] = 0x10080  # buffer 2 -> 4
    root = np.array([0, 0x10000, 0], np.uint64)
    target = SyntheticTarget([(0x10000, heap.tobytes()), (0x20000, root.tobytes())])
    base = np.arange(0x10000, 0x10100, 0x20, dtype=np.uint64)
    table = BufferTable.from_columns(base, np.full(len(base), 0x20, np.uint64),
                                     np.ones(len(base), np.uint8))
    reach = reachability(AddressSpace(target), table,
                         RootSet([Root(0x20000, 0x20018, "data")]))
    assert np.flatnonzero(reach.marked).tolist() == [0, 2, 4]
    assert reach.pred[[0, 2, 4]].tolist() == [-1, 0, 2]
    assert reach.root_slot == {0: (0x20008, "data")}
    assert reach.stats.follows == 3


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(8, 64), st.booleans()), max_size=12),
       st.data())
def test_from_runs_expands_slabs(runs, data):
    """BufferTable.from_runs against a plain expansion: each run's buffers at their stride
    with the run's size, group and control offset; the free rows marked FREE, or left out."""
    from mdbpy.heap.model import ALLOC, CTL_NONE, FREE

    first, at, want = [], 0x10000, []
    for r, (count, stride, tracked) in enumerate(runs):
        first.append(at)
        for k in range(count):
            b = at + k * stride
            want.append((b, stride - 4, r, b + stride - 8 if tracked else 0))
        at += count * stride + 16
    total = len(want)
    free = sorted(data.draw(st.sets(st.integers(0, max(total - 1, 0)), max_size=total))
                  if total else [])
    args = (first, [s for _, s, _ in runs], [c for c, _, _ in runs],
            [s - 4 for _, s, _ in runs], list(range(len(runs))),
            [s - 8 if t else CTL_NONE for _, s, t in runs], [f"g{r}" for r in range(len(runs))])
    full = BufferTable.from_runs(*args, free=free)
    cols = list(zip(full.base.tolist(), full.size.tolist(), full.group.tolist(),
                    full.ctl.tolist()))
    assert cols == want
    assert full.state.tolist() == [FREE if i in free else ALLOC for i in range(total)]
    live = BufferTable.from_runs(*args, free=free, keep_free=False)
    assert live.base.tolist() == [w[0] for i, w in enumerate(want) if i not in free]
    assert live.ctl.tolist() == [w[3] for i, w in enumerate(want) if i not in free]
    assert set(live.state.tolist()) <= {ALLOC} and live.groups == full.groups


def test_missing_kernel_is_a_one_line_error(monkeypatch, tmp_path):
    """An install without a compiler has no kernel: findleaks says how to get one."""
    from mdbpy.errors import MdbError
    from mdbpy.heap import kernel

    monkeypatch.setattr(kernel, "_lib", None)
    monkeypatch.setattr(kernel, "__file__", str(tmp_path / "kernel.py"))
    with pytest.raises(MdbError, match=r"compiled scan kernel is missing: reinstall with a C "
                                       r"compiler present \(apt install gcc; pip install -e \.\)"):
        Locator(np.zeros(1, np.uint64), np.ones(1, np.uint64))
