"""The typegraph's containers (a buffer's struct by its size and a member: mdbpy/types/graph/
containers.py) on fixtures/typegraph_containers.c, built with glibc's malloc, with jemalloc,
with libumem's object caches and with its umem_alloc (each live and on a gcore), against the
fixture's report of every buffer's type and gdb's layout of struct conn: each conn of the
intrusive lists, reached only through `struct qlink *` to its members, is typed struct conn
by size and member and types its buf; the conn a `struct other *` points at is conflicting;
the jobs (two structs of their size hold a qlink there), the padded conns (no struct with
a qlink there fits) and the aligned tiny (jemalloc's 64-byte region may serve requests from
1; other structs hold a qlink at 8) stay unknown. Precision is 1.0 and recall (over the
buffers the fixture expects typed) is reported and exact. The allocators' request ranges
are checked against malloc.c's request2size, jemalloc's size classes under any alignment,
umem's caches and redzones and the simulator's kmalloc caches; the by-size listing is checked
against the index, and cached. (The fixture under libumem's malloc, its objects after malloc's
header: test_typegraph_umem_malloc.py.)"""

from __future__ import annotations

import pytest
from support import compile_fixture, engine_session, gcore, run_in
from test_typegraph import _reporting
from types_oracle import gdb_values

from mdbpy.types.graph import GRAPH_KEY

NCONNS, NJOBS, NPADDED, NTINY = 12, 6, 4, 1  # as the fixture makes them


ALLOCATOR = {"glibc": "ptmalloc", "jemalloc": "jemalloc", "umem": "umem", "umem_alloc": "umem"}


@pytest.fixture(scope="module", params=list(ALLOCATOR))
def built(request, build_dir, tmp_path_factory):
    """(allocator, executable, Running, report rows {addr: (usable, expect, type)})."""
    env = None
    if request.param == "glibc":
        exe = compile_fixture("typegraph_containers", build_dir)
    elif request.param == "jemalloc":
        from jemalloc_builds import compile_dwarf

        exe = compile_dwarf("typegraph_containers", build_dir)
    else:
        exe, env = _umem_build(build_dir, request.param)
    with _reporting(exe, tmp_path_factory, env=env) as (r, rows):
        yield request.param, exe, r, rows


def _umem_build(build_dir, which: str):
    """The fixture with -DUSE_UMEM (object caches; umem_alloc: -DUSE_UMEM_ALLOC too, from
    umem_zalloc) linked with the first libumem build (skips without one), and the environment
    that runs it with umem's debugging (redzones, audit)."""
    import os

    from umem_builds import DEBUG_ENV, builds, compile_c

    found = builds()
    if not found:
        pytest.skip("no libumem builds beside the repository (../shared/umem)")
    b = found[0]
    flags = ["-DUSE_UMEM"] + (["-DUSE_UMEM_ALLOC"] if which == "umem_alloc" else [])
    exe = compile_c("typegraph_containers.c", build_dir / f"typegraph_containers_{which}",
                    *flags, str(b.shared()), f"-Wl,-rpath,{b.lib}", build=b)
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "UMEM_OPTIONS")}
    return exe, {**env, **DEBUG_ENV}


@pytest.fixture(params=["live", "core"])
def session(request, built, tmp_path_factory):
    _, exe, r, _ = built
    if request.param == "live":
        with engine_session(r.pid) as s:
            yield s
        return
    core = gcore(r.pid, tmp_path_factory.mktemp("containers_core") / "core")
    with engine_session(core=core, exe=exe) as s:
        yield s


def test_conns_typed_by_size_and_member(session, built, record_property):
    which, _, r, rows = built
    run_in(session, "::typegraph")
    g = session.cache[GRAPH_KEY]
    assert sorted(g.base.tolist()) == sorted(rows)  # every buffer of the heap is reported
    typed = {b: g.whattype(b) for b in g.base.tolist() if g.whattype(b).type is not None}
    assert {b: (rows[b][1], rows[b][2]) for b in typed} == \
        {b: ("typed", p.type) for b, p in typed.items()}  # precision 1.0
    expected = [a for a, (_, e, _) in rows.items() if e == "typed"]
    recall = len(typed) / len(expected)
    record_property(f"containers_recall_{which}", recall)
    print(f"typegraph containers ({which}): precision 1.000, recall {recall:.3f}")
    assert recall == 1.0
    hows = {(p.type, p.how) for p in typed.values()}
    assert hows == {("struct conn", "size and member"), ("struct buf", "propagated")}
    wrong = g.whattype(r.addr("wrong"))
    assert wrong.type is None and wrong.conflict
    for a, (_, expect, _) in rows.items():
        if expect == "unknown" and a != r.addr("wrong"):
            assert not g.whattype(a).conflict, hex(a)


def test_statistics_and_whattype(session, built, tmp_path):
    which, exe, r, rows = built
    out = run_in(session, "::typegraph").splitlines()
    size = {a: u for a, (u, _, _) in rows.items()}
    conns = [a for a, (_, e, t) in rows.items() if (e, t) == ("typed", "struct conn")]
    bufs = [a for a, (_, e, t) in rows.items() if (e, t) == ("typed", "struct buf")]
    unknown = [a for a, (_, e, t) in rows.items() if e == "unknown" and t != "conflict"]
    assert len(conns) == len(bufs) == NCONNS - 1
    assert len(unknown) == NJOBS + 2 * NPADDED + NTINY + 1  # and the conflicting conn's buf

    def line(how, buffers):
        return f"{how:<16s} {len(buffers):>9d} {sum(size[a] for a in buffers):>12d}"

    assert out[:9] == [f"{'HOW':<16s} {'BUFFERS':>9s} {'BYTES':>12s}", line("root pointer", []),
                       line("propagated", bufs), line("vtable", []), line("user hint", []),
                       line("size and member", conns), line("unknown", unknown),
                       line("conflicting", [r.addr("wrong")]), line("total", list(rows))]
    # gdb's layout of struct conn says where link and lru are
    want = gdb_values([str(exe)], ["struct conn"], tmp_path, mode="layout")["struct conn"]
    link, lru = want["fields"]["link"] // 8, want["fields"]["lru"] // 8
    conn = r.addr("conn")
    assert run_in(session, f"{conn + lru + 8:x}::whattype -v") == (
        f"{conn + lru + 8:x} is {lru + 8:#x} bytes into struct conn (member lru.prev)\n"
        f"    in the {size[conn]:#x}-byte buffer at {conn:x}, typed by size and member\n")
    assert run_in(session, f"{conn + link:x}::whattype") == \
        f"{conn + link:x} is {link:#x} bytes into struct conn (member link.next)\n"
    job, padded = r.addr("job"), r.addr("padded")
    for a in (job + 8, padded + link):
        base = a - (8 if a == job + 8 else link)
        assert run_in(session, f"{a:x}::whattype") == \
            f"{a:x} is in the {size[base]:#x}-byte heap buffer at {base:x}, of unknown type\n"


def test_compiled_fixpoint_agrees_with_containers(session, built):
    """The fixture's graph, with its containers, solved by the reference and by the kernel."""
    from test_typegraph import _answers

    from mdbpy.heap.kernel import lib
    from mdbpy.types.graph.compiled import solve_compiled
    from mdbpy.types.graph.solve import solve

    run_in(session, "::typegraph")
    g = session.cache[GRAPH_KEY]
    args = (g.catalog, g.size, g.edges, g.roots, {}, g.containers)
    want = _answers(g.catalog, solve(*args))
    assert _answers(g.catalog, solve_compiled(lib(), *args)) == want
    assert want["types"].count("struct conn") == NCONNS - 1


def _requested(usable: int, typ: str) -> int:
    """The size the fixture asked for a buffer of its report: a job 40 bytes, a tiny 24
    (aligned to 64), a conn 48 (a padded one 112, in a buffer of at least that) or its buf
    48."""
    return {"struct job_a": 40, "struct tiny_a": 24}.get(typ, 112 if usable >= 112 else 48)


# what each allocator's request_sizes says of a buffer, from the fixture's request and the
# usable size the fixture reported
RULES = {
    # malloc.c's request2size: a chunk of usable size u serves [u - 15, u], and [u - 31, u]
    # counting a chunk realloc shrank or memalign trimmed (a rest under 32 bytes is kept); a
    # 48-byte chunk (u 40) may so hold a minimum chunk's request: from 0
    "glibc": lambda req, u: (0 if u <= 40 else u - 31, u),
    # a size class serves (the class below, class] of unaligned requests (48's is 32, 112's
    # 96), and aligned ones rounded up to their alignment into it: 64 from 1 (aligned to 64)
    "jemalloc": lambda req, u: ({48: 33, 64: 1, 112: 97}[u], u),
    # a cache made for an object size serves exactly that size
    "umem": lambda req, u: (u, u),
    # umem_alloc records the size asked for in the redzone (the tests run with UMEM_DEBUG)
    "umem_alloc": lambda req, u: (req, req),
}


def test_request_sizes_follow_the_allocators(built):
    """Each buffer's request range, as its allocator says (RULES)."""
    import numpy as np

    from mdbpy.heap.model import allocators

    which, _, r, rows = built
    with engine_session(r.pid) as s:
        (alloc,) = [a for a in allocators(s) if a.name == ALLOCATOR[which]]
        t = alloc.candidates()
        lo, hi = alloc.request_sizes(t)
        at = {b: (int(x), int(y)) for b, x, y in zip(t.base.tolist(), lo, hi)}
    assert {b: at[b] for b in rows} == {b: RULES[which](_requested(u, typ), u)
                                        for b, (u, _, typ) in rows.items()}
    assert np.all(hi >= lo)


def test_sizes_listing_is_cached(tmp_path, monkeypatch):
    """libc's debug file's by-size listing: the index's structs with their DWARF sizes and
    whether each ends with a flexible array, made once and then read from the cache beside
    the index, until the index's format changes."""
    import subprocess

    from mdbpy.types import index
    from mdbpy.types.dies import DwarfTypes

    monkeypatch.setenv("MDBPY_CACHE_DIR", str(tmp_path))
    note = subprocess.run(["readelf", "-n", "/lib/x86_64-linux-gnu/libc.so.6"],
                          capture_output=True, text=True).stdout
    bid = note.split("Build ID:")[1].split()[0]
    path = f"/usr/lib/debug/.build-id/{bid[:2]}/{bid[2:]}.debug"
    d = DwarfTypes(path, bid)
    sized = d.sized()
    assert sized == sorted(sized) and len(sized) > 400
    by_name = {(k, n): (size, flexible) for size, k, n, flexible in sized}
    assert by_name[("struct", "malloc_state")] == (d.type_named("struct", "malloc_state").size,
                                                   0)
    # struct file_handle { unsigned int handle_bytes; int handle_type; unsigned char
    # f_handle[]; }
    assert by_name[("struct", "file_handle")] == (8, 1)
    assert ("typedef", "pthread_mutex_t") in by_name  # a typedef of an anonymous union
    assert list(tmp_path.glob(f"**/{bid}.sizes"))
    again = DwarfTypes(path, bid)
    again._list_sizes = None  # a second listing would fail: it must come from the cache
    assert again.sized() == sized
    monkeypatch.setattr(index, "FORMAT_VERSION", index.FORMAT_VERSION + 1)
    stale = DwarfTypes(path, bid)
    stale._list_sizes = lambda: [[8, "struct", "relisted", 0]]
    assert stale.sized() == [[8, "struct", "relisted", 0]]


def test_sim_kmalloc_caches_serve_a_range(tmp_path):
    """The simulator's kmalloc picks the smallest kmalloc cache that fits (kmalloc(24) is a
    kmalloc-32 object, kmalloc(8) a kmalloc-8 one, kmalloc(100) a kmalloc-128 one): a
    kmalloc-N object serves the requests above the next smaller kmalloc size up to N; a named
    cache's object (conn, 96 bytes) exactly its size."""
    from mdbpy.heap.model import allocators
    from mdbpy.sim.build import build, write

    text = "\n".join(["program svc", "pid 1000", "seed 1", "cache conn 96", "global keep",
                      "thread main", "call main", "p = kmalloc 24", "q = kmalloc 8",
                      "r = kmalloc 100", "s = alloc conn", "call wait_for_work"]) + "\n"
    prog, core, _ = write(build(text), str(tmp_path))
    with engine_session(core=core, exe=prog) as s:
        (sim,) = [a for a in allocators(s) if a.name == "sim"]
        t = sim.candidates()
        lo, hi = sim.request_sizes(t)
        got = sorted((t.groups[g], int(x), int(y)) for g, x, y in zip(t.group, lo, hi))
    assert got == [("conn", 96, 96), ("kmalloc-128", 97, 128), ("kmalloc-32", 17, 32),
                   ("kmalloc-8", 1, 8)]


def test_jemalloc_lowest_requests_under_any_alignment():
    """sz_sa2u's classes of jemalloc's defaults (LG_QUANTUM 4, 4 KiB pages: 36 small classes
    up to 14336, large from 16384): a request rounded up to a multiple of its alignment (up
    to a page) lands in a small class from just above the multiple below it (96 from 65,
    aligned to 32; 8192 from 4097, aligned to a page; every power of two from 1); the first
    large class serves from 1 (larger alignments), the next ones above the class below."""
    from mdbpy_commands.jemalloc.allocator import lowest_requests

    small = [8, 16, 32, 48, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384, 448, 512, 640,
             768, 896, 1024, 1280, 1536, 1792, 2048, 2560, 3072, 3584, 4096, 5120, 6144, 7168,
             8192, 10240, 12288, 14336]
    classes = small + [16384, 20480, 24576]
    assert dict(zip(classes, lowest_requests(classes, len(small), 4096))) == {
        8: 1, 16: 1, 32: 1, 48: 33, 64: 1, 80: 65, 96: 65, 112: 97, 128: 1, 160: 129, 192: 129,
        224: 193, 256: 1, 320: 257, 384: 257, 448: 385, 512: 1, 640: 513, 768: 513, 896: 769,
        1024: 1, 1280: 1025, 1536: 1025, 1792: 1537, 2048: 1, 2560: 2049, 3072: 2049,
        3584: 3073, 4096: 1, 5120: 4097, 6144: 4097, 7168: 6145, 8192: 4097, 10240: 8193,
        12288: 8193, 14336: 12289, 16384: 1, 20480: 16385, 24576: 20481}
