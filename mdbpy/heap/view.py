"""The whole process's heap as one graph: every allocator found in the target, and the
anonymous memory none of them claims, as the candidates of one table.

A real process rarely has one allocator. CPython keeps its small objects in obmalloc arenas
(anonymous mmaps) that hold the only pointers to many malloc'd blocks; a program may run
libumem beside glibc, or build pools and JIT areas on mmap. A mark run per allocator, or one
that never scans the memory no allocator claims, calls everything those hold a leak. So the
engines work on one view:

- each allocator contributes its candidates (allocated buffers, oversize segments), its heap
  regions (where its buffers, allocated and free, live) and its metadata regions: claimed
  memory, never a root;
- every readable anonymous mapping no allocator claims becomes a candidate of the one graph
  (AnonMemory: kind MMAP, or SBRK inside brk), scanned when reached and reported as an mmap
  leak when nothing reaches it, as mdb's leaky does;
- what is known to be live without a pointer to it is never a candidate: a thread's stack
  (the mapping holding its stack pointer; the part above it is a root) and its TLS area, and a
  loaded object's bss (a root);
- what cannot be decided is scanned as a root when nothing reaches it, and named in `-v`:
  shared anonymous memory (another process may hold the only reference), anonymous code (JIT
  code is referenced from code, not from aligned data words), memory that is not writable
  (reservations and guards, which gcore writes as readable zeros), and the memory right
  beside a thread's TLS area (the rest of the loader's allocation that holds it).
"""

from __future__ import annotations

from dataclasses import dataclass

from mdbpy.heap.anon import KERNEL_PSEUDO, is_anonymous
from mdbpy.heap.model import ALLOC, KIND_BUFFER, KIND_MMAP, KIND_SBRK, Allocator, BufferTable
from mdbpy.heap.roots import data_ranges, merge_ranges, subtract, thread_roots
from mdbpy.heap.scan import Root, candidate_extents

@dataclass
class AnonRegion:
    start: int
    end: int
    perms: str
    kind: int  # KIND_MMAP, or KIND_SBRK for the unclaimed part of brk
    undecided: str = ""  # why an unreached region is no evidence of a leak, if it is not

    @property
    def label(self) -> str:
        what = "brk" if self.kind == KIND_SBRK else "anon mapping"
        return f"{what} {self.start:x}-{self.end:x} {self.perms}"


def anon_regions(session, claimed) -> list[AnonRegion]:
    """The anonymous memory no allocator claims, as candidate regions. Threads' stacks, their
    TLS areas and loaded objects' bss are left out: the roots cover them. A region nothing
    reaches is a leak only when nothing else can hold it: shared memory (another process may),
    code (referenced from code, not aligned data), memory that is not writable (reservations,
    guards) and the memory right beside a thread's TLS area (the rest of the loader's
    allocation that holds it) are `undecided`, and scanned as roots when unreached."""
    stacks, _values, _warnings = thread_roots(session)
    pins = [r.start for r in stacks if not r.label.endswith(" TLS")]
    tls = [(r.start, r.end) for r in stacks if r.label.endswith(" TLS")]
    bss = [(r.start, r.end) for r in data_ranges(session) if r.label.endswith(" bss")]
    anon = [m for m in session.mem.mappings()
            if m.readable and m.path not in KERNEL_PSEUDO and is_anonymous(m)
            and not any(m.start <= p < m.end for p in pins)]
    # one subtraction for every mapping (a libumem process has thousands), each part labelled
    # with its mapping's index
    parts = subtract([Root(m.start, m.end, str(i)) for i, m in enumerate(anon)],
                     list(claimed) + tls + bss)
    out: list[AnonRegion] = []
    for p in parts:
        m = anon[int(p.label)]
        why = ("shared: other processes may hold it" if m.shared else
               "code: referenced from code" if m.executable else
               "not writable: a reservation or guard" if not m.writable else "")
        beside = any(p.end == a or p.start == b for a, b in tls)
        out.append(AnonRegion(p.start, p.end, m.perms,
                              KIND_SBRK if m.path == "[heap]" else KIND_MMAP,
                              why or ("beside a thread's TLS" if beside else "")))
    return out


class AnonMemory(Allocator):
    """The anonymous memory no allocator claims, as candidates of the one graph: each region is
    one candidate named after its mapping (`anon mapping 7f..-7f.. rw-p`)."""

    name = "anon"

    def __init__(self, session, regions: list[AnonRegion]):
        super().__init__(session)
        self.regions = regions

    def buffers(self) -> BufferTable:
        r = self.regions
        return BufferTable.from_columns([x.start for x in r], [x.end - x.start for x in r],
                                        [ALLOC] * len(r), list(range(len(r))),
                                        kind=[x.kind for x in r],
                                        groups=[x.label for x in r])

    candidates = buffers

    def heap_regions(self) -> list[tuple[int, int]]:
        return [(x.start, x.end) for x in self.regions]


# the columns a merged table carries: where each candidate is and what kind it is. Its state,
# group and control address are asked of its owner's table (Candidates.at), so on four
# million chunks the merge copies 17 bytes a row, not 40.
MERGED = ("base", "size", "kind")
FEW = 256  # rows inserted by slicing the big columns; more are scattered


def _insert_sorted(big: dict, rows: dict, at) -> dict:
    """Columns with rows[c][j] inserted before big[c][at[j]] (at sorted): few rows by joining
    slices of the big columns (a memcpy each), many by scattering both into place."""
    import numpy as np

    n, k = len(big["base"]), len(at)
    if k <= FEW:
        cuts = list(zip([0] + at.tolist(), at.tolist() + [n]))
        return {c: np.concatenate([piece for j, (a, b) in enumerate(cuts) for piece in (
            (rows[c][j - 1:j], v[a:b]) if j else (v[a:b],))]) for c, v in big.items()}
    to_rows = at + np.arange(k)
    shift = np.zeros(n, np.int64)
    np.add.at(shift, at[at < n], 1)
    to_big = np.arange(n) + np.cumsum(shift)
    out = {}
    for c, v in big.items():
        out[c] = np.empty(n + k, v.dtype)
        out[c][to_big] = v
        out[c][to_rows] = rows[c]
    return out


class Owners:
    """Whose row each row of the merged table is, without two columns as long as the table:
    the rows of the largest part (`big`, a million chunks) are kept in their own order, so a
    row's place in the merged table says its row in that part; only the few other rows (the
    anonymous regions, a second allocator's buffers) are listed, with their owner and row,
    and the big part's rows findleaks dropped (a stack region, an overlap) are remembered to
    count past them.

    pos: merged rows that are not the big part's (sorted); owner, local: theirs; dropped: the
    big part's rows no longer in the table (sorted)."""

    def __init__(self, big: int, pos, owner, local, dropped):
        import numpy as np

        self.big, self.pos, self.owner, self.local = big, pos, owner, local
        self.dropped = dropped
        # the j-th row of the big part still present is j + (how many dropped rows d, less
        # their own rank, are <= j): the rank trick over the sorted dropped rows
        self._gaps = dropped - np.arange(len(dropped), dtype=np.int64)

    def of(self, rows) -> tuple:
        """(owner, local row) arrays of merged rows (an int64 array)."""
        import numpy as np

        i = np.searchsorted(self.pos, rows)
        other = np.zeros(len(rows), bool)
        if len(self.pos):
            other = self.pos[np.minimum(i, len(self.pos) - 1)] == rows
        rank = rows - i  # the rows' rank among the big part's rows present
        local = rank + np.searchsorted(self._gaps, rank, side="right")
        owner = np.full(len(rows), self.big, np.int16)
        owner[other], local[other] = self.owner[i[other]], self.local[i[other]]
        return owner, local

    def all_of(self, k: int, n: int) -> tuple:
        """(merged rows, local rows) of everything owner k made, in a table of n rows: read
        off the list for any owner but the big one."""
        import numpy as np

        if k != self.big:
            mine = self.owner == k
            return self.pos[mine], self.local[mine]
        rows = np.arange(n, dtype=np.int64)
        owner, local = self.of(rows)
        return rows[owner == k], local[owner == k]

    def keep(self, rows, n: int) -> Owners:
        """The owners of the merged rows kept (sorted row numbers of a table of n rows)."""
        import numpy as np

        gone = np.ones(n, bool)
        gone[rows] = False
        lost = np.flatnonzero(gone)
        is_other = np.isin(lost, self.pos)
        _, lost_local = self.of(lost[~is_other])
        kept_pos = ~np.isin(self.pos, lost)
        return Owners(self.big, np.searchsorted(rows, self.pos[kept_pos]),
                      self.owner[kept_pos], self.local[kept_pos],
                      np.union1d(self.dropped, lost_local).astype(np.int64))


class Candidates:
    """Every owner's candidates in one table sorted by base (what the scan locates words in),
    with each row's owner (index into owners) and its row in that owner's own table, so that
    names, groups and records are always asked of the allocator that made the row."""

    def __init__(self, owners: list[Allocator], parts: list[BufferTable]):
        import numpy as np

        self.owners, self.parts = owners, parts
        full = [k for k, p in enumerate(parts) if len(p)]
        none = np.zeros(0, np.int64)
        if len(full) <= 1:
            k = full[0] if full else 0
            self.table = parts[k] if parts else BufferTable.from_columns([], [], [])
            self.rows = Owners(k, none, np.zeros(0, np.int16), none, none)
            return
        # the others' rows (a few anonymous regions, another allocator's buffers) are put
        # into the largest part (a million chunks) where they fall, in one copy of it
        big = max(full, key=lambda k: len(parts[k]))
        rest = [k for k in full if k != big]
        cols = {c: np.concatenate([getattr(parts[k], c) for k in rest]) for c in MERGED}
        owner = np.concatenate([np.full(len(parts[k]), k, np.int16) for k in rest])
        local = np.concatenate([np.arange(len(parts[k]), dtype=np.int64) for k in rest])
        order = np.argsort(cols["base"], kind="stable")
        at = np.searchsorted(parts[big].base, cols["base"][order])
        merged = _insert_sorted({c: getattr(parts[big], c) for c in MERGED},
                                {c: v[order] for c, v in cols.items()}, at)
        self.table = BufferTable(merged["base"], merged["size"], None, None, None,
                                 merged["kind"], [])
        self.rows = Owners(big, at + np.arange(len(at)), owner[order], local[order], none)

    def __len__(self) -> int:
        return len(self.table)

    def select(self, keep) -> Candidates:
        """The rows a boolean mask keeps (their owners kept in step)."""
        import numpy as np

        rows = np.flatnonzero(keep)
        if len(rows) == len(self.table):
            return self
        out = Candidates.__new__(Candidates)
        out.owners, out.parts = self.owners, self.parts
        out.table = self.table.select(keep)
        out.rows = self.rows.keep(rows, len(self.table))
        return out

    def at(self, i: int) -> tuple[Allocator, BufferTable, int]:
        """(owner, its table, the row there) of row i."""
        import numpy as np

        owner, local = self.rows.of(np.asarray([i], np.int64))
        k = int(owner[0])
        return self.owners[k], self.parts[k], int(local[0])

    def name(self, i: int) -> str:
        """What row i is, in its owner's words (the cache, the arena size class, the mapping)."""
        alloc, part, j = self.at(i)
        return alloc.group_name(part, j)


class HeapView:
    """The allocators of a target and the anonymous memory they leave, as one heap."""

    def __init__(self, session, allocs: list[Allocator]):
        self.session, self.allocs = session, list(allocs)
        self.claimed: list[tuple[int, int]] = []
        self.anon = AnonMemory(session, [])

    def heap_regions(self) -> list[tuple[int, int]]:
        """Every allocator's heap regions (the memory the scan will read first)."""
        return [r for a in self.allocs for r in a.heap_regions()]

    def candidates(self) -> Candidates:
        """Every allocator's candidates and the anonymous memory none of them claims (their
        heap and metadata regions, and the regions they offer as candidates themselves)."""
        parts = [a.candidates() for a in self.allocs]
        offered = [r for p in parts for r in candidate_extents(p.select(p.kind != KIND_BUFFER))]
        self.claimed = merge_ranges(offered + [r for a in self.allocs
                                               for r in a.heap_regions() + a.metadata_regions()])
        self.anon = AnonMemory(self.session, anon_regions(self.session, self.claimed))
        return Candidates(self.allocs + [self.anon], parts + [self.anon.candidates()])

    def undecided(self, cands: Candidates) -> dict[int, str]:
        """{row: label} of the candidates whose being unreached proves nothing (AnonRegion)."""
        import numpy as np

        regions = self.anon.regions
        rows, local = cands.rows.all_of(len(self.allocs), len(cands))
        return {int(i): f"{regions[j].label} ({regions[j].undecided})"
                for i, j in zip(rows.tolist(), local.tolist()) if regions[j].undecided}
