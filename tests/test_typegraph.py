"""The typegraph (::typegraph, ::whattype, ::istype, ::heap_stats -t, and the types ::whatis and
::findleaks name) on fixtures/typegraph.c, live and on a gcore, against the fixture's own report
of every buffer's address, usable size and true type: every buffer typed has its true type
(precision 1.0), recall over the buffers typed pointers reach is reported and at least 0.9,
the buffer reached as two incompatible types, the one behind a void *, and the one behind a
union whose members disagree stay unknown; outputs are compared exactly. fixtures/typegraph_tls.c
(with its dlopen'd library) has structs reached only from a worker thread's __thread variables:
they are typed from those roots, live, on gdb's core and on mdbpy's own. The compiled fixpoint
(compiled.py, kernel.c) gives solve.py's answer exactly: on the fixture, with and without a
hint, on random graphs of hand-made types, and when its lists must grow."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from contextlib import contextmanager

import pytest
from support import compile_fixture, engine_session, gcore, run_in, start_fixture

from mdbpy.errors import MdbError
from mdbpy.types.graph import GRAPH_KEY
from mdbpy.types.graph.evidence import demangle_type
from mdbpy.types.value import Value

ITEM_SIZE = 40  # struct item: long id; char name[24]; struct node *owner


@contextmanager
def _reporting(exe, tmp_path_factory, *args, env=None):
    """(Running, its report's rows {addr: (usable, expect, type)} in the fixture's order) of a
    fixture started with a report file (and args, in env); stopped after."""
    report = tmp_path_factory.mktemp(exe.name) / "report"
    r = start_fixture(exe, report, *args, env=env)
    try:
        rows = {}
        for line in report.read_text().splitlines():
            addr, usable, expect, typ = line.split(None, 3)
            rows[int(addr, 16)] = (int(usable), expect, typ)
        yield r, rows
    finally:
        r.stop()


def _engine(where: str, exe, r, core_of):
    """An engine_session on the live process, or on the core that core_of() gives."""
    return engine_session(r.pid) if where == "live" else engine_session(core=core_of(), exe=exe)


@pytest.fixture(scope="module")
def tg(build_dir, tmp_path_factory):
    """(executable, Running, report rows {addr: (usable, expect, type)} in its order)."""
    exe = compile_fixture("typegraph", build_dir)
    with _reporting(exe, tmp_path_factory) as (r, rows):
        yield exe, r, rows


@pytest.fixture(scope="module")
def tg_core(tg, tmp_path_factory):
    exe, r, _ = tg
    return gcore(r.pid, tmp_path_factory.mktemp("typegraph_core") / "core")


@pytest.fixture(params=["live", "core"])
def session(request, tg):
    exe, r, _ = tg
    with _engine(request.param, exe, r, lambda: request.getfixturevalue("tg_core")) as s:
        yield s


def _by(rows, expect=None):
    return [(a, u, t) for a, (u, e, t) in rows.items() if expect is None or e == expect]


def test_precision_and_recall(session, tg, record_property):
    _, r, rows = tg
    run_in(session, "::typegraph")
    g = session.cache[GRAPH_KEY]
    assert len(g.base) == len(rows)  # the fixture reports every buffer of its heap
    typed = correct = 0
    for i, base in enumerate(g.base.tolist()):
        p = g.whattype(base)
        if p.type is None:
            continue
        typed += 1
        usable, expect, truth = rows[base]
        assert (p.type, expect) == (truth, "typed"), hex(base)
        correct += 1
    precision = correct / typed
    recall = correct / len(_by(rows, "typed"))
    record_property("typegraph_recall", recall)
    print(f"typegraph: precision {precision:.3f}, recall {recall:.3f}")
    assert precision == 1.0 and recall >= 0.9
    conflict, secret, either = r.addr("conflict"), r.addr("secret"), r.addr("either")
    assert g.whattype(conflict).conflict and g.whattype(conflict).type is None
    for a in (secret, either):
        assert g.whattype(a).type is None and not g.whattype(a).conflict


def test_typegraph_statistics(session, tg):
    _, r, rows = tg
    out = run_in(session, "::typegraph").splitlines()
    typed = _by(rows, "typed")
    conflict = [(a, u) for a, u, t in _by(rows) if t == "conflict"]
    unknown = [(a, u) for a, u, t in _by(rows, "unknown") if t != "conflict"]
    # four globals reach the heap typed: g_items, g_table, g_list (the last node made: the
    # list is built by prepending) and g_tree (the first tnode made: the root); main's local
    # only_local, a typed pointer on the parked frame's stack; and three function-scope
    # variables: fill_cache's free_slots (the fifth slot made, the list's head) and the
    # inlined spare_slot's spare (the sixth), and open_conns's __thread conns (the first cnode)
    size = {a: u for a, u, _ in _by(rows)}
    first = {}
    for a, u, t in typed:
        first.setdefault(t, []).append(a)
    nodes, tnodes, slots = first["struct node"], first["struct tnode"], first["struct slot"]
    roots = [r.addr("items"), r.addr("table"), nodes[-1], tnodes[0], r.addr("local"),
             slots[4], slots[5], first["struct cnode"][0]]
    root_bytes = sum(size[a] for a in roots)
    total = sum(size.values())
    typed_bytes = sum(u for _, u, _ in typed)
    expect = [
        f"{'HOW':<16s} {'BUFFERS':>9s} {'BYTES':>12s}",
        f"{'root pointer':<16s} {len(roots):>9d} {root_bytes:>12d}",
        f"{'propagated':<16s} {len(typed) - len(roots):>9d} {typed_bytes - root_bytes:>12d}",
        f"{'vtable':<16s} {0:>9d} {0:>12d}",
        f"{'user hint':<16s} {0:>9d} {0:>12d}",
        f"{'size and member':<16s} {0:>9d} {0:>12d}",
        f"{'unknown':<16s} {len(unknown):>9d} {sum(u for _, u in unknown):>12d}",
        f"{'conflicting':<16s} {1:>9d} {conflict[0][1]:>12d}",
        f"{'total':<16s} {len(rows):>9d} {total:>12d}",
    ]
    assert out[:9] == expect
    pct = f"{100.0 * len(typed) / len(rows):.1f}%"
    bpct = f"{100.0 * typed_bytes / total:.1f}%"
    assert re.fullmatch(rf"typegraph: {len(typed)} of {len(rows)} buffers \({re.escape(pct)}\), "
                        rf"{typed_bytes} of {total} bytes \({re.escape(bpct)}\) typed as 8 "
                        r"types, from \d+ typed variables", out[9]), out[9]
    js = _json(session, "::typegraph")
    assert js["buffers"] == len(rows) and js["rows"][0] == {
        "how": "root pointer", "buffers": len(roots), "bytes": root_bytes}


def _json(session, cmd):
    session.options["json"] = True
    try:
        return json.loads(run_in(session, cmd))
    finally:
        session.options["json"] = False


def test_whattype_exact(session, tg):
    _, r, rows = tg
    items, cursor, table = r.addr("items"), r.addr("cursor"), r.addr("table")
    n_items = rows[items][0] // ITEM_SIZE
    n_table = rows[table][0] // 8
    at = items + ITEM_SIZE + 32
    assert run_in(session, f"{at:x}::whattype") == \
        f"{at:x} is {at - items:#x} bytes into struct item [{n_items}] (member [1].owner)\n"
    assert run_in(session, f"{cursor + 12:x}::whattype -v") == (
        f"{cursor + 12:x} is {cursor + 12 - items:#x} bytes into struct item [{n_items}] "
        f"(member [7].name[4])\n"
        f"    in the {rows[items][0]:#x}-byte buffer at {items:x}, typed by root pointer\n")
    assert run_in(session, f"{table + 16:x}::whattype") == \
        f"{table + 16:x} is 0x10 bytes into struct bucket * [{n_table}] (member [2])\n"
    node = next(a for a, u, t in _by(rows, "typed") if t == "struct node")
    assert run_in(session, f"{node + 8:x}::whattype -v") == (
        f"{node + 8:x} is 0x8 bytes into struct node (member value)\n"
        f"    in the {rows[node][0]:#x}-byte buffer at {node:x}, typed by propagated\n")
    secret, conflict = r.addr("secret"), r.addr("conflict")
    assert run_in(session, f"{secret:x}::whattype") == \
        f"{secret:x} is in the {rows[secret][0]:#x}-byte heap buffer at {secret:x}, of " \
        "unknown type\n"
    assert run_in(session, f"{conflict + 8:x}::whattype") == \
        f"{conflict + 8:x} is in the {rows[conflict][0]:#x}-byte heap buffer at " \
        f"{conflict:x}, of unknown type (conflicting evidence)\n"
    assert "not in an allocated heap buffer" in _err(session, "0::whattype")
    local = r.addr("local")  # typed from main's frame: a local on the parked thread's stack
    assert run_in(session, f"{local:x}::whattype -v") == (
        f"{local:x} is 0x0 bytes into struct tnode (member left)\n"
        f"    in the {rows[local][0]:#x}-byte buffer at {local:x}, typed by root pointer\n")


def test_function_scope_variables_are_roots(session, tg):
    """fill_cache's free list, the inlined spare_slot's slot and open_conns's tree are reached
    only from function-scope variables (a static in a nested block, a static of an inlined
    function, a function-scope __thread): every buffer of them is typed, the heads as roots."""
    _, _, rows = tg
    mine = [(a, u, t) for a, u, t in _by(rows, "typed") if t in ("struct slot", "struct cnode")]
    assert [t for _, _, t in mine] == ["struct slot"] * 6 + ["struct cnode"] * 7
    slots = [a for a, _, t in mine if t == "struct slot"]
    conns = [a for a, _, t in mine if t == "struct cnode"]
    # they print by their ELF symbols (gcc's `name.N`), the __thread one as the current
    # thread's copy, with their DWARF types (a glibc chunk is the usable size + 8)
    symbols = {line.split("|")[-1].split(".")[0]: line.split("|")[-1]
               for line in run_in(session, "::nm").splitlines() if "|LOCL |" in line}
    printed = [(symbols[name],
                f"{typ} * {head:#x} (allocated from chunk {rows[head][0] + 8:#x})\n")
               for name, typ, head in (("free_slots", "struct slot", slots[4]),
                                       ("spare", "struct slot", slots[5]),
                                       ("conns", "struct cnode", conns[0]))]
    # printed after ::typegraph, whose allocators made the session's type space for the
    # Program (which selects no thread): the __thread copy is the selected thread's
    run_in(session, "::typegraph")
    for sym, want in printed:
        assert run_in(session, f"{sym}::print -t") == want
    g = session.cache[GRAPH_KEY]
    assert [g.whattype(a).type for a, _, _ in mine] == [t for _, _, t in mine]
    for a, how in ((slots[4], "root pointer"), (slots[5], "root pointer"),
                   (slots[0], "propagated")):
        assert run_in(session, f"{a + 8:x}::whattype -v") == (
            f"{a + 8:x} is 0x8 bytes into struct slot (member gen)\n"
            f"    in the {rows[a][0]:#x}-byte buffer at {a:x}, typed by {how}\n")
    for a, how in ((conns[0], "root pointer"), (conns[-1], "propagated")):
        assert run_in(session, f"{a + 16:x}::whattype -v") == (
            f"{a + 16:x} is 0x10 bytes into struct cnode (member fd)\n"
            f"    in the {rows[a][0]:#x}-byte buffer at {a:x}, typed by {how}\n")


def _err(session, cmd):
    session.err.seek(0)
    session.err.truncate()
    run_in(session, cmd)
    return session.err.getvalue()


def test_istype_propagates(session, tg):
    _, r, rows = tg
    either = r.addr("either")
    order = list(rows)
    child = order[order.index(either) + 1]  # the fixture's next buffer: either's left child
    assert run_in(session, f"{child:x}::whattype").endswith("of unknown type\n")
    assert run_in(session, f"{either:x}::istype struct tnode") == \
        f"{either:x} is 0x0 bytes into struct tnode (member left)\n"
    assert run_in(session, f"{child + 16:x}::whattype -v") == (
        f"{child + 16:x} is 0x10 bytes into struct tnode (member key)\n"
        f"    in the {rows[child][0]:#x}-byte buffer at {child:x}, typed by propagated\n")
    out = run_in(session, "::typegraph").splitlines()
    assert out[4].split() == ["user", "hint", "1", str(rows[either][0])]
    assert "no such type" in _err(session, f"{either:x}::istype struct nosuch")
    assert "does not fit" in _err(session, f"{either:x}::istype struct item [2]")


def test_heap_stats_by_type(session, tg):
    _, _, rows = tg
    groups: dict = defaultdict(lambda: [0, 0])
    for _, (u, e, t) in rows.items():
        key = t if e == "typed" else "<unknown>"
        groups[key][0] += 1
        groups[key][1] += u
    want = sorted(({"type": k, "buffers": c, "bytes": b} for k, (c, b) in groups.items()),
                  key=lambda x: (-x["bytes"], x["type"]))
    w = max(20, *(len(x["type"]) for x in want))
    rule = f"{'-' * w} {'-' * 9} {'-' * 12}"
    text = [f"{'type':<{w}s} {'buffers':>9s} {'bytes':>12s}", rule]
    text += [f"{x['type']:<{w}s} {x['buffers']:>9d} {x['bytes']:>12d}" for x in want]
    text += [rule, f"{'Total':<{w}s} {len(rows):>9d} {sum(u for u, _, _ in rows.values()):>12d}"]
    assert run_in(session, "::heap_stats -t").splitlines() == text
    js = _json(session, "::heap_stats -t")
    assert js["types"] == want and js["total"]["buffers"] == len(rows)
    by_count = _json(session, "::heap_stats -t -s buffers")["types"]
    assert [x["buffers"] for x in by_count] == sorted((x["buffers"] for x in want), reverse=True)


def test_whatis_and_findleaks_name_types(session, tg):
    _, r, rows = tg
    items = r.addr("items")
    at = items + ITEM_SIZE + 32
    before = run_in(session, f"{at:x}::whatis")
    assert "bytes into" not in before
    run_in(session, "::typegraph")
    n_items = rows[items][0] // ITEM_SIZE
    assert run_in(session, f"{at:x}::whatis") == before.rstrip("\n") + \
        f", {at - items:#x} bytes into struct item [{n_items}] (member [1].owner)\n"
    leaked = next(a for a, (u, e, t) in rows.items() if t == "leaked")
    assert "TYPE" not in run_in(session, "::findleaks")
    run_in(session, f"{leaked:x}::istype struct node")
    out = run_in(session, "::findleaks").splitlines()
    assert out[0].split() == ["CACHE", "LEAKED", "BUFFER", "TYPE", "CALLER"]
    assert out[1].split()[1:] == ["1", f"{leaked:016x}", "struct", "node", "?"]
    # -d prints the representative as ::print does
    shown = run_in(session, f"{leaked:x}::print struct node").splitlines()
    long = run_in(session, "::findleaks -d").splitlines()
    k = long.index("    as struct node:")
    assert long[k + 1:k + 1 + len(shown)] == [f"        {x}" for x in shown]
    # and the JSON of both says the same
    hit = _json(session, f"{at:x}::whatis")["hits"][0]
    assert (hit["type"], hit["member"]) == (f"struct item [{n_items}]", "[1].owner")
    assert (hit["object"], hit["object_offset"]) == (hit["base"], hit["offset"])  # no header
    groups = _json(session, "::findleaks")["leaks"]
    assert [(g["addr"], g["type"]) for g in groups] == [(leaked, "struct node")]


@pytest.mark.parametrize("mangled,name", [
    ("6Circle", "Circle"), ("N6shapes6CircleE", "shapes::Circle"),
    ("St9exception", "std::exception"), ("N12_GLOBAL__N_14ImplE", "(anonymous namespace)::Impl"),
    ("NSt6vectorIiEE", None), ("6Circl", None)])
def test_demangle_vtable_names(mangled, name):
    assert demangle_type(mangled) == name


# -- thread-local roots: a worker's __thread pointer -------------------------------------------

@pytest.fixture(scope="module")
def tls(build_dir, tmp_path_factory):
    """(executable, Running, report rows {addr: (usable, type)}) of fixtures/typegraph_tls.c,
    which loads fixtures/typegraph_tls_lib.c with dlopen."""
    exe = compile_fixture("typegraph_tls", build_dir)
    lib = compile_fixture("typegraph_tls_lib", build_dir, flags=("-g", "-O0", "-shared", "-fPIC"),
                          out_name="libtypegraph_tls.so", libs=())
    with _reporting(exe, tmp_path_factory, lib) as (r, rows):
        yield exe, r, {a: (u, t) for a, (u, _, t) in rows.items()}


@pytest.fixture(scope="module")
def tls_cores(tls, tmp_path_factory):
    """{'gcore': gdb's core, 'mdbpy': the core mdbpy's own ::gcore writes} of the fixture."""
    exe, r, _ = tls
    at = tmp_path_factory.mktemp("typegraph_tls_cores")
    with engine_session(r.pid) as s:
        assert run_in(s, f"::gcore -o {at / 'mdbpy'}") == f"{at / 'mdbpy'}.{r.pid} dumped\n"
    return {"gcore": gcore(r.pid, at / "gdb"), "mdbpy": at / f"mdbpy.{r.pid}"}


@pytest.fixture(params=["live", "gcore", "mdbpy"])
def tls_session(request, tls):
    exe, r, _ = tls
    with _engine(request.param, exe, r,
                 lambda: request.getfixturevalue("tls_cores")[request.param]) as s:
        yield s


def test_thread_local_pointers_are_roots(tls_session, tls):
    """The worker's t_session (the executable's static TLS block) is the only pointer to its
    struct session, and the worker's t_lib (the dlopen'd library's dynamic block, found through
    the thread's DTV) the only one to its struct lib_state: each struct is typed by that root
    (its slot is the worker's copy of the variable), and what it points at by propagation.
    Nothing else in the heap is typed."""
    _, r, rows = tls
    s = tls_session
    out = run_in(s, "::typegraph").splitlines()
    sess, peer = r.addr("session"), r.addr("peer")
    state, item = r.addr("lib_state"), r.addr("lib_item")
    assert rows == {sess: (40, "struct session"), peer: (24, "struct peer"),
                    state: (24, "struct lib_state"), item: (24, "struct lib_item")}
    assert out[1].split() == ["root", "pointer", "2", str(40 + 24)]
    assert out[2].split() == ["propagated", "2", str(24 + 24)]
    for buf, off, member, how in ((sess, 8, "id", "root pointer"), (peer, 8, "back", "propagated"),
                                  (state, 8, "n", "root pointer"), (item, 0, "v", "propagated")):
        size, typ = rows[buf]
        assert run_in(s, f"{buf + off:x}::whattype -v") == (
            f"{buf + off:x} is {off:#x} bytes into {typ} (member {member})\n"
            f"    in the {size:#x}-byte buffer at {buf:x}, typed by {how}\n")
    g = s.cache[GRAPH_KEY]
    for buf, slot in ((sess, "slot"), (state, "lib_slot")):
        assert g.roots.slot[g.roots.dst == g.row(buf)].tolist() == [r.addr(slot)]
    typed = {int(b) for b in g.base.tolist() if g.whattype(int(b)).type is not None}
    assert typed == set(rows)


def test_thread_local_value_in_the_current_thread(tls_session, tls):
    """A __thread variable by name is the current thread's copy, in an expression (`t_count`
    is its address), to ::print without a type, and in the Python API's value(): t_count is 1
    in the main thread and 2 in the worker, each at the address the thread itself printed;
    the library's t_lib has a copy in the worker only."""
    from mdbpy.types.space import space_of

    _, r, _ = tls
    s = tls_session
    space = space_of(s)
    main, worker = (t.tid for t in s.target.threads())
    assert worker == int(r.info["worker"])
    for tid, addr, count in ((main, r.addr("main_count"), 1), (worker, r.addr("count"), 2)):
        run_in(s, f"0t{tid}::thread")
        assert run_in(s, "t_count=K").split() == [f"{addr:x}"]
        assert run_in(s, "t_count::print -t") == f"int {count:#x}\n"
        t, at = space.global_var("t_count")
        assert (t.spelled(), at) == ("int", addr)
        assert int(Value(space, t, at)) == count
    sess, state = r.addr("session"), r.addr("lib_state")
    assert run_in(s, "t_session::print -tn") == f"struct session * {sess:#x}\n"
    assert run_in(s, "libtypegraph_tls.so`t_lib::print -n") == f"{state:#x}\n"
    t, at = space.global_var("t_lib")  # the library's dynamic block, through the DTV
    assert (t.spelled(), at) == ("struct lib_state *", r.addr("lib_slot"))
    assert int(Value(space, t, at)) == state
    run_in(s, f"0t{main}::thread")  # the main thread never touched t_lib: no block
    assert run_in(s, "t_session::print -n") == "0\n"
    assert _err(s, "t_lib::print") == ("mdbpy: t_lib is thread-local, and libtypegraph_tls.so's "
                                       f"TLS block cannot be placed in thread {main}\n")
    with pytest.raises(MdbError) as e:
        space.global_var("t_lib")
    assert str(e.value) == ("t_lib is thread-local, and libtypegraph_tls.so's TLS block cannot "
                            f"be placed in thread {main}")


def test_tls_slots_against_other_objects_are_not_theirs(build_dir):
    """A library's initial-exec slot of a variable another object defines (libGL's of
    libGLdispatch's _glapi_tls_Current) holds that object's offset: it says nothing of the
    library's own block, and is left out; the slot of its own variable is kept, and so is the
    module-id slot of its own general-dynamic variable."""
    import subprocess

    from mdbpy.symbols import tls

    src = build_dir / "tls_other.c"
    src.write_text(
        "extern __thread int theirs __attribute__((tls_model(\"initial-exec\")));\n"
        "static __thread long ours __attribute__((tls_model(\"initial-exec\")));\n"
        "__thread long mine;\n"
        "long get(void) { return theirs + ours++ + mine; }\n")
    lib = build_dir / "libtls_other.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O1", "-o", str(lib), str(src)], check=True)

    class Obj:
        file, bias = str(lib), 0x1000

    relocs = subprocess.run(["readelf", "-rW", str(lib)], capture_output=True, text=True,
                            check=True).stdout
    tpoff = [line.split() for line in relocs.splitlines() if "R_X86_64_TPOFF64" in line]
    assert sorted(len(r) for r in tpoff) == [4, 7]  # ours (no symbol), theirs (by name)
    ours = next(r for r in tpoff if len(r) == 4)
    assert tls.tpoff_slots(Obj) == [(int(ours[0], 16) + 0x1000, int(ours[3], 16))]
    assert len(tls._slots(Obj, tls.R_X86_64_DTPMOD64)) == 1


# -- C++: the vtable gives the dynamic type ------------------------------------------------------

@pytest.fixture(scope="module")
def cpp(build_dir, tmp_path_factory):
    import subprocess

    from support import FIXTURES

    exe = build_dir / "typegraph_cpp"
    subprocess.run(["g++", "-g", "-O0", "-o", str(exe), str(FIXTURES / "typegraph_cpp.cc")],
                   check=True, capture_output=True, text=True)
    with _reporting(exe, tmp_path_factory) as (r, rows):
        yield r, {a: (u, t) for a, (u, _, t) in rows.items()}


def test_cpp_vtables_give_dynamic_types(cpp):
    r, rows = cpp
    with engine_session(r.pid) as s:
        out = run_in(s, "::typegraph").splitlines()
        g = s.cache[GRAPH_KEY]
        typed = {b: g.whattype(b) for b in g.base.tolist() if g.whattype(b).type is not None}
        assert {b: p.type for b, p in typed.items()} == {a: t for a, (u, t) in rows.items()}
        assert {p.how for b, p in typed.items() if b != r.addr("plain")} == {"vtable"}
        vt = [a for a, (u, t) in rows.items() if t != "Plain"]
        assert out[3].split() == ["vtable", str(len(vt)), str(sum(rows[a][0] for a in vt))]
        circle, cat = r.addr("circle"), r.addr("cat")
        assert run_in(s, f"{circle + 8:x}::whattype") == \
            f"{circle + 8:x} is 0x8 bytes into Circle (member <Shape>.next)\n"
        assert run_in(s, f"{cat + 16:x}::whattype") == \
            f"{cat + 16:x} is 0x10 bytes into zoo::Cat (member lives)\n"


# -- the solver on hand-made types: a conflict found after propagation ---------------------------

def test_conflict_after_propagation_is_undone():
    """X is typed `struct a` by a root and types Y `struct b` through its pointer; Y's own
    pointer then says X is a `struct d`. X is conflicting, and Y, typed only through X, must
    end unknown too (a second run without X), while W, typed apart, keeps its type."""
    import numpy as np

    from mdbpy.types.graph.catalog import Catalog
    from mdbpy.types.graph.evidence import Edges, RootEvidence
    from mdbpy.types.graph.solve import solve
    from mdbpy.types.model import Base, Member, Pointer, Struct

    long_t = Base("long int", 8, 0x05)
    b = Struct("struct", "b", 16)
    d = Struct("struct", "d", 16, [Member("v", long_t, 0), Member("w", long_t, 8)])
    a = Struct("struct", "a", 16, [Member("to_b", Pointer(b), 0), Member("v", long_t, 8)])
    b.__dict__["members"] = [Member("to_d", Pointer(d), 0), Member("v", long_t, 8)]
    c = Struct("struct", "c", 16, [Member("v", long_t, 0), Member("w", long_t, 8)])

    class Space:
        def complete(self, t):
            return t

    cat = Catalog(Space())
    ta, tc = cat.tid_of(a), cat.tid_of(c)
    X, Y, W = 0, 1, 2
    sizes = np.array([16, 16, 16], np.uint64)
    # X+0 -> Y, Y+0 -> X
    edges = Edges(np.array([0, 1, 2, 2]), np.array([0, 0]), np.array([Y, X]), np.array([0, 0]),
                  np.zeros(3, np.uint64))
    roots = RootEvidence(np.array([X, W]), np.array([0, 0]), np.array([ta, tc]),
                         np.zeros(2, np.uint64))
    sol = solve(cat, sizes, edges, roots, {})
    assert sol.runs == 2
    assert sol.tid.tolist() == [-1, -1, tc] and sol.conflict.tolist() == [True, False, False]


# -- the compiled fixpoint answers as solve.py's reference ------------------------------------

def _answers(cat, sol) -> dict:
    """A solution by type name (tids are numbered in the order each solver met the types)."""
    return {"types": [cat[t].name if t >= 0 else None for t in sol.tid.tolist()],
            "how": sol.how.tolist(), "conflict": sol.conflict.tolist(), "runs": sol.runs,
            "steps": sol.steps, "notes": sol.notes}


def test_compiled_fixpoint_agrees_on_the_fixture(session, tg):
    """The fixture's graph solved again by the reference and by the kernel, and once more with
    a user's hint (an authoritative type) on the union's tnode."""
    from mdbpy.heap.kernel import lib
    from mdbpy.types.graph.compiled import solve_compiled
    from mdbpy.types.graph.solve import HINT, solve

    _, r, _ = tg
    run_in(session, "::typegraph")
    g = session.cache[GRAPH_KEY]
    tnode = g.catalog.tid_of(g.space.lookup("struct tnode"))
    for fixed in ({}, {g.row(r.addr("either")): (tnode, HINT)}):
        args = (g.catalog, g.size, g.edges, g.roots, fixed)
        want = _answers(g.catalog, solve(*args))
        assert _answers(g.catalog, solve_compiled(lib(), *args)) == want
        assert want["types"].count(None) < len(want["types"]) // 10  # it typed the heap


def _universe():
    """Hand-made types with every feature the fixpoint weighs: pointers between structs, a
    struct that starts with another (a buffer typed by its head is upgraded), an array of
    pointers, a flexible array of pointers, a union whose members agree, a C++ class (typed
    only by authority); their tids in a fresh catalog, and the catalog."""
    from mdbpy.types.graph.catalog import Catalog
    from mdbpy.types.model import Array, Base, Function, Member, Pointer, Struct, Void

    long_t = Base("long int", 8, 0x05)
    a, b, c = (Struct("struct", n, 16) for n in "abc")
    a.__dict__["members"] = [Member("b", Pointer(b), 0), Member("v", long_t, 8)]
    b.__dict__["members"] = [Member("a", Pointer(a), 0), Member("c", Pointer(c), 8)]
    c.__dict__["members"] = [Member("x", long_t, 0), Member("a", Pointer(a), 8)]
    outer = Struct("struct", "outer", 32, [Member("head", a, 0), Member("b", Pointer(b), 16),
                                           Member("c", Pointer(c), 24)])
    flexy = Struct("struct", "flexy", 8, [Member("n", long_t, 0),
                                          Member("items", Array(Pointer(a), None), 8)])
    arr = Struct("struct", "arr", 32, [Member("cs", Array(Pointer(c), 3), 0),
                                       Member("k", long_t, 24)])
    u = Struct("union", "u", 8, [Member("pa", Pointer(a), 0), Member("qa", Pointer(a), 0)])
    vptr = Pointer(Pointer(Function(long_t, [])))
    cls = Struct("class", "P", 16, [Member("_vptr.P", vptr, 0), Member("a", Pointer(a), 8)],
                 cxx=True)
    holder = Struct("struct", "holder", 16, [Member("any", Pointer(Void()), 0),
                                             Member("u", Pointer(u), 8)])
    # containers: a at 8 in both (which one is unknown), a at 24 in pair alone
    pair = Struct("struct", "pair", 40, [Member("k", long_t, 0), Member("first", a, 8),
                                         Member("second", a, 24)])
    twin = Struct("struct", "twin", 40, [Member("k", long_t, 0), Member("x", a, 8),
                                         Member("y", Array(long_t, 2), 24)])

    class Space:
        def complete(self, t):
            return t

    cat = Catalog(Space())
    return cat, [cat.tid_of(t) for t in (a, b, c, outer, flexy, arr, u, cls, holder, pair,
                                         twin)]


class _Listed:
    """A catalog's hand-made types as containers.SizedTypes lists a session's."""

    def __init__(self, cat, tids):
        self.rows = sorted((cat[t].size, t) for t in tids)
        self.cat = cat

    def within(self, lo, hi):
        from mdbpy.types.graph.catalog import trailing_array

        listed = [(size, self.cat[t].type, trailing_array(self.cat[t].type) is not None)
                  for size, t in self.rows if size <= hi]
        return [r for r in listed if r[0] >= lo or r[2]]


class _Dwarf:
    """One object's DWARF as containers.SizedTypes reads it: its listing by size (rows
    [size, kind, name, flexible]) and its types by name (an MdbError where unreadable), the
    names loaded recorded."""

    def __init__(self, rows, types):
        self.rows, self.types, self.loaded = sorted(rows), types, []

    def sized(self):
        return self.rows

    def type_named(self, kind, name):
        from mdbpy.errors import MdbError

        self.loaded.append(name)
        t = self.types.get(name)
        if t is None:
            raise MdbError(f"unreadable DWARF of {name}")
        return t


def _sized(*objects):
    """A catalog of a space of those objects (_Dwarf), and its SizedTypes."""
    from mdbpy.types.graph.catalog import Catalog
    from mdbpy.types.graph.containers import SizedTypes

    class Space:
        def complete(self, t):
            return t

        def objects(self):
            return [(None, d) for d in objects]

    cat = Catalog(Space())
    return cat, SizedTypes(cat.space, cat)


def _listing(types, *damaged):
    """A _Dwarf of the types (by name), listed as DwarfTypes.sized lists them, and the damaged
    rows (listed, without a readable type)."""
    rows = [[t.size, t.tag, t.name, int(t.trailing_array() is not None)] for t in types]
    return _Dwarf(rows + [list(r) for r in damaged], {t.name: t for t in types})


def _universe_types() -> dict:
    """_universe's types by name, in a catalog of their own."""
    cat, tids = _universe()
    return {cat[t].type.name: cat[t].type for t in tids}


def test_a_container_that_cannot_be_read_leaves_the_buffer_unknown():
    """pair alone holds an a at 24 among the 40-byte types, so a buffer of requests [25, 40]
    with an a there is a pair; but when another type that may be the buffer's cannot be read
    (its DWARF is damaged), the buffer stays unknown rather than typed pair: one of a size in
    range, one smaller that may end with a flexible array (its listing could not say), and
    one whose size could not be read when listed (size 0: any buffer's). A smaller one the
    listing says has no flexible array is never loaded: nor is any type outside the range
    but flexy (8 bytes, a flexible array of pointers)."""
    import numpy as np

    from mdbpy.types.graph.containers import OFF_BITS, Containers

    types = _universe_types()

    def type_at(lo, *damaged):
        d = _listing(types.values(), *damaged)
        cat, sized = _sized(d)
        one = np.array([40], np.uint64)
        got = Containers(cat, one, (one, one), sized).type_at(
            (lo << OFF_BITS | 40, cat.tid_of(types["a"]) << OFF_BITS | 24))
        return (cat[got].name if got >= 0 else None), sorted(d.loaded)

    from25, from33 = ["arr", "flexy", "outer", "pair", "twin"], ["flexy", "pair", "twin"]
    assert type_at(25) == ("struct pair", from25)
    assert type_at(25, (32, "struct", "broken", 0)) == (None, sorted(from25 + ["broken"]))
    assert type_at(33, (32, "struct", "broken", 0)) == ("struct pair", from33)
    assert type_at(33, (32, "struct", "broken", -1)) == (None, ["broken"] + from33)
    assert type_at(33, (0, "struct", "lost", -1)) == (None, from33)


def test_containers_judge_each_definition_listed():
    """Two objects each define a 24-byte `struct node` (one tid: the catalog merges by
    spelling and size): with an a at 8 in both, of one layout, a buffer of requests [17, 24]
    with an a at 8 is a node; when the second's 8 is two longs, or its a is there but its
    first word a pointer (another plan), either may be the buffer: unknown. A flexible
    struct whose fixed part is in range holds an a in its array's first element, past its
    fixed part: it is the one (its fixed part alone holds none)."""
    import numpy as np

    from mdbpy.types.graph.containers import OFF_BITS, Containers
    from mdbpy.types.model import Array, Base, Member, Pointer, Struct

    types = _universe_types()
    a, long_t = types["a"], Base("long int", 8, 0x05)

    def node(first, second):
        return Struct("struct", "node", 24, [Member("k", first, 0), Member("x", second, 8)])

    def type_at(second_node, lo=17, off=8, extra=()):
        first, second = (_listing([node(long_t, a), *extra]),
                         _listing([second_node]))
        cat, sized = _sized(first, second)
        one = np.array([24], np.uint64)
        got = Containers(cat, one, (one, one), sized).type_at(
            (lo << OFF_BITS | 24, cat.tid_of(a) << OFF_BITS | off))
        return cat[got].name if got >= 0 else None

    assert type_at(node(long_t, a)) == "struct node"
    assert type_at(node(long_t, Array(long_t, 2))) is None
    assert type_at(node(Pointer(a), a)) is None
    fl = Struct("struct", "fl", 16, [Member("n", long_t, 0), Member("m", long_t, 8),
                                     Member("items", Array(a, None), 16)])
    assert type_at(node(long_t, Array(long_t, 2)), lo=16, off=16, extra=[fl]) == "struct fl"


def test_an_array_of_scalars_competes_with_the_structs():
    """A `long *` 8 bytes into a buffer of requests [9, 16]: struct a alone holds a long
    there, but the buffer may as well be an array of two longs, so it stays unknown; at 8
    into [17, 24] too (three longs); a struct's pointer (an a at 24 of [25, 40]) still names
    pair."""
    import numpy as np

    from mdbpy.types.graph.containers import OFF_BITS, Containers

    types = _universe_types()
    cat, sized = _sized(_listing(types.values()))
    one = np.array([40], np.uint64)
    c = Containers(cat, one, (one, one), sized)
    long_t = cat.tid_of(types["a"].members[1].type)
    assert [c.type_at((lo << OFF_BITS | hi, long_t << OFF_BITS | 8))
            for lo, hi in ((9, 16), (17, 24))] == [-1, -1]
    pair = c.type_at((25 << OFF_BITS | 40, cat.tid_of(types["a"]) << OFF_BITS | 24))
    assert cat[pair].name == "struct pair"


def _random_case(seed: int):
    """A random heap of _universe's types (pointers at any aligned offset, to starts and
    interiors, roots of every type, a few authoritative buffers, request ranges that may name
    a container): (the solver's arguments but the catalog, the request columns)."""
    import random

    import numpy as np

    from mdbpy.types.graph.evidence import Edges, RootEvidence
    from mdbpy.types.graph.solve import HINT, VTABLE

    rnd = random.Random(seed)
    n = rnd.randrange(1, 80)
    sizes = [rnd.choice((8, 16, 24, 32, 40, 40, 48, 64, 96)) for _ in range(n)]
    requests = [rnd.choice(((0, 0), (s, s), (max(s - 15, 1), s))) for s in sizes]
    edges = sorted((s, 8 * rnd.randrange(sizes[s] // 8), d,
                    rnd.choice((0, 0, 0, 8, 16, 8 * rnd.randrange(sizes[d] // 8))))
                   for _ in range(rnd.randrange(3 * n)) for s, d in [(rnd.randrange(n),
                                                                      rnd.randrange(n))])
    cols = [np.array([e[k] for e in edges], np.int64) for k in range(4)]
    start = np.searchsorted(cols[0], np.arange(n + 1)).astype(np.int64)
    ref_cat, tids = _universe()
    roots = [(rnd.randrange(n), rnd.choice((0, 0, 0, 8)), rnd.choice(tids))
             for _ in range(rnd.randrange(1, 6))]
    # pointers to an a inside buffers: a pair's (and a twin's, at 8) by size
    roots += [(rnd.randrange(n), rnd.choice((8, 24)), tids[0]) for _ in range(rnd.randrange(4))]
    fixed = {}
    for _ in range(rnd.randrange(3)):
        row, t = rnd.randrange(n), rnd.choice(tids)
        if ref_cat[t].size <= sizes[row]:
            fixed[row] = (t, rnd.choice((VTABLE, HINT)))
    args = (np.array(sizes, np.uint64), Edges(start, cols[1], cols[2], cols[3],
                                               np.zeros(n, np.uint64)),
            RootEvidence(*(np.array([x[k] for x in roots], np.int64) for k in range(3)),
                         np.zeros(len(roots), np.uint64)), fixed)
    return args, tuple(np.array([q[k] for q in requests], np.uint64) for k in range(2))


def _both(args, lo_hi, universe=None):
    """The reference's and the kernel's answers to the solver's arguments, each with a fresh
    catalog of universe() and its types listed as containers."""
    from mdbpy.heap.kernel import lib
    from mdbpy.types.graph.compiled import solve_compiled
    from mdbpy.types.graph.containers import Containers
    from mdbpy.types.graph.solve import solve

    out = []
    for how in (solve, lambda *a: solve_compiled(lib(), *a)):
        cat, tids = (universe or _universe)()
        out.append(_answers(cat, how(cat, *args, Containers(cat, args[0], lo_hi,
                                                            _Listed(cat, tids)))))
    return out


@pytest.mark.parametrize("seed", range(150))
def test_compiled_fixpoint_agrees_on_random_graphs(seed):
    """The kernel's answer on _random_case's heap is the reference's, conflicts, reruns,
    upgrades and containers included."""
    want, got = _both(*_random_case(seed))
    assert got == want


def test_random_graphs_name_containers():
    """The random heaps exercise containers: so many of the 150 seeds type some buffer by
    size and member (the reference's answer)."""
    from mdbpy.types.graph.containers import Containers
    from mdbpy.types.graph.solve import CONTAINER, solve

    named = 0
    for seed in range(150):
        args, lo_hi = _random_case(seed)
        cat, tids = _universe()
        sol = solve(cat, *args, Containers(cat, args[0], lo_hi, _Listed(cat, tids)))
        named += CONTAINER in sol.how.tolist()
    assert named == 19


def _universe_past_tid_bits():
    """_universe, then (1 << TID_BITS) more types (one placeholder, many times), then struct
    far (a struct a at 8, 24 bytes): far's tid is past what a container key holds."""
    from mdbpy.types.graph.containers import TID_BITS
    from mdbpy.types.model import Base, Member, Struct

    cat, tids = _universe()
    filler = cat[tids[0]]
    cat.infos.extend([filler] * (1 << TID_BITS))
    far = Struct("struct", "far", 24, [Member("k", Base("long int", 8, 0x05), 0),
                                       Member("x", cat[tids[0]].type, 8)])
    return cat, tids + [cat.tid_of(far)]


def test_compiled_fixpoint_resumes_its_roots_past_a_container_and_a_far_tid():
    """Roots into buffers of request ranges: one at a start, one into a 40-byte buffer at 24
    (a pair, asked for: the kernel stops mid-list and resumes), one of struct far's tid (past
    TID_BITS: no container is asked for), one into another buffer at 24 (the same key,
    answered), then an a 8 into a twin-sized buffer (another key: two pair and twin, unknown):
    both answer alike."""
    import numpy as np

    from mdbpy.types.graph.evidence import Edges, RootEvidence

    cat, tids = _universe_past_tid_bits()
    a, far = tids[0], tids[-1]
    assert far >= 1 << 20
    sizes = np.array([16, 40, 24, 40, 40], np.uint64)
    roots = [(0, 0, a), (1, 24, a), (2, 8, far), (3, 24, a), (4, 8, a)]
    args = (sizes, Edges(np.zeros(6, np.int64), *(np.zeros(0, np.int64),) * 3,
                         np.zeros(5, np.uint64)),
            RootEvidence(*(np.array([r[k] for r in roots], np.int64) for k in range(3)),
                         np.zeros(len(roots), np.uint64)), {})
    lo_hi = (np.array([9, 25, 9, 25, 25], np.uint64), sizes)
    want, got = _both(args, lo_hi, _universe_past_tid_bits)
    assert got == want
    assert want["types"] == ["struct a", "struct pair", None, "struct pair", None]


def test_compiled_fixpoint_grows_its_lists(monkeypatch):
    """A struct flexy of 3,000 items, half pointing at the start of a 32-byte buffer (two
    struct a), half 16 bytes into it (the second a: interior evidence), in a heap of three
    buffers: its one expansion may queue more buffers than the kernel was given room for, and
    gives 1,500 interior pointers, so both lists grow between calls; the answer is still the
    reference's."""
    import numpy as np

    import mdbpy.types.graph.compiled as compiled
    from mdbpy.heap.kernel import lib
    from mdbpy.types.graph.evidence import Edges, RootEvidence
    from mdbpy.types.graph.solve import solve

    k = 3000
    sizes = np.array([8 + 8 * k, 32, 16], np.uint64)
    edges = Edges(np.array([0, k, k, k]), np.arange(8, 8 + 8 * k, 8), np.ones(k, np.int64),
                  np.array([0, 16] * (k // 2)), np.zeros(3, np.uint64))
    grown = []  # the lists' lengths after each growth
    grow = compiled._grow

    def spy(state, st):
        grow(state, st)
        grown.append((len(state["queue"]), len(state["it"])))

    ref_cat, tids = _universe()
    flexy = tids[4]
    args = (sizes, edges, RootEvidence(np.array([0]), np.array([0]), np.array([flexy]),
                                       np.zeros(1, np.uint64)), {})
    want = _answers(ref_cat, solve(ref_cat, *args))
    assert want["types"] == ["struct flexy", "struct a", None]
    cat, _ = _universe()
    monkeypatch.setattr(compiled, "_grow", spy)
    assert _answers(cat, compiled.solve_compiled(lib(), cat, *args)) == want
    assert max(q for q, _ in grown) >= k and max(i for _, i in grown) >= k // 2
