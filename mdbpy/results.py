"""The structured form of what the heap dcmds and ::stacks report, shared by JSON output
(mdbpy.jsonout) and the Python API (mdbpy.api), so both say exactly what the text tables say.

Each result is a dataclass built from the engines' own objects (mdbpy.heap.report.Entry,
mdbpy.heap.model.Problem, HeapStat, Buffer, mdbpy.unwind.Frame); as_dict() is the JSON shape.
Addresses are plain ints (user-space addresses stay below 2**53, so every JSON reader keeps them
exact); every stack comes twice, as pcs and as the `sym+off` names the text prints.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from mdbpy.heap.model import ALLOC, KIND_BUFFER, KIND_MMAP, KIND_OVERSIZE, KIND_SBRK

KIND_NAMES = {KIND_BUFFER: "buffer", KIND_MMAP: "mmap", KIND_SBRK: "sbrk",
              KIND_OVERSIZE: "oversize"}


class _Dict:
    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class Record(_Dict):
    """An allocation (or free) record: the stack innermost first, the thread, the time."""

    addr: int | None
    stack: list[int]
    stack_names: list[str]
    thread: int | None = None
    timestamp: int | None = None
    cpu: int | None = None
    label: str = ""  # 'Allocated', 'Freed' in verify problems; '' elsewhere

    @classmethod
    def of(cls, session, rec, label: str = "") -> Record | None:
        if rec is None:
            return None
        return cls(rec.addr, list(rec.stack),
                   [session.format_addr(pc, ret=True) for pc in rec.stack],
                   rec.thread, rec.timestamp, rec.cpu, label)


@dataclass
class LeakGroup(_Dict):
    """One row of ::findleaks: leaks coalesced by kind, cache and stack.

    table is the mdb table the row is in: 'oversized' (mmap, sbrk, oversize), 'buffer' (no
    allocation record) or 'bufctl' (with one); ctl is what the row's BUFFER/BUFCTL/VMEM_SEG
    column shows. members are every leaked buffer of the group, the representative first, and
    member_sizes their sizes; unreferenced those no other leaked buffer points to (heads of
    leaked structures)."""

    table: str
    kind: str
    cache: str
    cache_addr: int
    count: int
    bytes: int
    size: int
    addr: int
    ctl: int
    caller: int
    caller_name: str
    record: Record | None
    members: list[int] = field(default_factory=list)
    member_sizes: list[int] = field(default_factory=list)
    unreferenced: list[int] = field(default_factory=list)
    type: str | None = None  # the representative's type, where ::typegraph knows it

    @classmethod
    def of(cls, session, entry) -> LeakGroup:
        from mdbpy.heap.report import T_CACHE, T_UMEM, ctl_addr

        g = entry.group
        rep = g.rep
        table = {T_CACHE: "buffer", T_UMEM: "bufctl"}.get(entry.type, "oversized")
        shown = rep.addr if entry.type == T_CACHE else ctl_addr(rep)
        return cls(table, KIND_NAMES.get(g.kind, str(g.kind)), g.group, entry.cache_addr,
                   g.count, g.bytes, rep.size, rep.addr, shown, entry.caller, entry.caller_text,
                   Record.of(session, rep.record), [m.addr for m in g.members],
                   [m.size for m in g.members], [m.addr for m in g.members if m.unreferenced],
                   entry.type_text or None)

    def as_dict(self, members: bool = True) -> dict:
        """members False leaves the member lists out (::findleaks without -d), except for mmap
        and sbrk leaks, whose table has a row per member."""
        d = dataclasses.asdict(self)
        if not members and self.kind not in ("mmap", "sbrk"):
            del d["members"], d["member_sizes"], d["unreferenced"]
        return d


def leak_groups(session, entries) -> list[LeakGroup]:
    """The groups of mdbpy.heap.report.entries(), in the order the tables print them."""
    return [LeakGroup.of(session, e) for e in entries]


def leak_totals(groups: list[LeakGroup]) -> dict:
    """The Total line of each table present: {table: {"leaks": n, "bytes": b}}."""
    out: dict = {}
    for g in groups:
        t = out.setdefault(g.table, {"leaks": 0, "bytes": 0})
        t["leaks"] += g.count
        t["bytes"] += g.bytes
    return out


@dataclass
class Whatis(_Dict):
    """What ::whatis says of one address from one source: an allocator's buffer
    (source = the allocator's name) or a mapping (source 'mappings'); source None: unknown."""

    addr: int
    source: str | None = None
    base: int | None = None
    offset: int | None = None
    size: int | None = None
    state: str | None = None  # 'allocated' or 'freed'
    cache: str | None = None
    cache_addr: int | None = None
    record: Record | None = None
    mapping: str | None = None
    start: int | None = None
    end: int | None = None
    symbol: str | None = None
    type: str | None = None  # where ::typegraph knows it: the buffer's type and member
    member: str | None = None
    # where the buffer's object starts (after an allocator's header: libumem's malloc) and
    # addr's offset into it, which member speaks of; offset is into the buffer
    object: int | None = None
    object_offset: int | None = None


def whatis_hits(session, addr: int, every: bool = False, map_name=str) -> list[Whatis]:
    """The sources that explain addr, in ::whatis's priority order (the allocators, then the
    mappings); only the first unless every (-a). [Whatis(addr)] when nothing does."""
    from mdbpy.types.graph import known_type

    hits = []
    for a in session.allocators():
        b = a.whatis(addr)
        if b is not None:
            w = Whatis(addr, a.name, b.base, addr - b.base, b.size,
                       "allocated" if b.state == ALLOC else "freed", b.group, b.group_addr,
                       Record.of(session, b.record))
            typed = known_type(session, addr) if b.state == ALLOC else None
            if typed is not None and typed.type is not None:
                w.type, w.member = typed.spelled, typed.member or None
                w.object, w.object_offset = addr - typed.offset, typed.offset
            hits.append(w)
            if not every:
                return hits
    m = session.mem.mapping_at(addr)
    if m is not None:
        hit = session.symbols.lookup_addr(addr)
        sym = session.format_addr(addr) if hit is not None and hit[1] < hit[0].size else None
        hits.append(Whatis(addr, "mappings", mapping=map_name(m), start=m.start, end=m.end,
                           symbol=sym))
    return hits or [Whatis(addr)]


@dataclass
class Problem(_Dict):
    """One integrity failure of ::heap_verify (mdbpy.heap.model.Problem, stacks symbolized)."""

    allocator: str
    kind: str
    group: str
    addr: int
    size: int
    bad: int | None
    bad_end: int | None
    found: int | None
    expected: int | None
    note: str
    records: list[Record]

    @classmethod
    def of(cls, session, allocator: str, p) -> Problem:
        return cls(allocator, p.kind, p.group, p.addr, p.size, p.bad, p.bad_end, p.found,
                   p.expected, p.note, [Record.of(session, r, label) for label, r in p.records])


@dataclass
class HeapStat(_Dict):
    """One row of ::heap_stats."""

    allocator: str
    group: str
    bufsize: int
    total: int
    inuse: int
    free: int
    memory: int
    addr: int

    @classmethod
    def of(cls, allocator: str, r) -> HeapStat:
        return cls(allocator, r.group, r.bufsize, r.total, r.inuse, r.free, r.memory, r.addr)


@dataclass
class Frame(_Dict):
    """One stack frame: its pc, mdb's frame pointer column, `sym+off`, and the source line
    where the line tables know it (file None otherwise)."""

    pc: int
    fp: int
    name: str
    file: str | None = None
    line: int | None = None


@dataclass
class ThreadStack(_Dict):
    """A thread and its frames, innermost first; error says why there are none, truncated why
    the walk stopped early."""

    tid: int
    name: str
    frames: list[Frame]
    error: str | None = None
    truncated: str | None = None
