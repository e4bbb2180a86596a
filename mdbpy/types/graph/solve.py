"""The typegraph's fixpoint: evidence at a buffer's start types it, typed buffers give evidence
through their own pointer members, until nothing changes; conflicting buffers stay unknown.

A buffer's evidence is a type at offset 0 (a typed pointer to its start), or at an interior
offset (a pointer into it). Evidence at offset 0 assigns the type when the buffer has none;
agrees when it is the buffer's type or a type the buffer's type starts with (a `struct
list_head *` to a buffer typed `struct conn`, whose first member is that list_head); upgrades
the buffer when the new type starts with the old one; and otherwise is a *conflict*. Interior
evidence must be consistent with the type the buffer gets: a member, or array element, of that
type at that offset. It assigns a type only through the buffer's size (containers.py): when the
buffer is still unknown and exactly one struct that fits the requests the buffer could have
served holds that type at that offset, the buffer is offered that struct (HOW container) as it
would be by a pointer to its start; every other evidence must then agree with it.

A conflicting buffer is excluded: it stays unknown and gives no evidence. When its type had
not yet given evidence to other buffers, it is excluded in place; when it had, those types
would be wrong, so the solver starts again with it excluded from the beginning, until a run
finds no new conflict of that kind: what it returns was derived without any buffer it calls
conflicting. Authoritative types (a C++ vtable, a user's ::istype) are never
excluded: evidence against them is ignored.

Propagation is a worklist, one step per typed buffer and per edge out of it (the edges come
from evidence.scan_heap): a linked list of a million nodes is a million steps, not a million
vectorized rounds. solve() takes them in Python and is the reference: the rules as written
here. The dcmds use compiled.py's solve_compiled, the same steps in the same order in C (forty
times faster on bench/typegraph_bench.py's heap), which the tests hold to this one on
fixtures and on random graphs.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

UNKNOWN, ROOT, PROPAGATED, VTABLE, HINT, CONTAINER = range(6)
HOW = {ROOT: "root pointer", PROPAGATED: "propagated", VTABLE: "vtable", HINT: "user hint",
       CONTAINER: "size and member"}
MAX_RUNS = 64


@dataclass
class Solution:
    tid: object  # int32 per buffer, -1 unknown
    how: object  # uint8 per buffer
    conflict: object  # bool per buffer
    runs: int = 1
    steps: int = 0  # typed buffers expanded, over all runs
    notes: list = field(default_factory=list)


def solve(catalog, sizes, edges, roots, fixed: dict[int, tuple[int, int]],
          containers=None) -> Solution:
    """fixed: {row: (tid, how)} for authoritative types (vtable, hint); containers: the
    buffers' request ranges and what they name (containers.Containers), None for no types by
    size."""
    import numpy as np

    n = len(sizes)
    size = sizes.tolist()
    start, soff = edges.start.tolist(), edges.soff.tolist()
    dst, doff = edges.dst.tolist(), edges.doff.tolist()
    rdst, rdoff, rtid = roots.dst.tolist(), roots.doff.tolist(), roots.tid.tolist()
    info = catalog.infos
    crange = containers.ranges().tolist() if containers is not None else [-1] * n
    poisoned: set[int] = set()
    steps = 0
    for run in range(1, MAX_RUNS + 1):
        tid = [-1] * n
        how = [UNKNOWN] * n
        gave = [False] * n  # its expansion gave evidence: excluding it needs a new run
        new_poison: set[int] = set()
        interior: list[tuple[int, int, int]] = []
        queue: deque[int] = deque()

        def conflict(b: int) -> None:
            if gave[b]:
                new_poison.add(b)  # types were derived from it: start again without it
            else:  # nothing came of its type yet: exclude it in place
                poisoned.add(b)
                tid[b], how[b] = -1, UNKNOWN

        def offer(b: int, t: int, why: int) -> None:
            if b in poisoned:
                return
            cur = tid[b]
            if cur == t:
                return
            ti = info[t]
            if cur < 0:
                if ti.poly:  # only the vtable says what a C++ object is
                    return
                if ti.size > size[b]:
                    conflict(b)
                    return
                tid[b], how[b] = t, why
                queue.append(b)
                return
            if t in info[cur].at0 or b in fixed:
                return
            if cur in ti.at0 and not ti.poly and ti.size <= size[b]:
                tid[b] = t  # the buffer is the larger type that starts with the old one
                queue.append(b)
                return
            conflict(b)

        def inside(b: int, off: int, t: int) -> None:
            """Interior evidence: checked at the run's end; an unknown buffer's container."""
            interior.append((b, off, t))
            if tid[b] < 0 and crange[b] >= 0 and b not in poisoned:
                key = containers.key(crange[b], off, t)
                k = -1 if key is None else containers.type_at(key)
                if k >= 0:
                    offer(b, k, CONTAINER)

        for b, (t, why) in fixed.items():
            tid[b], how[b] = t, why
            queue.append(b)
        for b, off, t in zip(rdst, rdoff, rtid):
            if off == 0:
                offer(b, t, ROOT)
            else:
                inside(b, off, t)
        while queue:
            b = queue.popleft()
            t = tid[b]
            if t < 0:
                continue
            ti = catalog.plan_of(t)
            plan, es, flex = ti.plan, ti.size, ti.flex
            if not plan and flex is None:
                continue
            steps += 1
            lim = es if flex is not None else size[b] // es * es
            for e in range(start[b], start[b + 1]):
                o = soff[e]
                if o < lim:
                    p = plan.get(o % es)
                elif flex is not None and o >= flex[0]:
                    p = flex[2].get((o - flex[0]) % flex[1])
                else:
                    continue
                if p is None:
                    continue
                gave[b] = True
                if doff[e] == 0:
                    offer(dst[e], p, PROPAGATED)
                else:
                    inside(dst[e], doff[e], p)
        for b, off, t in interior:
            cur = tid[b]
            if cur < 0 or b in fixed:
                continue
            ci = info[cur]
            if ci.flex is not None:
                if off < ci.size and not catalog.has_at(cur, off, t):
                    conflict(b)
            elif off >= size[b] // ci.size * ci.size or not catalog.has_at(cur, off % ci.size,
                                                                            t):
                conflict(b)
        new_poison -= fixed.keys()
        if not new_poison:
            break
        poisoned |= new_poison
    for b in new_poison:  # the last run's conflicts: unknown, though what they gave stays
        tid[b], how[b] = -1, UNKNOWN
    conflict_mask = np.zeros(n, bool)
    if poisoned:
        conflict_mask[list(poisoned)] = True
    out = Solution(np.array(tid, np.int32), np.array(how, np.uint8), conflict_mask, run, steps)
    if new_poison:
        out.notes.append(f"conflicts still appearing after {MAX_RUNS} runs: "
                         f"{len(new_poison)} buffer(s) typed from them may be wrong")
    return out
