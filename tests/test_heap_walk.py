"""mdbpy/heap/walk.py, the one list walker every allocator uses: each way a list can be broken
gives its Break (why, the node whose link is at fault, where it led), and a ring is recovered
from its other end. The allocators' own damage tests (test_umem_damage, test_sim_damage,
test_ptmalloc_damage) check the same walks through real heaps and their wording."""

from __future__ import annotations

from mdbpy.heap.walk import Break, chain, ring


def singly(links: dict[int, int]):
    """read/nxt over {node: next} (a node missing from it is unreadable)."""
    return (lambda a: (a, links[a]) if a in links else None), (lambda n: n[1])


def test_a_chain_ends_at_null_and_breaks_where_it_is_wrong():
    read, nxt = singly({0x10: 0x20, 0x20: 0x30, 0x30: 0})
    assert chain(0x10, read, nxt, 10, "node") == ([(0x10, 0x20), (0x20, 0x30), (0x30, 0)], None)
    read, nxt = singly({0x10: 0x20, 0x20: 0x10})
    assert chain(0x10, read, nxt, 10, "node")[1] == Break("cycle at 0x10", 0x20, 0x10, "cycle")
    read, nxt = singly({0x10: 0x20, 0x20: 0x99})
    assert chain(0x10, read, nxt, 10, "node")[1] == Break(
        "unreadable node 0x99 (linked from 0x20)", 0x20, 0x99, "unreadable")
    read, nxt = singly({0x10: 0x20, 0x20: 0x30, 0x30: 0})
    nodes, broke = chain(0x10, read, nxt, 2, "node")
    assert len(nodes) == 2 and broke == Break("more than 2 nodes", 0x20, 0x30, "limit")
    nodes, broke = chain(0x10, read, nxt, 10, "node",
                         check=lambda a: "is odd" if a == 0x30 else None)
    assert len(nodes) == 2 and broke == Break("is odd", 0x20, 0x30, "check")


def test_a_singly_linked_ring_ends_at_its_start_and_a_null_link_is_a_break():
    read, nxt = singly({0x10: 0x20, 0x20: 0x30, 0x30: 0x10})
    nodes, broke = chain(0x10, read, nxt, 10, "arena", end=0x10)
    assert [a for a, _ in nodes] == [0x10, 0x20, 0x30] and broke is None
    read, nxt = singly({0x10: 0x20, 0x20: 0})
    nodes, broke = chain(0x10, read, nxt, 10, "arena", end=0x10)
    assert broke == Break("unreadable arena 0x0 (linked from 0x20)", 0x20, 0, "unreadable")


def doubly(nodes: dict[int, tuple[int, ...]]):
    return lambda a: nodes.get(a)


def test_a_ring_cut_in_the_middle_is_recovered_from_its_other_end():
    # anchor 0 <-> 1 <-> 2 <-> 3 <-> anchor, with 2's next smashed to point at 9
    good = {0xA0: (0x1, 0x3), 0x1: (0x2, 0xA0), 0x2: (0x9, 0x1), 0x3: (0xA0, 0x2)}
    assert ring(0xA0, doubly({**good, 0x2: (0x3, 0x1)}), 10, "slab") == ([0x1, 0x2, 0x3], [])
    nodes, breaks = ring(0xA0, doubly(good), 10, "slab")
    assert nodes == [0x1, 0x2, 0x3]
    assert breaks == [Break("unreadable slab 0x9 (linked from 0x2)", 0x2, 0x9, "unreadable")]


def test_a_ring_checks_back_links_and_owners():
    nodes = {0xA0: (0x1, 0x2, 0), 0x1: (0x2, 0xA0, 7), 0x2: (0xA0, 0x5, 7)}
    got, breaks = ring(0xA0, doubly(nodes), 10, "slab", owner=7)
    # 0x2 is found again from the anchor's side, where its next holds; its prev, the walk
    # back's next step, is a damage of its own
    assert got == [0x1, 0x2] and breaks == [
        Break("slab 0x2 does not link back to 0x1", 0x1, 0x2, "backlink"),
        Break("unreadable slab 0x5 (linked from 0x2)", 0x2, 0x5, "unreadable")]
    nodes = {0xA0: (0x1, 0x1, 0), 0x1: (0xA0, 0xA0, 8)}
    got, breaks = ring(0xA0, doubly(nodes), 10, "slab", owner=7)
    assert got == [] and breaks[0].cause == "owner"
    assert ring(0xA0, doubly({}), 10, "slab") == (
        [], [Break("unreadable anchor at 0xa0", None, 0xA0, "unreadable")])
