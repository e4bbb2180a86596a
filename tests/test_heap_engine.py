"""The generic heap engine on a synthetic address space with a toy allocator: roots from data,
stacks and registers, transitive marking through interior pointers, coalescing, unreferenced
heads, and the liveness explanation."""

from __future__ import annotations

import struct

import pytest

from mdbpy.heap.leaks import explain, find_leaks
from mdbpy.heap.model import ALLOC, FREE, AllocRecord, Allocator, BufferTable
from mdbpy.session import Session
from mdbpy.target.base import Mapping, Thread
from mdbpy.target.synthetic import SyntheticTarget

HEAP = 0x7F0000100000
DATA = 0x555555558000
STACK = 0x7FFFFFFDE000


class ToyAllocator(Allocator):
    """Buffers of 0x40 bytes at HEAP + 0x40*k; states and stacks given by the test."""

    name = "toy"

    def __init__(self, session, states, stacks):
        super().__init__(session)
        self.states = states
        self.stacks = stacks

    def buffers(self):
        n = len(self.states)
        return BufferTable.from_columns([HEAP + 0x40 * k for k in range(n)], [0x40] * n,
                                        self.states, [0] * n, [0x9000 + k for k in range(n)],
                                        groups=["toy-64"])

    def heap_regions(self):
        return [(HEAP, HEAP + 0x10000)]

    def record(self, table, i):
        k = (int(table.base[i]) - HEAP) // 0x40
        return AllocRecord(stack=self.stacks[k], timestamp=100 - k)


def buf(k, off=0):
    return HEAP + 0x40 * k + off


def build():
    heap = bytearray(0x10000)
    data = bytearray(0x1000)
    stack = bytearray(0x2000)

    def put(mem, base, addr, value):
        struct.pack_into("<Q", mem, addr - base, value)

    put(data, DATA, DATA + 0x10, buf(0, 0x18))  # root -> A (interior pointer)
    put(heap, HEAP, buf(0, 8), buf(1))  # A -> B
    put(heap, HEAP, buf(1, 0x30), buf(2, 0x3F))  # B -> C (last byte)
    put(heap, HEAP, buf(4), buf(5))  # leaked D -> E
    put(heap, HEAP, buf(5), buf(4))  # E -> D (cycle)
    put(heap, HEAP, buf(6), buf(7))  # leaked F -> G: F is the unreferenced head
    put(stack, STACK, STACK + 0x1800, buf(8))  # live stack slot -> H
    put(stack, STACK, STACK + 0x100, buf(9))  # below rsp: dead stack, does not count
    put(heap, HEAP, buf(10), buf(11))  # a FREE buffer's contents are not references
    t = Thread(1234, "main", {"rsp": STACK + 0x1000, "rax": buf(12, 4), "rip": 0x401000})
    target = SyntheticTarget([
        (Mapping(DATA, DATA + 0x1000, "rw-p", 0x2000, "08:01", 7, "/usr/bin/prog"), data),
        (Mapping(HEAP, HEAP + 0x10000, "rw-p"), heap),
        (Mapping(STACK, STACK + 0x2000, "rw-p", path="[stack]"), stack),
    ], threads=[t])
    states = [ALLOC] * 14
    states[10] = FREE
    stacks = [(0x401000 + 0x10 * (k % 2),) for k in range(14)]
    return Session(target), states, stacks


def test_findleaks_marks_transitively_and_coalesces():
    session, states, stacks = build()
    report = find_leaks(session, [ToyAllocator(session, states, stacks)])
    leaked = sorted(leak.addr for leak in report.leaks)
    # 3 (no reference), 4/5 (cycle), 6/7 (chain), 9 (only below rsp), 11 (only from a free
    # buffer), 13 (nothing)
    assert leaked == [buf(k) for k in (3, 4, 5, 6, 7, 9, 11, 13)]
    heads = sorted(leak.addr for leak in report.leaks if leak.unreferenced)
    assert heads == [buf(k) for k in (3, 6, 9, 11, 13)]
    # coalesced by stack: odd and even buffers have different stacks
    by_stack = {g.stack: sorted(m.addr for m in g.members) for g in report.groups}
    assert by_stack == {(0x401000,): [buf(k) for k in (4, 6)],
                        (0x401010,): [buf(k) for k in (3, 5, 7, 9, 11, 13)]}
    # the representative is the oldest (largest k has the smallest timestamp here)
    reps = sorted(g.rep.addr for g in report.groups)
    assert reps == [buf(6), buf(13)]
    assert report.reach.stats.follows == 5  # 0, 1, 2, 8, 12 (free 10 is no candidate)


def test_explain_gives_the_chain_from_a_root():
    session, states, stacks = build()
    report = find_leaks(session, [ToyAllocator(session, states, stacks)])
    chain = explain(report, session.mem, buf(2, 5))
    # each hop: the slot of the pointer to the next (A+8 -> B, B+0x30 -> C), none after C
    assert chain == [(0, DATA + 0x10, "prog data"), (buf(0), buf(0, 8), "toy-64"),
                     (buf(1), buf(1, 0x30), "toy-64"), (buf(2), None, "toy-64")]
    assert explain(report, session.mem, buf(8))[0] == (0, STACK + 0x1800, "thread 1234 stack")
    assert explain(report, session.mem, buf(12))[0] == (0, None, "thread 1234 %rax")
    assert explain(report, session.mem, buf(3)) is None


@pytest.mark.parametrize("sizes", [(1000, 7, 3), (600, 500, 0), (0, 0, 5), (0, 0, 0)])
def test_candidates_merge_owners_in_address_order(sizes):
    """The one heap's table: every owner's rows in address order, each row knowing its owner
    and its row there (a few rows are sliced in, many scattered; both must agree)."""
    import numpy as np

    from mdbpy.heap.view import Candidates

    rng = np.random.default_rng(sum(sizes))
    bases = np.sort(rng.choice(1 << 30, sum(sizes), replace=False)).astype(np.uint64) * 32
    who = rng.permutation(np.repeat(np.arange(3), sizes))
    parts = [BufferTable.from_columns(bases[who == k], np.full(sizes[k], 16), [ALLOC] * sizes[k],
                                      ctl=bases[who == k] + np.uint64(k))
             for k in range(3)]
    c = Candidates([object()] * 3, parts)
    assert np.array_equal(c.table.base, bases)

    def owners(cands, want_bases, want_who):
        owner, local = cands.rows.of(np.arange(len(cands), dtype=np.int64))
        got = [(int(parts[o].base[j]), int(parts[o].ctl[j]) - int(parts[o].base[j]))
               for o, j in zip(owner.tolist(), local.tolist())]
        assert got == [(int(b), int(k)) for b, k in zip(want_bases, want_who)]
        for k in range(3):  # each owner's rows, as the report and undecided() ask for them
            rows, local = cands.rows.all_of(k, len(cands))
            assert rows.tolist() == np.flatnonzero(want_who == k).tolist()
            assert parts[k].base[local].tolist() == want_bases[rows].tolist()

    owners(c, bases, who)
    # findleaks drops a few rows (a stack region, an overlap): the rest keep their owners,
    # and dropping again counts past both
    keep = rng.random(len(bases)) > 0.1
    c2 = c.select(keep)
    owners(c2, bases[keep], who[keep])
    keep2 = rng.random(int(keep.sum())) > 0.2
    owners(c2.select(keep2), bases[keep][keep2], who[keep][keep2])
    assert np.array_equal(c.table.size, np.full(len(bases), 16, np.uint64))
    full = [k for k in range(3) if sizes[k]]
    if len(full) > 1:  # merged: where, and what kind; the rest of a row is its owner's
        assert (c.table.state, c.table.group, c.table.ctl) == (None, None, None)
    else:  # one owner's table is the table itself, not a copy
        assert c.table is parts[full[0] if full else 0]
