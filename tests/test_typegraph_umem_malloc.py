"""The typegraph under libumem's malloc: fixtures/typegraph_containers.c built with
-DUMEM_MALLOC and linked with a real libumem build's malloc (every build beside the
repository, with and without UMEM_DEBUG), live and on a gcore. Each object follows malloc's
header (16 bytes: malloc.c's second tag, 8 bytes into its umem_alloc_N buffer), and the
allocator says so (UmemAllocator.object_offsets), so the typegraph types the objects: the
conns by size and member (their requests, from the headers, are exact), their bufs by
propagation, an oversize array (an oversize segment's header) and a posix_memalign'd block
(memalign's two tags) by their globals, with precision 1.0 and recall 1.0 against the
fixture's report. The conn whose
header's stat word the fixture overwrote is taken for a umem_alloc'd buffer (its object at the
buffer's start), stays unknown, and so does its buf. ::whattype, ::whatis, ::typegraph's and
::heap_stats -t's tables name the buffers and give offsets in the objects, exactly;
::findleaks names the leaked conn's type and -d prints it at its object."""

from __future__ import annotations

import os

import pytest
from support import engine_session, gcore, run_in
from test_typegraph import _engine, _json, _reporting
from test_typegraph_containers import NCONNS, NJOBS, NPADDED
from types_oracle import gdb_values
from umem_builds import DEBUG_ENV, build_params, compile_c

from mdbpy.types.graph import GRAPH_KEY

HEAD = 16  # malloc.c on LP64: the request plus two tags (> UMEM_SECOND_ALIGN), object at +16
CLASSES = (8, 16, 32, 48, 64, 80, 96, 112, 128)  # libumem's umem_alloc_sizes up to 128
LEAKED_FD = 4242  # as the fixture sets it


ROOTED = ("struct row", "struct block")  # the oversize array and the memalign'd block


def _buffer_size(request: int, typ: str) -> int:
    """The buffer malloc(request) lands in: the smallest umem_alloc class holding the request
    and its header; for the oversize array and the memalign'd block, a vmem segment of the
    request and the header (both multiples of the arenas' 8-byte quantum)."""
    if typ in ROOTED:
        return request + HEAD
    return min(c for c in CLASSES if c >= request + HEAD)


@pytest.fixture(scope="module", params=build_params("debug", "nodebug"))
def built(request, build_dir, tmp_path_factory):
    """(build, debug, exe, Running, report rows {addr: (requested, expect, type)}): the
    fixture linked with the build's libumem_malloc before libc."""
    b, variant = request.param
    exe = compile_c("typegraph_containers.c", build_dir / f"typegraph_umem_malloc_{b.name}",
                    "-DUMEM_MALLOC", str(b.shared("libumem_malloc")), str(b.shared()),
                    f"-Wl,-rpath,{b.lib}", build=b)
    env = {k: v for k, v in os.environ.items()
           if k not in ("LD_PRELOAD", "UMEM_OPTIONS", *DEBUG_ENV)}
    if variant == "debug":
        env.update(DEBUG_ENV)
    with _reporting(exe, tmp_path_factory, env=env) as (r, rows):
        yield b, variant == "debug", exe, r, rows


@pytest.fixture(params=["live", "core"])
def session(request, built, tmp_path_factory):
    _, _, exe, r, _ = built
    core = tmp_path_factory.mktemp("umem_malloc_core") / "core"
    with _engine(request.param, exe, r, lambda: gcore(r.pid, core)) as s:
        yield s


def _one(rows, typ: str) -> int:
    (a,) = [a for a, (_, _, t) in rows.items() if t == typ]
    return a


def _libumem_own(g, rows, build, debug) -> dict:
    """{start: placement} of the graph's buffers that are not the fixture's: v2's per-thread
    cache without UMEM_DEBUG (umem_alloc'd by libumem for the one thread that mallocs, typed
    struct umem_ptc from its __thread pointer), nothing else."""
    ours = set(rows) | {a - HEAD for a in rows}
    own = {a: g.whattype(a) for a in g.base.tolist() if a not in ours}
    assert {p.type for p in own.values()} == ({"struct umem_ptc"} if build.v2 and not debug
                                              else set())
    return own


def _layout(exe, tmp_path) -> dict:
    """gdb's offsets of struct conn's members, in bytes."""
    layout = gdb_values([str(exe)], ["struct conn"], tmp_path, mode="layout")["struct conn"]
    return {k: v // 8 for k, v in layout["fields"].items()}  # gdb gives bits


def test_objects_typed_after_the_header(session, built, record_property):
    """Every buffer of the heap is the fixture's; the objects' starts are the graph's rows
    (the smashed conn's: its buffer's start); precision 1.0, recall 1.0."""
    b, debug, _, r, rows = built
    run_in(session, "::typegraph")
    g = session.cache[GRAPH_KEY]
    smashed = _one(rows, "smashed")
    starts = {a - HEAD if a == smashed else a for a in rows}
    own = _libumem_own(g, rows, b, debug)
    assert sorted(g.base.tolist()) == sorted(starts | set(own))
    assert {int(x) + int(h) for x, h in zip(g.starts, g.head)} == starts | set(own)
    typed = {a: g.whattype(a) for a in rows if g.whattype(a).type is not None}
    assert {a: (rows[a][1], rows[a][2]) for a in typed} == \
        {a: ("typed", p.type) for a, p in typed.items()}  # precision 1.0
    expected = [a for a, (_, e, _) in rows.items() if e == "typed"]
    recall = len(typed) / len(expected)
    record_property(f"umem_malloc_recall_{b.name}_{debug}", recall)
    assert recall == 1.0
    assert {(p.type, p.how) for p in typed.values()} == {
        ("struct conn", "size and member"), ("struct buf", "propagated"),
        ("struct row", "root pointer"), ("struct block", "root pointer")}
    assert g.whattype(r.addr("wrong")).conflict
    p = g.whattype(smashed)
    assert (p.type, p.conflict, p.head, p.base) == (None, False, 0, smashed - HEAD)


def test_typegraph_and_heap_stats_count_buffers(session, built):
    """The tables count each buffer's bytes (its header and slack included)."""
    b, debug, _, r, rows = built
    out = run_in(session, "::typegraph").splitlines()
    own = _libumem_own(session.cache[GRAPH_KEY], rows, b, debug)
    size = {a: _buffer_size(u, t) for a, (u, _, t) in rows.items()}
    size.update({a: p.size for a, p in own.items()})
    conns = [a for a, (_, e, t) in rows.items() if (e, t) == ("typed", "struct conn")]
    bufs = [a for a, (_, e, t) in rows.items() if (e, t) == ("typed", "struct buf")]
    unknown = [a for a, (_, e, t) in rows.items() if e == "unknown" and t != "conflict"]
    rooted = {t: [a for a, (_, _, x) in rows.items() if x == t] for t in ROOTED}
    assert len(conns) == len(bufs) == NCONNS - 1 and [len(a) for a in rooted.values()] == [1, 1]
    # the jobs, the padded conns and their bufs, the conflicting conn's buf, the smashed
    # conn and its buf, the leaked conn
    assert len(unknown) == NJOBS + 2 * NPADDED + 1 + 3

    def line(how, buffers):
        return f"{how:<16s} {len(buffers):>9d} {sum(size[a] for a in buffers):>12d}"

    roots = [*own, *rooted["struct row"], *rooted["struct block"]]
    assert out[:9] == [f"{'HOW':<16s} {'BUFFERS':>9s} {'BYTES':>12s}", line("root pointer", roots),
                       line("propagated", bufs), line("vtable", []), line("user hint", []),
                       line("size and member", conns), line("unknown", unknown),
                       line("conflicting", [r.addr("wrong")]), line("total", list(size))]
    unknown.append(r.addr("wrong"))
    w = 20
    kinds = [("<unknown>", unknown), ("struct buf", bufs), ("struct conn", conns)]
    kinds += [("struct umem_ptc", list(own))] if own else []
    kinds += list(rooted.items())
    kinds.sort(key=lambda k: (-sum(size[x] for x in k[1]), k[0]))
    assert run_in(session, "::heap_stats -t").splitlines() == [
        f"{'type':<{w}s} {'buffers':>9s} {'bytes':>12s}", f"{'-' * w} {'-' * 9} {'-' * 12}",
        *(f"{t:<{w}s} {len(a):>9d} {sum(size[x] for x in a):>12d}" for t, a in kinds),
        f"{'-' * w} {'-' * 9} {'-' * 12}", f"{'Total':<{w}s} {len(size):>9d} "
        f"{sum(size.values()):>12d}"]


def test_whattype_and_whatis_name_the_buffer(session, built, tmp_path):
    """Offsets are the object's (gdb's layout of struct conn), the buffer is named, and an
    address in the header says so."""
    _, debug, exe, r, rows = built
    fields = _layout(exe, tmp_path)
    link, lru = fields["link"], fields["lru"]
    run_in(session, "::typegraph")
    conn, smashed = r.addr("conn"), _one(rows, "smashed")
    buf = conn - HEAD
    (umem,) = [a for a in session.allocators() if a.name == "umem"]
    rec = umem.whatis(conn).record
    ctl = f"bufctl {rec.addr:x} " if debug else ""
    assert (rec is not None) == debug
    where = (f"    in the 0x40-byte buffer at {buf:x}, the object at {conn:x} after a 0x10-byte "
             "header, typed by size and member\n")
    a = conn + lru + 8
    assert run_in(session, f"{a:x}::whattype -v") == \
        f"{a:x} is {lru + 8:#x} bytes into struct conn (member lru.prev)\n" + where
    assert run_in(session, f"{conn - 8:x}::whattype") == \
        f"{conn - 8:x} is 0x8 bytes before struct conn (in the allocator's header)\n"
    assert run_in(session, f"{conn + link:x}::whatis -q") == (
        f"{conn + link:x} is {buf:x}+{link + HEAD:x}, {ctl}allocated from umem_alloc_64, "
        f"{link:#x} bytes into struct conn (member link.next)\n")
    hit = _json(session, f"{conn + link:x}::whatis")["hits"][0]
    assert (hit["base"], hit["offset"], hit["object"], hit["object_offset"], hit["member"]) == \
        (buf, link + HEAD, conn, link, "link.next")  # the member is the object's
    assert run_in(session, f"{buf:x}::whatis -q") == (
        f"{buf:x} is {ctl}allocated from umem_alloc_64, 0x10 bytes before struct conn (in the "
        "allocator's header)\n")
    a = smashed + link
    assert run_in(session, f"{a:x}::whattype") == \
        f"{a:x} is in the 0x40-byte heap buffer at {smashed - HEAD:x}, of unknown type\n"
    big, block = _one(rows, "struct row"), _one(rows, "struct block")
    assert run_in(session, f"{big + 3 * 16 + 8:x}::whattype -v") == (
        f"{big + 56:x} is 0x38 bytes into struct row [20000] (member [3].value)\n"
        f"    in the {320000 + HEAD:#x}-byte buffer at {big - HEAD:x}, the object at {big:x} "
        "after a 0x10-byte header, typed by root pointer\n")
    assert run_in(session, f"{block + 8:x}::whatis -q").endswith(
        "allocated from umem_memalign, 0x8 bytes into struct block (member words[1])\n")


def test_findleaks_names_and_prints_the_object(session, built, tmp_path):
    """The leaked conn, given its type (::istype: nothing reaches it), is named in the table
    and printed by -d from its object (fd at the object's start, after the header)."""
    _, _, exe, _, rows = built
    leaked = _one(rows, "leaked")
    run_in(session, "::typegraph")
    assert run_in(session, f"{leaked:x}::istype struct conn") == \
        f"{leaked:x} is 0x0 bytes into struct conn (member fd)\n"
    table = run_in(session, "::findleaks").splitlines()
    assert [x.split()[3:5] for x in table if x.startswith("0000")] == [["struct", "conn"]]
    out = run_in(session, "::findleaks -d").splitlines()
    at = out.index("    as struct conn:")
    assert out[at + 1:at + 4] == ["        {", f"            fd = {LEAKED_FD:#x}",
                                  "            in = 0"]
    assert out[-2:] == ["    unreferenced (heads of leaked structures): 1 of 1",
                        f"        {leaked - HEAD:x}"]


def _offsets_and_requests(s) -> dict:
    """{object start: (header length, lowest request, highest request)} of every umem
    candidate, as object_offsets and request_sizes say."""
    (umem,) = [a for a in s.allocators() if a.name == "umem"]
    t = umem.candidates()
    head = umem.object_offsets(t)
    lo, hi = umem.request_sizes(t)
    return {int(b) + int(h): (int(h), int(x), int(y)) for b, h, x, y in zip(t.base, head, lo, hi)}


def test_offsets_and_requests_of_the_buffers(built):
    """object_offsets: malloc's 16-byte header in every buffer but the smashed one; the
    requests: the size each malloc asked for, exactly; the smashed buffer's those of a
    umem_alloc'd buffer of umem_alloc_64 (with UMEM_DEBUG, the size the redzone recorded:
    the request and the header)."""
    _, debug, _, r, rows = built
    smashed = _one(rows, "smashed")
    with engine_session(r.pid) as s:
        got = _offsets_and_requests(s)
    want = {a: (HEAD, u, u) for a, (u, _, _) in rows.items() if a != smashed}
    want[smashed - HEAD] = (0, 64, 64) if debug else (0, 49, 64)
    assert {a: got[a] for a in want} == want


@pytest.mark.parametrize("build", build_params())
def test_one_tag_header_and_empty_malloc(build, build_dir):
    """malloc of up to 8 bytes gets one 8-byte tag at the buffer's start (umem_alloc_16), a
    16-byte one its tag 8 bytes into a 16-byte header (umem_alloc_32); malloc(0)'s empty
    object (the end of a buffer that is all tag) is left at its buffer's start: the offsets
    are 8, 16 and 0, the requests 8 and 16, and the typegraph types each struct at the
    address malloc returned, live and as a core."""
    from support import start_fixture

    exe = compile_c("umem_small_malloc.c", build_dir / f"umem_small_malloc_{build.name}",
                    str(build.shared("libumem_malloc")), str(build.shared()),
                    f"-Wl,-rpath,{build.lib}", build=build)
    env = {k: v for k, v in os.environ.items()
           if k not in ("LD_PRELOAD", "UMEM_OPTIONS", *DEBUG_ENV)}
    r = start_fixture(exe, env={**env, **DEBUG_ENV})
    try:
        small, pair, empty = (r.addr(k) for k in ("small", "pair", "empty"))
        core = gcore(r.pid, build_dir / f"umem_small_malloc_{build.name}.core")
        for opened in (engine_session(r.pid), engine_session(core=core, exe=exe)):
            with opened as s:
                got = _offsets_and_requests(s)
                assert got[small] == (8, 8, 8) and got[pair] == (16, 16, 16)
                # malloc(0): an 8-byte umem_alloc_8 buffer, all tag; its empty object (the
                # buffer's end) is not moved to: the buffer keeps offset 0
                assert got[empty - 8][0] == 0
                run_in(s, "::typegraph")
                g = s.cache[GRAPH_KEY]
                assert (g.whattype(small).type, g.whattype(small).offset) == \
                    ("struct small", 0)
                assert (g.whattype(pair + 8).type, g.whattype(pair + 8).member) == \
                    ("struct pair", "s")
                assert g.whattype(small - 8).phrase().startswith("0x8 bytes before")
    finally:
        r.stop()
