"""The typegraph: the type of every heap buffer that typed pointers reach (mdb's ::typegraph,
done for Linux from DWARF).

The engine takes the heap as two columns, the start and size of the program's object in every
allocated buffer, from whichever allocators the session found, and a third, the bytes of the
allocator's own header before each object inside its buffer (libumem's malloc keeps one; 0
for most allocators): the dcmds get them from mdbpy.heap; this layer sits left of the heap
in docs/architecture.md and knows nothing of allocators. Objects are typed, from pointers to
their start; buffers are reported (whattype's placement names the buffer, its offsets are
the object's). It reads the heap's pointer words once (evidence.py), catalogues types
(catalog.py) and propagates them to a fixpoint (solve.py). The result answers `which type is
the buffer at addr, and which member is at this offset` (whattype), counts by type (by_type)
and by how a type was found (stats).

Modules: catalog.py (types reduced to their pointer words), evidence.py (heap edges, typed
globals, vtables), containers.py (a buffer's struct found by its size and a member, from the
requests each buffer could have served, which the dcmds hand in with the buffers), solve.py
(the fixpoint's rules, in Python: the reference), compiled.py (the same fixpoint with its
worklist in the compiled kernel, which the dcmds hand in: this layer does not import
mdbpy.heap). The session's graph is cached under GRAPH_KEY (the
session cache is emptied when the target changes); `cached(session)` returns it if built.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from mdbpy.types.graph.solve import CONTAINER, HINT, HOW, PROPAGATED, ROOT, UNKNOWN, VTABLE

GRAPH_KEY = ("types", "typegraph")

__all__ = ["TypeGraph", "GRAPH_KEY", "cached", "known_type", "Placement", "UNKNOWN", "ROOT",
           "PROPAGATED", "VTABLE", "HINT", "CONTAINER", "HOW"]


@dataclass
class Placement:
    """What the typegraph says of one address: the buffer holding it (base, size), its type
    (None when unknown), the element count, the offset into the object and the member there;
    head: the bytes of the allocator's header inside the buffer before the object (an address
    in it has a negative offset)."""

    addr: int
    base: int
    size: int
    type: str | None
    count: int = 1
    offset: int = 0
    member: str = ""
    how: str = ""
    conflict: bool = False
    head: int = 0

    @property
    def start(self) -> int:
        """Where the typed object starts: after the allocator's header in the buffer."""
        return self.base + self.head

    @property
    def spelled(self) -> str:
        """`struct node`, or `struct item [50]` for a buffer holding several."""
        if self.type is None:
            return "unknown"
        return self.type if self.count == 1 else f"{self.type} [{self.count}]"

    def phrase(self) -> str:
        """`0x18 bytes into struct conn (member buf)`, as ::whattype and ::whatis say it."""
        if self.type is None:
            return "of unknown type" + (" (conflicting evidence)" if self.conflict else "")
        if self.offset < 0:
            return f"{-self.offset:#x} bytes before {self.spelled} (in the allocator's header)"
        member = f" (member {self.member})" if self.member else ""
        return f"{self.offset:#x} bytes into {self.spelled}{member}"


class TypeGraph:
    """The types of one heap. Build with TypeGraph.build(); hint() adds a user's type for a
    buffer and propagates again (the heap's edges are kept, so that is cheap). With a kernel
    (mdbpy/heap/kernel.py's library) the fixpoint runs compiled (compiled.py), else in
    Python (solve.py); both give the same answer."""

    def __init__(self, space, base, size, kernel=None, requests=None, heads=None):
        import numpy as np

        from mdbpy.types.graph.catalog import Catalog

        self.space = space
        self.base = np.ascontiguousarray(base, np.uint64)
        self.size = np.ascontiguousarray(size, np.uint64)
        self.ends = self.base + self.size
        self.head = np.zeros(len(self.base), np.uint64) if heads is None else \
            np.ascontiguousarray(heads, np.uint64)
        self.starts = self.base - self.head  # the buffers' (sorted as the objects are)
        self.bufsize = self.size + self.head  # the buffers' sizes, header included
        self.catalog = Catalog.of(space)
        self.hints: dict[int, int] = {}  # row -> tid
        self.vtables: dict[int, int] = {}
        self.timings: dict[str, float] = {}
        self.kernel = kernel
        self.edges = self.roots = self.solution = None
        self.containers = None if requests is None else self._containers(requests)

    def _containers(self, requests):
        """The buffers' request ranges (lo, hi columns) and the session's candidate structs
        by size (listed from the DWARF only when a buffer first needs them)."""
        from mdbpy.types.graph.containers import Containers, SizedTypes

        return Containers(self.catalog, self.size, requests,
                          SizedTypes.of(self.space, self.catalog))

    @classmethod
    def build(cls, space, base, size, exclude=(), kernel=None, requests=None,
              heads=None) -> TypeGraph:
        """The graph of the objects (base, size: sorted columns); `exclude`: [lo, hi) ranges
        whose typed globals are not roots (the allocators' own metadata); `requests`: (lo,
        hi) columns, the requests each object could have been (hi 0: unknown), without
        which no buffer is typed by its size; `heads`: the allocator's header before each
        object in its buffer (None: every buffer is its object)."""
        from mdbpy.types.graph import evidence

        g = cls(space, base, size, kernel, requests, heads)
        t0 = time.perf_counter()
        g.edges = evidence.scan_heap(space.mem, g.base, g.ends, kernel)
        t1 = time.perf_counter()
        g.roots = evidence.merged(
            evidence.global_roots(space, g.catalog, g.base, g.ends, exclude),
            evidence.tls_roots(space, g.catalog, g.base, g.ends, exclude),
            evidence.frame_roots(space.session, g.catalog, g.base, g.ends))
        t2 = time.perf_counter()
        g.vtables = g._vtables()
        t3 = time.perf_counter()
        g.timings.update(scan=t1 - t0, roots=t2 - t1, vtables=t3 - t2)
        g.propagate()
        return g

    def _vtables(self) -> dict[int, int]:
        """{row: tid} of the buffers whose first word is the address point of a vtable of a
        class the DWARF describes."""
        import numpy as np

        from mdbpy.types.graph.evidence import vtable_points

        points = vtable_points(self.space.session.symbols)
        if not points:
            return {}
        keys = np.fromiter(points.keys(), np.uint64, len(points))
        rows = np.flatnonzero(np.isin(self.edges.first, keys))
        out: dict[int, int] = {}
        tids: dict[int, int | None] = {}
        for r, w in zip(rows.tolist(), self.edges.first[rows].tolist()):
            if w not in tids:
                t = self.space.find(points[w])
                tids[w] = None if t is None else self.catalog.tid_of(t)
            tid = tids[w]
            if tid is not None and self.catalog[tid].size <= int(self.size[r]):
                out[r] = tid
        return out

    def propagate(self) -> None:
        from mdbpy.types.graph.compiled import solve_compiled
        from mdbpy.types.graph.solve import solve

        t0 = time.perf_counter()
        fixed = {r: (t, VTABLE) for r, t in self.vtables.items()}
        fixed.update({r: (t, HINT) for r, t in self.hints.items()})
        args = (self.catalog, self.size, self.edges, self.roots, fixed, self.containers)
        self.solution = solve(*args) if self.kernel is None else \
            solve_compiled(self.kernel, *args)
        self.timings["propagate"] = time.perf_counter() - t0

    def hint(self, addr: int, text: str) -> Placement:
        """::istype: the buffer holding addr is of the type `text` (looked up as ::print looks
        types up); propagate again."""
        from mdbpy.errors import MdbError

        row = self.row(addr)
        if row is None:
            raise MdbError(f"{addr:x} is not in an allocated heap buffer")
        tid = self.catalog.tid_of(self.space.lookup(text))
        if tid is None:
            raise MdbError(f"{text} has no size: it can be no buffer's type")
        if self.catalog[tid].size > int(self.size[row]):
            raise MdbError(f"{text} ({self.catalog[tid].size:#x} bytes) does not fit in the "
                           f"{int(self.size[row]):#x}-byte object at {int(self.base[row]):x}")
        self.hints[row] = tid
        self.propagate()
        return self.whattype(addr)

    # -- queries ------------------------------------------------------------------------------
    def row(self, addr: int) -> int | None:
        """The row of the buffer holding addr (its header included), None outside all."""
        import numpy as np

        i = int(np.searchsorted(self.starts, np.uint64(addr), side="right")) - 1
        return i if i >= 0 and addr < int(self.ends[i]) else None

    def whattype(self, addr: int) -> Placement | None:
        """The placement of addr, None outside every buffer."""
        i = self.row(addr)
        if i is None:
            return None
        base, size, head = int(self.base[i]), int(self.size[i]), int(self.head[i])
        sol = self.solution
        tid = int(sol.tid[i])
        p = Placement(addr, int(self.starts[i]), int(self.bufsize[i]), None,
                      conflict=bool(sol.conflict[i]), head=head)
        if tid < 0:
            return p
        ti = self.catalog[tid]
        p.type, p.how = ti.name, HOW[int(sol.how[i])]
        p.count = 1 if ti.flex is not None else max(size // ti.size, 1)
        off = p.offset = addr - base
        if off < 0:
            return p  # in the allocator's header: no member
        within = off % ti.size if p.count > 1 and off < p.count * ti.size else off
        member = self.catalog.member_path(tid, within) if within < ti.size else "<slack>"
        if p.count > 1 and off < p.count * ti.size:
            member = f"[{off // ti.size}]" + ("" if not member else
                                               member if member.startswith("[") else
                                               "." + member)
        p.member = member
        return p

    def stats(self) -> dict:
        """Buffers and bytes (the buffers', headers included: what the heap spends on each
        type): typed by each way, unknown, conflicting, and the work done."""
        import numpy as np

        sol = self.solution
        size = self.bufsize
        out = {"buffers": int(len(size)), "bytes": int(size.sum(dtype=np.uint64))}
        rows = []
        for how, label in HOW.items():
            sel = (sol.tid >= 0) & (sol.how == how)
            rows.append({"how": label, "buffers": int(sel.sum()),
                         "bytes": int(size[sel].sum(dtype=np.uint64))})
        unknown = (sol.tid < 0) & ~sol.conflict
        rows.append({"how": "unknown", "buffers": int(unknown.sum()),
                     "bytes": int(size[unknown].sum(dtype=np.uint64))})
        rows.append({"how": "conflicting", "buffers": int(sol.conflict.sum()),
                     "bytes": int(size[sol.conflict].sum(dtype=np.uint64))})
        out["rows"] = rows
        typed = sol.tid[sol.tid >= 0]  # catalogue numbers: counted, not sorted or hashed
        out["types"] = int(np.count_nonzero(np.bincount(typed))) if len(typed) else 0
        out["roots"] = self.roots.variables
        out["edges"] = int(len(self.edges.dst))
        out["runs"], out["steps"] = sol.runs, sol.steps
        out["timings"] = dict(self.timings)
        out["notes"] = list(sol.notes)
        return out

    def by_type(self) -> list[dict]:
        """One row per type (element type: an array of 50 items counts under its item type),
        and one for the unknown buffers: buffers, bytes (the buffers', as stats counts them);
        sorted by bytes, largest first."""
        import numpy as np

        sol = self.solution
        tids = sol.tid.astype(np.int64)
        order = np.argsort(tids, kind="stable")
        uniq, first, counts = np.unique(tids[order], return_index=True, return_counts=True)
        sums = np.add.reduceat(self.bufsize[order], first) if len(order) else []
        rows = []
        for t, c, b in zip(uniq.tolist(), counts.tolist(), list(map(int, sums))):
            rows.append({"type": self.catalog[t].name if t >= 0 else "<unknown>",
                         "buffers": c, "bytes": b})
        rows.sort(key=lambda r: (-r["bytes"], r["type"]))
        return rows


def cached(session) -> TypeGraph | None:
    """The session's typegraph if one was built (commands do not build it behind a user's
    back: ::whatis and ::findleaks name types only after ::typegraph)."""
    return session.cache.get(GRAPH_KEY)


def known_type(session, addr: int) -> Placement | None:
    """The placement of addr in the session's typegraph when one was built and knows the
    type of the buffer holding addr; else None (::whatis and ::findleaks name types by it)."""
    g = cached(session)
    p = g.whattype(addr) if g is not None else None
    return p if p is not None and p.type is not None else None
