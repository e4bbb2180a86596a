"""findleaks, the generic engine: candidates from the allocator, roots from the target, a
vectorized mark phase, and the leaks coalesced as mdb does (by kind, group and stack, the oldest
as representative). Allocator modules only supply the BufferTable and records; the dcmd formats
the report.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from mdbpy.heap.model import KIND_BUFFER, AllocRecord, Allocator, BufferTable
from mdbpy.heap.roots import collect_roots
from mdbpy.heap.scan import Reach, candidate_extents, reachability


@dataclass
class Leak:
    index: int  # in the candidate table
    addr: int
    size: int
    kind: int
    group: str
    ctl: int
    record: AllocRecord | None
    unreferenced: bool  # no other leaked buffer points to it: the head of a leaked structure


@dataclass
class LeakGroup:
    kind: int
    group: str
    stack: tuple[int, ...]
    members: list[Leak] = field(default_factory=list)  # the representative first

    @property
    def rep(self) -> Leak:
        return self.members[0]

    @property
    def count(self) -> int:
        return len(self.members)

    @property
    def bytes(self) -> int:
        return sum(m.size for m in self.members)


@dataclass
class LeakReport:
    allocator: Allocator
    table: BufferTable
    reach: Reach
    groups: list[LeakGroup]
    warnings: list[str]
    wall: float
    cpu: float

    @property
    def leaks(self) -> list[Leak]:
        return [m for g in self.groups for m in g.members]


class _StackKeys:
    """The coalescing stack of each allocation stack (its frames outside the allocator),
    memoized: the leaks of one site share a stack, and findleaks meets thousands of them."""

    def __init__(self, alloc: Allocator):
        self.alloc = alloc
        self.memo: dict[tuple, tuple] = {}
        # by the stack object's id first: allocators hand the records of one site the same
        # stack, which spares hashing it again; the caller keeps every record (and so every
        # stack) alive while it asks, so an id cannot be reused meanwhile
        self.by_id: dict[int, tuple] = {}

    def __call__(self, record: AllocRecord | None) -> tuple:
        if record is None or not record.stack:
            return ()
        key = self.by_id.get(id(record.stack))
        if key is None:
            stack = tuple(record.stack)
            key = self.memo.get(stack)
            if key is None:
                key = self.memo[stack] = tuple(pc for pc in stack
                                               if not self.alloc.stack_skip(pc))
            self.by_id[id(record.stack)] = key
        return key


def find_leaks(session, alloc: Allocator, progress=None) -> LeakReport:
    import numpy as np

    t0, c0 = time.perf_counter(), time.process_time()
    table = alloc.candidates()
    warnings: list[str] = [f"[{a:x}, {b:x}) not trusted: {why}" for a, b, why in alloc.untrusted()]
    # a candidate region that holds a thread's stack pointer is that thread's stack, not a leak
    sps = [t.regs["rsp"] for t in session.target.threads() if "rsp" in t.regs]
    if sps and len(table):
        drop = {i for i in (table.find(sp) for sp in sps) if i is not None
                and int(table.kind[i]) != KIND_BUFFER}
        if drop:
            keep = np.ones(len(table), bool)
            keep[list(drop)] = False
            table = table.select(keep)
    bad = table.overlaps()
    if bad is not None:
        a, b = bad
        warnings.append(f"[{int(table.base[a]):x}, {int(table.base[a] + table.size[a]):x}) and "
                        f"[{int(table.base[b]):x}, {int(table.base[b] + table.size[b]):x}): "
                        "overlapping candidates; the second is ignored")
        keep = np.ones(len(table), bool)
        keep[b] = False
        table = table.select(keep)
    # Heap memory is never a root: the allocator's heap regions cover its buffers, and the
    # other candidates (unaccounted mappings, brk remainder) are cut out one by one.
    regions = table.select(table.kind != KIND_BUFFER)
    exclude = alloc.heap_regions() + alloc.metadata_regions() + candidate_extents(regions)
    roots, w = collect_roots(session, exclude)
    warnings += w
    reach = reachability(session.mem, table, roots, progress)
    if reach.stats.unreadable:
        warnings.append(f"{len(reach.stats.unreadable)} unreadable range(s) skipped, first at "
                        f"0x{reach.stats.unreadable[0][0]:x}")

    leaked = np.nonzero(~reach.marked)[0]
    referenced = np.zeros(len(table), bool)
    if reach.edges_src is not None and len(reach.edges_src):
        from_leak = ~reach.marked[reach.edges_src]
        referenced[reach.edges_dst[from_leak]] = True

    groups: dict[tuple, LeakGroup] = {}
    records = alloc.records(table, leaked)
    stack_key = _StackKeys(alloc)
    cols = zip(leaked.tolist(), table.base[leaked].tolist(), table.size[leaked].tolist(),
               table.kind[leaked].tolist(), table.ctl[leaked].tolist(), (~referenced[leaked]).tolist(), records)
    for i, base, size, kind, ctl, unref, rec in cols:
        name = alloc.group_name(table, i)
        leak = Leak(i, base, size, kind, name, ctl, rec, unref)
        key = (kind, name if kind == KIND_BUFFER else "", stack_key(rec))
        g = groups.get(key)
        if g is None:
            groups[key] = g = LeakGroup(kind, name, key[2])
        g.members.append(leak)
    for g in groups.values():
        # the oldest is the representative; on a tie, the lowest address (table order)
        g.members.sort(key=lambda m: (m.record.timestamp if m.record and
                                      m.record.timestamp is not None else 0, m.addr))
    ordered = sorted(groups.values(), key=lambda g: (g.kind, g.group, g.rep.addr))
    return LeakReport(alloc, table, reach, ordered, warnings, time.perf_counter() - t0,
                      time.process_time() - c0)


def explain(report: LeakReport, addr: int) -> list[tuple[int, int | None, str]] | None:
    """The chain of references that keeps the buffer at addr alive, root first, as
    (buffer base or 0 for the root, slot address or None, label); None if it is leaked or not
    a candidate."""
    table, reach = report.table, report.reach
    i = table.find(addr)
    if i is None or not reach.marked[i]:
        return None
    chain = []
    seen = set()
    while i >= 0 and i not in seen:
        seen.add(i)
        chain.append(i)
        i = int(reach.pred[i])
    chain.reverse()
    slot, label = reach.root_slot.get(chain[0], (None, "?"))
    out = [(0, slot, label)]
    out += [(int(table.base[j]), None, report.allocator.group_name(table, j)) for j in chain]
    return out
