"""The allocator interface every allocator module implements, and the buffer table it returns.

The generic engines (findleaks, whatis, verify, stats) are written once against this. A heap of
a million buffers is described column-wise (numpy arrays of base, size, state, group and control
address), never as a million Python objects, so the engines can scan it vectorized.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

from mdbpy.errors import MdbError, ReadError

# buffer states
ALLOC = 1
FREE = 2

# candidate kinds (mdb's control types): what a buffer or region is, for reports
KIND_BUFFER = 0  # an allocator buffer (chunk, slab object) with or without a record
KIND_MMAP = 1  # an anonymous mapping nothing else accounts for
KIND_SBRK = 2  # the part of brk no heap accounts for
KIND_OVERSIZE = 3  # a large allocation outside the caches (vmem seg, mmapped chunk)
CTL_NONE = (1 << 64) - 1  # BufferTable.from_runs: the run's buffers have no control record


@dataclass
class AllocRecord:
    """What the allocator remembers of an allocation: its stack (pcs, innermost first), the
    thread, and the time, where it keeps them; and the address of the record itself.

    Every pc of a stack is a return address (libumem's getpcstack(), the simulator's tracks,
    __builtin_return_address), printed named after its call: format_addr(pc, ret=True). An
    allocator that records the current pc of its own frame would have to say so; none does."""

    stack: tuple[int, ...] = ()
    thread: int | None = None
    timestamp: int | None = None
    addr: int | None = None  # e.g. the umem bufctl, the sim track record
    pid: int | None = None
    cpu: int | None = None


@dataclass
class RecordColumns:
    """The allocation records of many buffers, column-wise: what findleaks coalesces ten
    thousand leaks on, without ten thousand AllocRecord objects.

    stacks: (n, depth) uint64 pcs, innermost first, zero after the last frame (a pc of 0 is
    never a frame); timestamp: (n,) int64, 0 where none is kept; record(k): row k's full
    AllocRecord (or None), built when a report shows it.
    """

    stacks: object
    timestamp: object
    record: Callable[[int], AllocRecord | None]

    @classmethod
    def of(cls, records: list[AllocRecord | None]) -> RecordColumns:
        """The columns of records already built."""
        import numpy as np

        depth = max((len(r.stack) for r in records if r is not None), default=0)
        stacks = np.zeros((len(records), depth), np.uint64)
        stamps = np.zeros(len(records), np.int64)
        for k, r in enumerate(records):
            if r is not None:
                stacks[k, :len(r.stack)] = r.stack
                stamps[k] = r.timestamp or 0
        return cls(stacks, stamps, records.__getitem__)


@dataclass
class Buffer:
    """One buffer as ::whatis reports it: where it is, whether it is allocated, its group (and
    the group's address, e.g. the cache), its control address and its last record."""

    base: int
    size: int
    state: int  # ALLOC or FREE
    group: str
    group_addr: int = 0
    ctl: int = 0
    record: AllocRecord | None = None
    kind: int = KIND_BUFFER  # KIND_OVERSIZE: ctl is the allocator's record of a big one


@dataclass
class Problem:
    """One integrity failure found by Allocator.verify(), in the allocator's own words.

    kind is the allocator's message ('Redzone overwritten'); [bad, bad_end) the bytes found
    wrong, with the first one's value and the value expected there; records the stacks that
    explain it, as (label, record) pairs such as ('Allocated', ...), ('Freed', ...).
    """

    kind: str
    group: str
    addr: int  # the buffer (object) concerned
    size: int = 0
    bad: int | None = None
    bad_end: int | None = None
    found: int | None = None
    expected: int | None = None
    note: str = ""
    records: list = field(default_factory=list)


@dataclass
class HeapStat:
    """One row of ::heap_stats: a group (cache, arena, size class) and what it holds."""

    group: str
    bufsize: int
    total: int  # buffers the group has room for
    inuse: int  # allocated buffers
    memory: int  # bytes the group takes from the system (slabs, arena memory)
    addr: int = 0  # the group's descriptor (cache address), 0 if it has none

    @property
    def free(self) -> int:
        return self.total - self.inuse


@dataclass
class BufferTable:
    """Column-wise buffers: numpy arrays of equal length, sorted by base, not overlapping.

    group indexes `groups` (a cache or arena name, or a size class); ctl is the control address
    (bufctl, chunk header, track record) or 0. A table merged over several owners
    (mdbpy.heap.view.Candidates) has no state, group or ctl (None): each owner's own table
    holds them.
    """

    base: object  # np.ndarray uint64
    size: object  # np.ndarray uint64
    state: object  # np.ndarray uint8 (None: merged, see above)
    group: object  # np.ndarray int32 (None: merged)
    ctl: object  # np.ndarray uint64 (None: merged)
    kind: object  # np.ndarray uint8
    groups: list = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.base)

    @classmethod
    def from_columns(cls, base, size, state, group=None, ctl=None, kind=None, groups=None,
                     sort: bool = True) -> BufferTable:
        import numpy as np

        n = len(base)
        cols = [np.asarray(base, dtype=np.uint64), np.asarray(size, dtype=np.uint64),
                np.asarray(state, dtype=np.uint8),
                np.zeros(n, np.int32) if group is None else np.asarray(group, dtype=np.int32),
                np.zeros(n, np.uint64) if ctl is None else np.asarray(ctl, dtype=np.uint64),
                np.zeros(n, np.uint8) if kind is None else np.asarray(kind, dtype=np.uint8)]
        if sort and n and np.any(cols[0][1:] < cols[0][:-1]):
            order = np.argsort(cols[0], kind="stable")
            cols = [c[order] for c in cols]
        return cls(*cols, groups=list(groups or []))

    @classmethod
    def from_runs(cls, first, stride, count, size, group, ctl_off, groups, free=None,
                  keep_free: bool = True) -> BufferTable:
        """A table from runs of equally spaced buffers (a slab's objects): run r has count[r]
        buffers, the first at first[r], stride[r] apart, size[r] bytes, in group[r], each with
        its control record ctl_off[r] bytes past it (CTL_NONE: none). The runs are given in
        address order; `free` numbers the free buffers over all runs (sorted), which are
        marked FREE, or left out without keep_free (findleaks' candidates). A million buffers
        are written by kernel.c in one pass, with no per-buffer temporaries."""
        import numpy as np

        from mdbpy.heap import kernel

        runs = [np.ascontiguousarray(a, t) for a, t in (
            (first, np.uint64), (stride, np.uint64), (count, np.int64), (size, np.uint64),
            (group, np.int32), (ctl_off, np.uint64))]
        free = np.zeros(0, np.int64) if free is None else np.ascontiguousarray(free, np.int64)
        skip = np.zeros(0, np.int64) if keep_free else free
        n = int(runs[2].sum()) - len(skip)
        base, bsize, ends = (np.empty(n, np.uint64) for _ in range(3))
        bgroup, ctl = np.empty(n, np.int32), np.empty(n, np.uint64)
        kernel.lib().expand_runs(len(runs[0]), *(kernel.ptr(a) for a in runs), kernel.ptr(skip),
                                 len(skip), *(kernel.ptr(a) for a in (base, bsize, ends, bgroup,
                                                                      ctl)))
        state = np.full(n, ALLOC, np.uint8)
        if keep_free:
            state[free] = FREE
        table = cls(base, bsize, state, bgroup, ctl, np.zeros(n, np.uint8), list(groups))
        table.__dict__["ends"] = ends  # the cached property, written in the same pass
        return table

    @classmethod
    def concat(cls, tables: list[BufferTable]) -> BufferTable:
        """One table from several (group indexes are renumbered into one groups list)."""
        import numpy as np

        groups: list = []
        parts = []
        for t in tables:
            off = len(groups)
            groups.extend(t.groups)
            parts.append((t.base, t.size, t.state, t.group + off, t.ctl, t.kind))
        if not parts:
            return cls.from_columns([], [], [])
        cols = [np.concatenate([p[i] for p in parts]) for i in range(6)]
        return cls.from_columns(*cols, groups=groups)

    def select(self, mask) -> BufferTable:
        """The buffers a boolean mask keeps (the table itself when it keeps all: tables are
        never changed in place). The kept rows are found once and taken from each column."""
        import numpy as np

        rows = np.flatnonzero(mask)
        if len(rows) == len(self.base):
            return self
        return BufferTable(*(None if col is None else col.take(rows) for col in (
            self.base, self.size, self.state, self.group, self.ctl, self.kind)), self.groups)

    @functools.cached_property
    def ends(self):
        """base + size, computed once: the scan, its locator and the overlap check all need
        it, and on a million buffers each copy is 8 MB of fresh memory."""
        return self.base + self.size

    def find(self, addr: int) -> int | None:
        """Index of the buffer containing addr, or None."""
        import numpy as np

        i = int(np.searchsorted(self.base, np.uint64(addr), side="right")) - 1
        if i >= 0 and addr < int(self.base[i]) + int(self.size[i]):
            return i
        return None

    def overlaps(self) -> tuple[int, int] | None:
        """The first pair of overlapping entries (indexes), or None."""
        import numpy as np

        if len(self.base) < 2:
            return None
        bad = np.nonzero(self.ends[:-1] > self.base[1:])[0]
        return (int(bad[0]), int(bad[0]) + 1) if len(bad) else None


class Allocator:
    """One allocator found in a target. Subclasses fill in what their allocator keeps.

    name: the module name ('umem', 'ptmalloc', 'sim'); version: a tuple or None.
    """

    name = "allocator"
    version: tuple | None = None

    def __init__(self, session):
        self.session = session

    @classmethod
    def detect(cls, session) -> Allocator | None:
        """The allocator in this target, or None when it is not there."""
        raise NotImplementedError

    @classmethod
    def root_at(cls, session, symbol: str, binder, struct: str):
        """A view of the allocator's root `struct` at the global `symbol`, or None where the
        target has no such symbol, or has it but its memory cannot be read. The second is
        warned: an allocator whose root is a gap is not the same as no allocator, and the
        user should hear which page was missing. The caller checks the view's magic."""
        sym = session.symbols.lookup(symbol)
        if sym is None:
            return None
        try:
            return binder[struct].view(session.mem, sym.addr)
        except ReadError as e:
            session.warn(f"{cls.name}: {symbol} is unreadable: {e}")
            return None

    def buffers(self) -> BufferTable:
        """Every buffer the allocator manages, allocated and free, with groups and controls."""
        raise NotImplementedError

    def buffer_count(self) -> int:
        """How many rows buffers() has (findleaks -v's maximum buffers): an allocator that
        knows the number without building the table (millions of rows, only to be counted)
        says so."""
        return len(self.buffers())

    def candidates(self) -> BufferTable:
        """What findleaks may report: allocated buffers plus the allocator's extra regions
        (unaccounted anonymous mappings, brk remainder, oversize segments)."""
        import numpy as np

        t = self.buffers()
        return t.select(t.state == ALLOC) if len(t) else t

    def metadata_regions(self) -> list[tuple[int, int]]:
        """[start, end) ranges of the allocator's own bookkeeping: never roots."""
        return []

    def request_sizes(self, table: BufferTable):
        """(lo, hi) uint64 columns, per row of table (one of this allocator's tables): the
        smallest and largest request the allocator could have served with that buffer, hi 0
        where it cannot say. Why: the typegraph recognises a buffer's struct by its size
        (mdbpy/types/graph/containers.py), and a buffer is larger than what was asked for by
        the allocator's rounding (a size class, an alignment), so "fits" must be this range,
        derived from the allocator's own rules, not a guess. This default says nothing."""
        import numpy as np

        zeros = np.zeros(len(table), np.uint64)
        return zeros, zeros

    def object_offsets(self, table: BufferTable):
        """A uint64 column, per row of table (one of this allocator's tables): where the
        program's object starts inside each buffer, 0 where the buffer is the object. Why:
        an allocator may keep a header inside the buffer it manages (libumem's malloc puts
        its size and magic before the pointer it returns), and the typegraph types an
        object from pointers to its start, which are then pointers into the buffer. An
        override says so per buffer, from what the buffer holds, and 0 where that does not
        verify; request_sizes then speaks of the object. This default: every buffer is its
        object (glibc's and jemalloc's chunks, whose headers lie outside the table's rows)."""
        import numpy as np

        return np.zeros(len(table), np.uint64)

    def heap_regions(self) -> list[tuple[int, int]]:
        """[start, end) ranges where buffers live; together they must cover every buffer
        (heap memory is never a root, and findleaks cuts exactly these out of the roots)."""
        return []

    def record(self, table: BufferTable, i: int) -> AllocRecord | None:
        """The allocation record of buffer i, where the allocator keeps one."""
        return None

    def records(self, table: BufferTable, indexes) -> list[AllocRecord | None]:
        """The records of many buffers (findleaks asks for every leak's at once). Allocators
        that keep records at fixed places override this to read them in bulk
        (mdbpy.heap.gather)."""
        return [self.record(table, int(i)) for i in indexes]

    def record_columns(self, table: BufferTable, indexes) -> RecordColumns:
        """The records of many buffers as columns (findleaks coalesces on them). Allocators
        that can decode their records column-wise override this to skip the objects."""
        return RecordColumns.of(self.records(table, indexes))

    def untrusted(self) -> list[tuple[int, int, str]]:
        """[start, end) regions whose metadata the walks met as garbage, and why (a cycle, a
        wild pointer, a smashed header). Damaged heaps are the normal case for a debugger: the
        walks keep what they can still trust, and findleaks names these regions in its warnings
        so that a leak count is never silently incomplete."""
        return []

    def group_name(self, table: BufferTable, i: int) -> str:
        g = table.groups[int(table.group[i])] if table.groups else ""
        return str(g)

    def group_names(self, table: BufferTable, indexes) -> list[str]:
        """group_name of many buffers. This default asks once per group, which holds while a
        buffer's name is its group's; an allocator naming buffers by their contents
        overrides it."""
        import numpy as np

        idx = np.asarray(indexes, np.int64)
        _, first, inverse = np.unique(table.group[idx], return_index=True,
                                      return_inverse=True)
        names = [self.group_name(table, int(idx[k])) for k in first.tolist()]
        return [names[k] for k in inverse.tolist()]

    def stack_skip(self, pc: int) -> bool:
        """True for frames inside the allocator itself (skipped when naming a caller). pc is a
        return address: the frame is where its call is, session.symbols.locate(pc, ret=True)."""
        return False

    # -- hooks of the generic dcmds (::whatis, ::findleaks, ::heap_verify, ::heap_stats,
    # ::layout); the defaults derive what they can from buffers()
    record_name = "bufctl"  # what ::whatis -q calls the control address (umem's word)
    binder = None  # the mdbpy.layout.bind.Binder the module reads the target through
    oversize_label = "oversize"  # -d's name for an oversize leak group (mdb: umem_oversize)

    def record_lines(self, rec: AllocRecord, buf: int, group_addr: int,
                     kind: int) -> list[str] | None:
        """The record of buffer `buf` (of kind KIND_BUFFER or KIND_OVERSIZE) in the long form
        of the allocator's own debugger, as findleaks -d and ::whatis print it (libumem:
        `::bufctl -v`, `::vmem_seg -v`); None for mdbpy's generic form (report.record_block)."""
        return None

    def group_addr(self, table: BufferTable, i: int) -> int:
        """The address of buffer i's group descriptor (the cache), or 0."""
        return 0

    def group_addrs(self, table: BufferTable):
        """group_addr of every buffer, as a uint64 array (::heapmap -a selects a million
        buffers by it). By default one call per group, for allocators whose descriptor is
        their group's (a cache); one whose descriptor is not (ptmalloc's arena) overrides it."""
        import numpy as np

        _, first, which = np.unique(table.group, return_index=True, return_inverse=True)
        addrs = np.array([self.group_addr(table, i) for i in first.tolist()], np.uint64)
        return addrs[np.asarray(which).reshape(-1)] if len(table) else np.zeros(0, np.uint64)

    def whatis(self, addr: int) -> Buffer | None:
        """The buffer containing addr, allocated or free, or None."""
        t = self.buffers()
        i = t.find(addr)
        if i is None:
            return None
        return Buffer(int(t.base[i]), int(t.size[i]), int(t.state[i]), self.group_name(t, i),
                      self.group_addr(t, i), int(t.ctl[i]), self.record(t, i), int(t.kind[i]))

    def verify(self, progress=None) -> list[Problem]:
        """Every integrity problem of the heap (an allocator without checks finds none)."""
        return []

    def stats(self) -> list[HeapStat]:
        """Per-group counts, derived from buffers() unless the allocator knows better."""
        import numpy as np

        t = self.buffers()
        rows = []
        for g, name in enumerate(t.groups):
            sel = t.group == g
            n = int(sel.sum())
            if not n:
                continue
            sizes = t.size[sel]
            inuse = int((t.state[sel] == ALLOC).sum())
            rows.append(HeapStat(str(name), int(sizes.max()), n, inuse,
                                 int(sizes.sum(dtype=np.uint64))))
        return rows


# the session cache key of the last ::findleaks (leaks.cached_leaks), here where the dcmds
# can name it without importing the engine at start-up
LEAKS_KEY = ("heap", "findleaks")

NO_ALLOCATOR = ("no allocator found in this target (mdbpy knows libumem, glibc malloc, "
                "jemalloc and its own simulator; see ::dmods)")


def allocators(session) -> list[Allocator]:
    """The target's allocators, for a command that needs at least one (else its one-line
    error)."""
    found = session.allocators()
    if not found:
        raise MdbError(NO_ALLOCATOR)
    return found
