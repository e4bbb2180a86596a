"""findleaks, the generic engine: candidates from the allocator, roots from the target, a
vectorized mark phase, and the leaks coalesced as mdb does (by kind, group and stack, the oldest
as representative). Allocator modules only supply the BufferTable and records; the dcmd formats
the report.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from mdbpy.heap.model import (KIND_BUFFER, LEAKS_KEY, AllocRecord, Allocator, BufferTable,
                              RecordColumns)
from mdbpy.heap.prescan import Prescan
from mdbpy.heap.roots import collect_roots
from mdbpy.heap.scan import Reach, candidate_extents, reachability
from mdbpy.heap.view import AnonRegion, Candidates, HeapView


@dataclass
class Leak:
    index: int  # in its owner's candidate table
    addr: int
    size: int
    kind: int
    group: str
    ctl: int
    record: AllocRecord | None
    unreferenced: bool  # no other leaked buffer points to it: the head of a leaked structure


class _Leaked:
    """One owner's leaked buffers as columns, shared by their groups: Leak objects are made
    from them only when a report or walker asks for members (ten thousand leaks print as a
    few lines). index holds rows of the owner's own table."""

    def __init__(self, alloc: Allocator, table: BufferTable, index, names: list[str],
                 records: RecordColumns, unreferenced):
        self.alloc, self.table = alloc, table
        self.index, self.names, self.records = index, names, records
        self.addr, self.size = table.base[index], table.size[index]
        self.kind, self.ctl = table.kind[index], table.ctl[index]
        self.unreferenced = unreferenced

    def leak(self, k: int) -> Leak:
        return Leak(int(self.index[k]), int(self.addr[k]), int(self.size[k]), int(self.kind[k]),
                    self.names[k], int(self.ctl[k]), self.records.record(k),
                    bool(self.unreferenced[k]))


class LeakGroup:
    """Leaks coalesced on (kind, group, stack): rows of the leaked columns, the oldest (then
    the lowest address) first as the representative. alloc is the allocator (or the
    anonymous memory) they belong to, table its candidate table."""

    def __init__(self, leaked: _Leaked, rows, kind: int, group: str, stack: tuple[int, ...]):
        self.leaked, self.rows = leaked, rows
        self.alloc, self.table = leaked.alloc, leaked.table
        self.kind, self.group, self.stack = kind, group, stack
        self.rep = leaked.leak(int(rows[0]))
        self._members: list[Leak] | None = None

    @property
    def members(self) -> list[Leak]:
        if self._members is None:
            self._members = [self.rep] + [self.leaked.leak(k) for k in self.rows[1:].tolist()]
        return self._members

    @property
    def count(self) -> int:
        return len(self.rows)

    @property
    def bytes(self) -> int:
        return int(self.leaked.size[self.rows].sum())


@dataclass
class LeakReport:
    """One mark over the whole heap (mdbpy.heap.view): the candidates of every owner, what
    reached them, and the leaks coalesced per owner."""

    candidates: Candidates
    reach: Reach
    groups: list[LeakGroup]
    warnings: list[str]
    wall: float
    cpu: float
    anon: list[AnonRegion]  # the unclaimed anonymous regions (candidates)

    @property
    def table(self) -> BufferTable:
        return self.candidates.table

    @property
    def leaks(self) -> list[Leak]:
        return [m for g in self.groups for m in g.members]


def _distinct_rows(rows):
    """(distinct rows, each row's index among them) of a 2-D uint64 array. Rows are hashed to
    one word and the words sorted (numpy's row-wise unique sorts void records, ten times
    slower); a hash collision, checked for, falls back to it."""
    import numpy as np

    h = np.zeros(len(rows), np.uint64)
    with np.errstate(over="ignore"):
        for col in rows.T:
            h = (h ^ col) * np.uint64(0x100000001B3)
    _, first, which = np.unique(h, return_index=True, return_inverse=True)
    which = np.asarray(which).reshape(-1)
    distinct = rows[first]
    if not np.array_equal(distinct[which], rows):
        distinct, which = np.unique(rows, axis=0, return_inverse=True)
    return distinct, np.asarray(which).reshape(-1)


def _coalesce(leaked: _Leaked) -> list[LeakGroup]:
    """The leaks grouped as mdb does, by kind, group (for allocator buffers) and stack (its
    frames outside the allocator), each group ordered oldest first; column-wise, with Python
    work only per distinct stack and per group."""
    import numpy as np

    n = len(leaked.index)
    if not n:
        return []
    distinct, which = _distinct_rows(leaked.records.stacks)
    keys: dict[tuple, int] = {}
    coalesced = [tuple(pc for pc in row if pc and not leaked.alloc.stack_skip(pc))
                 for row in distinct.tolist()]
    stack_id = np.array([keys.setdefault(k, len(keys)) for k in coalesced], np.int64)
    stack_of = list(keys)
    names: dict[str, int] = {}
    kinds = leaked.kind.astype(np.int64)
    name_id = np.array([names.setdefault(nm, len(names)) for nm in leaked.names], np.int64)
    name_id[kinds != KIND_BUFFER] = -1  # other kinds coalesce whatever their names
    key = np.stack([kinds, name_id, stack_id[which]], axis=1)
    _, gid = _distinct_rows(key.astype(np.uint64))
    order = np.lexsort((leaked.addr, leaked.records.timestamp, gid))
    cuts = np.flatnonzero(np.diff(gid[order])) + 1
    groups = []
    for rows in np.split(order, cuts):
        k = int(rows[0])  # a group is named by its first member in address order
        groups.append(LeakGroup(leaked, rows, int(key[k, 0]), leaked.names[int(rows.min())],
                                stack_of[int(key[k, 2])]))
    return groups


def find_leaks(session, allocs: list[Allocator] | None = None, progress=None) -> LeakReport:
    """One mark over every allocator of the target (all found when allocs is None) and the
    anonymous memory they leave unclaimed; the leaks coalesced per owner, in mdb's order."""
    import numpy as np

    t0, c0 = time.perf_counter(), time.process_time()
    # from a live process, what the walks read is kept for the scan (one read of the heap)
    prescan = Prescan(session.mem) if session.target.reads_through_kernel else None
    session.mem.tap = prescan.feed if prescan else None
    try:
        view = HeapView(session, session.allocators() if allocs is None else allocs)
        # the heap is scanned after the table is built: the target may bring it in meanwhile
        heap = view.heap_regions()
        session.target.warm(heap)
        cands = view.candidates()
    finally:
        session.mem.tap = None
        if prescan is not None:
            prescan.close()
    table = cands.table
    warnings = [f"[{a:x}, {b:x}) not trusted: {why}" for alloc in view.allocs
                for a, b, why in alloc.untrusted()]
    # a candidate region that holds a thread's stack pointer is that thread's stack, not a leak
    sps = [t.regs["rsp"] for t in session.target.threads() if "rsp" in t.regs]
    if sps and len(table):
        drop = {i for i in (table.find(sp) for sp in sps) if i is not None
                and int(table.kind[i]) != KIND_BUFFER}
        if drop:
            keep = np.ones(len(table), bool)
            keep[list(drop)] = False
            cands = cands.select(keep)
            table = cands.table
    bad = table.overlaps()
    if bad is not None:
        a, b = bad
        warnings.append(f"[{int(table.base[a]):x}, {int(table.base[a] + table.size[a]):x}) and "
                        f"[{int(table.base[b]):x}, {int(table.base[b] + table.size[b]):x}): "
                        "overlapping candidates; the second is ignored")
        keep = np.ones(len(table), bool)
        keep[b] = False
        cands = cands.select(keep)
        table = cands.table
    # Heap memory is never a root: the claimed regions cover every allocator's buffers and
    # metadata, and the other candidates (unclaimed anonymous memory) are cut out one by one.
    regions = table.select(table.kind != KIND_BUFFER)
    exclude = view.claimed + candidate_extents(regions)
    roots, w = collect_roots(session, exclude)
    warnings += w
    reach = reachability(session.mem, table, roots, progress, view.undecided(cands), prescan)
    del prescan  # its kept words are resolved: free them before the report is made
    if reach.stats.unreadable:
        warnings.append(f"{len(reach.stats.unreadable)} unreadable range(s) skipped, first at "
                        f"0x{reach.stats.unreadable[0][0]:x}")

    leaked = np.nonzero(~reach.marked)[0]
    referenced = np.zeros(len(table), bool)  # by a leaked buffer
    if reach.graph is not None:
        referenced[reach.graph.targets(leaked)] = True
    groups: list[LeakGroup] = []
    owner, local_all = cands.rows.of(leaked)
    for k, alloc in enumerate(cands.owners):
        mine = owner == k
        rows, local = leaked[mine], local_all[mine]
        if not len(rows):
            continue
        part = cands.parts[k]
        groups += _coalesce(_Leaked(alloc, part, local, alloc.group_names(part, local),
                                    alloc.record_columns(part, local), ~referenced[rows]))
    groups.sort(key=lambda g: (g.kind, g.group, g.rep.addr))
    return LeakReport(cands, reach, groups, warnings, time.perf_counter() - t0,
                      time.process_time() - c0, view.anon.regions)



def cached_leaks(session, force: bool = False, progress=None):
    """(report, statistics, fresh): the session's last findleaks, or a new one (force: always
    a new one). An exception (Ctrl-C) leaves the cache as it was."""
    cached = session.cache.get(LEAKS_KEY)
    if cached is not None and not force:
        return cached[0], cached[1], False
    report = find_leaks(session, progress=progress)
    stats = statistics(report)
    session.cache[LEAKS_KEY] = (report, stats)
    return report, stats, True


def statistics(report: LeakReport) -> dict:
    """-v: leaky.c's statistics, taken when the scan ends (the clock runs from the start of the
    gathering, as mdb's). dups are the words that hit an already marked buffer (hits minus
    follows), so the four counts add up to the potential pointers, as in mdb; mdbpy adds the
    unclaimed anonymous memory: the regions that were candidates, and those scanned as roots
    because nothing reached them and nothing could decide them."""
    import resource

    st = report.reach.stats
    counts = dict(dismissals=st.dismissals, misses=st.misses,
                  dups=max(st.hits - st.follows, 0), follows=st.follows)
    maximum = sum(a.buffer_count() for a in report.candidates.owners)
    return dict(maximum_buffers=maximum, actual_buffers=len(report.table),
                potential_pointers=sum(counts.values()), **counts,
                anon_regions=len(report.anon),
                anon_bytes=sum(r.end - r.start for r in report.anon),
                anon_roots=[report.reach.root_slot[i][1] for i in report.reach.late_roots],
                peak_kb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                cpu_seconds=report.cpu, wall_seconds=report.wall)


def explain(report: LeakReport, mem, addr: int) -> list[tuple[int, int | None, str]] | None:
    """The chain of references that keeps the buffer at addr alive, root first, as
    (buffer base or 0 for the root, slot, label): the root's slot is where the first pointer
    is (None for a register), each buffer's the first aligned word in it that points into the
    next buffer (None for the last, or where no such word could be read); None if the buffer
    is leaked or not a candidate."""
    cands, reach = report.candidates, report.reach
    table = cands.table
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
    for j, nxt in zip(chain, chain[1:] + [None]):
        link = None if nxt is None else _link(mem, table, j, nxt)
        out.append((int(table.base[j]), link, cands.name(j)))
    return out


def _link(mem, table: BufferTable, src: int, dst: int) -> int | None:
    """The address of the first aligned word of candidate src that points into candidate dst,
    read in blocks (an anonymous region on the way may be large; unreadable pages are
    skipped)."""
    import numpy as np

    lo, hi = np.uint64(table.base[dst]), np.uint64(table.ends[dst])
    for at, data in mem.blocks(int(table.base[src]), int(table.ends[src])):
        skip = (-at) % 8
        words = np.frombuffer(data, "<u8", (len(data) - skip) // 8, skip)
        hit = np.flatnonzero((words >= lo) & (words < hi))
        if len(hit):
            return at + skip + int(hit[0]) * 8
    return None
