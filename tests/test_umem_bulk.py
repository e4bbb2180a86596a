"""The bulk heap builder of bench/umem_bench.py (tests/umem_synth.py list_heap), checked small
against the dcmds: every other list node leaked, one group with its stack, verify clean, and
the buffers' records read in bulk equal the ones read one by one."""

from __future__ import annotations

from umem_synth import Run, exe_pc, list_heap

from mdbpy.heap.leaks import find_leaks


def test_list_heap_leaks_every_other_node():
    u, bufs = list_heap(61)
    r = Run(u)
    alloc = r.session.allocators()[0]
    report = find_leaks(r.session, [alloc])
    cache = [g for g in report.groups if g.group == "umem_alloc_2048"]
    assert len(cache) == 1
    assert sorted(m.addr for m in cache[0].members) == bufs[1::2].tolist()
    assert cache[0].rep.record.stack[3] == exe_pc("make_node")
    out, err = r("::umem_verify")
    assert out.splitlines()[1].split()[::2] == ["umem_alloc_2048", "clean"] and err == ""
    assert r("::walk umem_alloc_2048")[0].split() == [f"{b:#x}" for b in bufs.tolist()]
    # 61 buffers fill 7 slabs of 9: the last slab's two free buffers are on its freelist
    assert len(r("::walk freemem")[0].split()) == 2


def test_bulk_records_equal_one_by_one():
    u, _bufs = list_heap(20)
    r = Run(u)
    alloc = r.session.allocators()[0]
    t = alloc.candidates()
    idx = list(range(len(t)))
    assert alloc.records(t, idx) == [alloc.record(t, i) for i in idx]
