"""The typegraph dcmds (mdb's ::typegraph, ::whattype, ::istype, done for Linux), and the
type table of ::heap_stats -t.

The engine (mdbpy.types.graph) knows types, not allocators: this module hands it the heap as
every allocator's allocated buffers (the candidates ::findleaks marks, without the anonymous
regions no allocator claims, which are no one's typed buffer), and keeps the graph in the
session cache, where ::whatis and ::findleaks find it to name types.
"""

from __future__ import annotations

from mdbpy.dcmd import Flag, Operand, dcmd
from mdbpy.errors import CommandAbort, MdbError, UsageError
from mdbpy.heap.model import allocators
from mdbpy.jsonout import Table, cells, emit, wants_json
from mdbpy.types.graph.solve import HOW


def heap_buffers(session):
    """(base, size, head, metadata regions, (lo, hi)): every allocator's allocated objects
    as sorted columns, where each starts (its buffer's start plus the offset its allocator
    gives, Allocator.object_offsets: the allocator's header inside the buffer, as libumem's
    malloc keeps one) and its size (the rest of the buffer), head that offset; the [lo, hi)
    ranges of the allocators' own metadata; and the requests each object could have been
    (Allocator.request_sizes; hi 0 where the allocator cannot say), for the typegraph's
    containers. Each allocator is asked once, of its own table."""
    from mdbpy.heap.model import KIND_BUFFER, KIND_OVERSIZE
    from mdbpy.heap.view import Candidates

    allocs = allocators(session)
    parts = [a.candidates() for a in allocs]
    cands = Candidates(allocs, parts)
    table = cands.table
    cands = cands.select((table.kind == KIND_BUFFER) | (table.kind == KIND_OVERSIZE))
    lo, hi, head = _asked(parts, cands, [(*a.request_sizes(p), a.object_offsets(p))
                                         for a, p in zip(allocs, parts)])
    base, size = cands.table.base, cands.table.size
    return (base + head, size - head, head, [r for a in allocs for r in a.metadata_regions()],
            (lo, hi))


def _asked(parts, cands, asked):
    """The columns each allocator gave of its own table (asked: one tuple of columns per
    part), taken for cands' rows. One allocator whose rows are all kept (the usual heap)
    needs no gathering: 2 ms of the typegraph's 30 on 200,000 buffers."""
    import numpy as np

    cols = [np.concatenate([np.zeros(0, np.uint64)] + [q[k] for q in asked])
            for k in range(len(asked[0]))]
    if len(parts) == 1 and len(cands) == len(parts[0]):
        return cols
    # each row's place in the parts' columns laid end to end
    owner, local = cands.rows.of(np.arange(len(cands), dtype=np.int64))
    at = np.cumsum([0] + [len(p) for p in parts])[owner] + local
    return [c[at] for c in cols]


def typegraph_of(session, force: bool = False):
    """The session's typegraph (mdbpy.types.graph.TypeGraph), built on first use (or again
    with force) with its fixpoint in the compiled kernel; the engine loads with the first
    graph, not at start-up."""
    from mdbpy.heap.kernel import lib
    from mdbpy.types.graph import GRAPH_KEY, TypeGraph
    from mdbpy.types.space import space_of

    g = session.cache.get(GRAPH_KEY)
    if g is None or force:
        base, size, head, meta, requests = heap_buffers(session)
        try:
            g = TypeGraph.build(space_of(session), base, size, meta, kernel=lib(),
                                requests=requests, heads=head)
        except KeyboardInterrupt:
            raise CommandAbort("typegraph: interrupted; no results kept") from None
        session.cache[GRAPH_KEY] = g
    return g


def _pct(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.1f}%" if whole else "-"


@dcmd("typegraph", "infer the type of every heap buffer from typed pointers",
      opts=[Flag("f", "force", "build the graph again"),
            Flag("v", "verbose", "also print the work done (edges, runs, time per phase)")],
      example="::typegraph", help="""\
Builds the type graph of the heap: starting from every global and static variable that the
program's DWARF (and its libraries' debug files) describes, every thread's copy of its
__thread variables, and the arguments and locals of every thread's frames, each typed pointer
into a heap buffer gives that buffer the type pointed to (an array of it when the buffer holds
several), and the typed buffers' own pointer members type the buffers they reach, to a fixpoint
over the whole heap. A C++ object is typed by its vtable pointer (its dynamic type). Pointers
that say nothing of layout (void *, char *, unions whose members disagree) give no type; a
buffer reached as two incompatible types stays unknown (conflicting) rather than wrong, and so
do the buffers only it would type.

What is typed is the program's object: where an allocator keeps a header inside the buffer
(libumem's malloc: 8 or 16 bytes of size and magic before the pointer it returns, checked in
each buffer; a buffer whose header does not verify is taken to have none), the object starts
after it and its pointers are the evidence; the reports still name the buffer.

A typed pointer into the middle of a buffer that nothing else types (a struct list_head * to
the list member of a malloc'd struct conn) types it by size and member: when exactly one struct
or union in the DWARF of the loaded objects has a size the allocator could have served with
that buffer (glibc's request2size, jemalloc's size class, umem's cache or recorded size, the
size libumem's malloc header records; never a buffer whose allocator cannot say) and that
type there, the buffer is that struct; every other pointer into or to it must then agree.
Several such structs, or none, leave it unknown.

Prints how many buffers and bytes (the buffers', headers included) were typed, and how: by a
root pointer, by propagation, by vtable, by a user's ::istype, by size and member; unknown
and conflicting.

The graph is cached until -f or until the target changes; ::whattype, ::istype,
::heap_stats -t, ::whatis and ::findleaks use it.""")
def typegraph(inv):
    inv.no_operands()
    if inv.has_addr:
        raise UsageError("usage: ::typegraph [-fv]")
    s = inv.session
    g = typegraph_of(s, inv.opts.force)
    st = g.stats()
    if wants_json(inv):
        emit(inv, "typegraph", **st)
        return 0
    typed = sum(r["buffers"] for r in st["rows"][:len(HOW)])
    typed_bytes = sum(r["bytes"] for r in st["rows"][:len(HOW)])
    t = Table("{how:<16s} {buffers:>9d} {bytes:>12d}",
              head=[f"{'HOW':<16s} {'BUFFERS':>9s} {'BYTES':>12s}"])
    for r in st["rows"]:
        t.add(**r)
    t.foot = [cells("{0:<16s} {1:>9d} {2:>12d}", "total", st["buffers"], st["bytes"]),
              f"typegraph: {typed} of {st['buffers']} buffers ({_pct(typed, st['buffers'])}), "
              f"{typed_bytes} of {st['bytes']} bytes ({_pct(typed_bytes, st['bytes'])}) typed "
              f"as {st['types']} types, from {st['roots']} typed variables"]
    t.print(inv)
    if inv.opts.verbose:
        tm = st["timings"]
        inv.print(f"typegraph: {st['edges']} pointers between buffers; {st['runs']} run(s), "
                  f"{st['steps']} typed buffers expanded")
        inv.print("typegraph: " + ", ".join(f"{k} {v:.3f}s" for k, v in tm.items()))
    for note in st["notes"]:
        s.warn(f"typegraph: {note}")
    return 0


@dcmd("whattype", "the inferred type of the heap buffer containing addr", addr=":",
      opts=[Flag("v", "verbose", "also the buffer and how its type was found")],
      example="0x7f0000201010::whattype", help="""\
The type ::typegraph gave the heap buffer containing addr (building the graph if needed) and
the member at addr: `<addr> is 0x18 bytes into struct conn (member buf)`, an array element as
`[3].owner`; or that its type is unknown (conflicting, when two incompatible types reach it).
Offsets are into the object, which follows the allocator's header where the buffer has one
(libumem's malloc): an address in the header is `0x8 bytes before struct conn (in the
allocator's header)`, and -v names the buffer and where the object starts.""")
def whattype(inv):
    if not inv.has_addr:
        raise UsageError("usage: addr::whattype [-v]")
    inv.no_operands()
    g = typegraph_of(inv.session)
    p = g.whattype(inv.addr)
    if p is None:
        raise MdbError(f"{inv.addr:x} is not in an allocated heap buffer")
    if wants_json(inv):
        emit(inv, "whattype", addr=p.addr, base=p.base, size=p.size, type=p.type,
             count=p.count, offset=p.offset, member=p.member or None, how=p.how or None,
             conflict=p.conflict, start=p.start)
        return 0
    inv.print(_line(p))
    if inv.opts.verbose and p.type is not None:
        after = f", the object at {p.start:x} after a {p.head:#x}-byte header" if p.head else ""
        inv.print(f"    in the {p.size:#x}-byte buffer at {p.base:x}{after}, typed by {p.how}")
    return 0


def _line(p) -> str:
    """`<addr> is 0x18 bytes into struct conn (member buf)`, or the buffer of unknown type."""
    if p.type is None:
        return f"{p.addr:x} is in the {p.size:#x}-byte heap buffer at {p.base:x}, {p.phrase()}"
    return f"{p.addr:x} is {p.phrase()}"


@dcmd("istype", "tell the typegraph the type of the buffer containing addr", addr=":",
      operands=[Operand("type")],
      example="0x7f0000201010::istype struct node", help="""\
Gives the heap buffer containing addr the type named (spelled as for ::print: `struct node`,
`struct bucket *`, a typedef), overriding what the typegraph inferred, and propagates again:
its pointer members type the buffers they reach. The hint lasts as long as the graph (until
::typegraph -f or the target changes).""")
def istype(inv):
    if not inv.has_addr or not inv.args:
        raise UsageError("usage: addr::istype type")
    g = typegraph_of(inv.session)
    p = g.hint(inv.addr, " ".join(str(a) for a in inv.args))
    if wants_json(inv):
        emit(inv, "istype", addr=p.addr, base=p.base, type=p.type, count=p.count)
        return 0
    inv.print(_line(p))
    return 0


SORTS = {"bytes": lambda r: (-r["bytes"], r["type"]), "buffers": lambda r: (-r["buffers"],
                                                                            r["type"]),
         "type": lambda r: r["type"]}


def heap_stats_by_type(inv, sort: str = "bytes") -> int:
    """::heap_stats -t: bytes and buffers by inferred type, the unknown as one row."""
    if sort not in SORTS:
        raise UsageError(f"-s sorts by {', '.join(SORTS)}")
    g = typegraph_of(inv.session)
    rows = sorted(g.by_type(), key=SORTS[sort])
    total = {"buffers": sum(r["buffers"] for r in rows), "bytes": sum(r["bytes"] for r in rows)}
    if wants_json(inv):
        emit(inv, "heap_stats", types=rows, total=total)
        return 0
    width = max([len(r["type"]) for r in rows] + [20])
    rule = f"{'-' * width} {'-' * 9} {'-' * 12}"
    t = Table("{type:<%ds} {buffers:>9d} {bytes:>12d}" % width,
              head=[f"{'type':<{width}s} {'buffers':>9s} {'bytes':>12s}", rule])
    for r in rows:
        t.add(**r)
    t.foot = [rule, cells("{0:<%ds} {buffers:>9d} {bytes:>12d}" % width, "Total", **total)]
    t.print(inv)
    return 0
