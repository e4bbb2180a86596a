"""The type index and the type dcmds: the scan finds what pyelftools finds, the index is cached
by build-id and rebuilt when the entry is not trusted, names resolve as mdb resolves them, the
dcmds print mdb's shapes and fail on one line, a struct is read once, and the Python API's
values walk lists and read members (fixtures/types.c, as an executable alone, live, and with
libc's debug file)."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import compile_fixture, run_mdbpy, start_fixture
from types_oracle import Commands, compile_cpp

import mdbpy
from mdbpy.symbols.elf import build_id_of
from mdbpy.target.core import open_file_target
from mdbpy.target.live import LiveTarget
from mdbpy.types import index as type_index
from mdbpy.types import space as type_space
from mdbpy.types.enums import common_prefix, flags_text
from mdbpy.types.model import Enum
from mdbpy.types.scan import CPP_LANGS, tls_offset


@pytest.fixture(scope="module")
def exe(build_dir) -> Path:
    return compile_fixture("types", build_dir)


@pytest.fixture(scope="module")
def cpp_exe(build_dir) -> Path:
    return compile_cpp(build_dir)


@pytest.fixture
def file_run(exe):
    r = Commands(open_file_target(str(exe)))
    yield r
    r.close()


# -- the index ------------------------------------------------------------------------------------

def _pyelftools_names(path: Path) -> tuple[dict, dict]:
    """The first definitions of named types and of variables with a location, found the slow
    way (every DIE through pyelftools, scopes as the scan enters them)."""
    from elftools.elf.elffile import ELFFile

    kinds = {"DW_TAG_structure_type": "struct", "DW_TAG_class_type": "struct",
             "DW_TAG_union_type": "union", "DW_TAG_enumeration_type": "enum",
             "DW_TAG_typedef": "typedef", "DW_TAG_base_type": "base",
             "DW_TAG_unspecified_type": "base"}
    types: dict = {k: {} for k in ("struct", "union", "enum", "typedef", "base")}
    variables: dict = {}
    with open(path, "rb") as f:
        for cu in ELFFile(f).get_dwarf_info().iter_CUs():
            top = cu.get_top_DIE()
            cpp = top.attributes["DW_AT_language"].value in CPP_LANGS

            def visit(die, prefix):
                for c in die.iter_children():
                    name = c.attributes.get("DW_AT_name")
                    name = name.value.decode() if name else None
                    decl = "DW_AT_declaration" in c.attributes
                    if c.tag in kinds and name and not decl:
                        types[kinds[c.tag]].setdefault(prefix + name, c.offset)
                    if c.tag == "DW_TAG_variable" and name and "DW_AT_location" in c.attributes:
                        variables.setdefault(prefix + name, c.offset)
                    if c.tag == "DW_TAG_namespace" or (cpp and c.tag in (
                            "DW_TAG_structure_type", "DW_TAG_class_type", "DW_TAG_union_type")):
                        if name:
                            visit(c, prefix + name + "::")

            visit(top, "")
    return types, variables


@pytest.mark.parametrize("which", ["exe", "cpp_exe"])
def test_scan_finds_what_pyelftools_finds(which, request):
    path = request.getfixturevalue(which)
    from elftools.elf.elffile import ELFFile

    with open(path, "rb") as f:
        idx = type_index.build(ELFFile(f))
    types, variables = _pyelftools_names(path)
    assert idx.types == types
    for name, off in variables.items():
        assert idx.vars[name] == off, name
    assert sum(map(len, types.values())) > 20


def _libc_debug_file() -> Path:
    libc = Path("/lib/x86_64-linux-gnu/libc.so.6").resolve()
    bid = build_id_of(str(libc))
    debug = Path(f"/usr/lib/debug/.build-id/{bid[:2]}/{bid[2:]}.debug")
    if not debug.is_file():
        pytest.skip("libc6-dbg is not installed")
    return debug


def test_scan_of_libcs_debug_file_names_the_right_dies():
    """libc's debug file (DWARF 5, compressed sections): every 10th name the index holds is
    the name of the DIE at its offset, as pyelftools reads it."""
    from elftools.elf.elffile import ELFFile

    debug = _libc_debug_file()
    with open(debug, "rb") as f:
        elf = ELFFile(f)
        idx = type_index.build(elf)
        dwarf = elf.get_dwarf_info()
        entries = sorted((off, name) for kind in idx.types.values()
                         for name, off in kind.items()) + sorted(
            (off, name) for name, off in idx.vars.items())
        assert len(entries) > 1500 and len(idx.addr_keys) > 500
        for off, name in entries[::10]:
            die = dwarf.get_CU_at(idx.unit_of(off)).get_DIE_from_refaddr(off)
            if "DW_AT_name" not in die.attributes:  # a definition naming its declaration
                die = die.get_DIE_from_attribute("DW_AT_specification")
            assert die.attributes["DW_AT_name"].value.decode() == name.split("::")[-1]
        arena = idx.var_die("main_arena")
        assert idx.var_at(idx.addr_keys[idx.addr_dies.index(arena)]) == arena


FUNCTION_SCOPES = ("DW_TAG_subprogram", "DW_TAG_lexical_block", "DW_TAG_inlined_subroutine")


def _placed_variables(dwarf) -> tuple[set, set]:
    """The (thread-local, address or TLS offset) of every variable DIE with a fixed location,
    found the slow way (every DIE through pyelftools): those outside functions, and those in
    one (at any depth: nested blocks, inlined functions' abstract and concrete trees)."""
    outside, inside = set(), set()
    for cu in dwarf.iter_CUs():
        for die in cu.iter_DIEs():
            loc = die.attributes.get("DW_AT_location")
            if die.tag != "DW_TAG_variable" or loc is None or "DW_AT_declaration" in \
                    die.attributes or loc.form not in ("DW_FORM_exprloc", "DW_FORM_block1"):
                continue
            e = bytes(loc.value)
            key = (False, int.from_bytes(e[1:], "little")) if len(e) == 9 and e[0] == 3 \
                else (True, tls_offset(e))
            if key[1] is None:
                continue
            p = die.get_parent()
            while p is not None and p.tag not in FUNCTION_SCOPES:
                p = p.get_parent()
            (outside if p is None else inside).add(key)
    return outside, inside


@pytest.mark.parametrize("which", ["-O0", "-O2", "libc"])
def test_scan_records_function_scope_variables_once(which, build_dir):
    """Every variable with a fixed location is in the index, those in functions (statics
    and __thread, fixtures/typegraph.c's in a nested block and in an always-inlined function,
    and libc's) once each, by a DIE that names them."""
    from elftools.elf.elffile import ELFFile

    path = _libc_debug_file() if which == "libc" else compile_fixture(
        "typegraph", build_dir, ("-g", which), out_name=f"typegraph{which}")
    with open(path, "rb") as f:
        elf = ELFFile(f)
        idx = type_index.build(elf)
        dwarf = elf.get_dwarf_info()
        outside, inside = _placed_variables(dwarf)
        keys = [(False, a) for a in idx.addr_keys] + [(True, o) for o in idx.tls_keys]
        dies = dict(zip(keys, idx.addr_dies + idx.tls_dies))
        assert set(keys) == outside | inside
        # one exception in libc: a function's constant merged by the linker with a unit's
        # (nibblechar and hex, the same 16 bytes) is indexed as the unit's
        assert len(outside & inside) == (1 if which == "libc" else 0)
        inside -= outside
        assert all(keys.count(k) == 1 for k in inside)
        names = {}
        for k in inside:
            die = dwarf.get_CU_at(idx.unit_of(dies[k])).get_DIE_from_refaddr(dies[k])
            names[k] = die.attributes["DW_AT_name"].value.decode()
    if which == "libc":
        assert len(inside) > 300
    else:
        assert sorted((tls, n) for (tls, _), n in names.items()) == [
            (False, "free_slots"), (False, "spare"), (True, "conns")]


def test_index_is_cached_by_build_id_and_rebuilt_when_untrusted(exe, tmp_path, monkeypatch):
    monkeypatch.setenv("MDBPY_CACHE_DIR", str(tmp_path))
    from elftools.elf.elffile import ELFFile

    bid = build_id_of(str(exe))
    entry = tmp_path / f"{bid}.types"
    calls = []
    real_scan = type_index.scan
    monkeypatch.setattr(type_index, "scan",
                        lambda sec, sup=None: calls.append(1) or real_scan(sec, sup))
    with open(exe, "rb") as f:
        first = type_index.load_or_build(str(exe), bid, ELFFile(f))
        assert calls == [1] and entry.is_file()
        again = type_index.load_or_build(str(exe), bid, ELFFile(f))
        assert calls == [1], "the second lookup reads the cache"
        assert again.types == first.types and again.addr_keys == first.addr_keys
        good = entry.read_bytes()
        for bad in (b"\x80garbage", good.replace(bid.encode(), b"0" * len(bid)),
                    good.replace(b'"dwarf_size":', b'"dwarf_size":1'),
                    good.replace(b'"cus":[', b'"cus":["x",')):
            entry.write_bytes(bad)
            type_index.load_or_build(str(exe), bid, ELFFile(f))
        assert calls == [1] * 5, "an untrusted entry is built again"
    assert not entry.read_bytes().startswith(b"\x80"), "and replaced"


def test_second_process_reads_the_cache(exe, tmp_path):
    env = {"MDBPY_CACHE_DIR": str(tmp_path)}
    first = run_mdbpy(str(exe), "-S", "-e", "::sizeof struct everything", env=env)
    assert first.stdout == "sizeof (struct everything) = 0x1a0\n"
    assert (tmp_path / f"{build_id_of(str(exe))}.types").is_file()
    second = run_mdbpy(str(exe), "-S", "-e", "::sizeof struct node", env=env)
    assert second.stdout == "sizeof (struct node) = 0x18\n" and second.returncode == 0


# -- names ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, key", [
    ("unsigned long", ("long", "unsigned")), ("long unsigned int", ("long", "unsigned")),
    ("long", ("long", "")), ("long int", ("long", "")), ("signed long", ("long", "")),
    ("long long unsigned int", ("long long", "unsigned")), ("short", ("short", "")),
    ("short unsigned int", ("short", "unsigned")), ("unsigned", ("int", "unsigned")),
    ("char", ("char", "")), ("signed char", ("char", "signed")),
    ("unsigned char", ("char", "unsigned")), ("size_t", None), ("struct x", None)])
def test_c_integer_spellings(name, key):
    assert type_space.canonical_base(name) == key


def test_names_resolve_main_object_first_then_libraries(exe):
    r = start_fixture(exe)
    run = Commands(LiveTarget(r.pid, stop=True))
    try:
        assert run("::sizeof unsigned long")[0] == "sizeof (unsigned long) = 8\n"
        assert run("::sizeof a.out`struct node")[0] == "sizeof (a.out`struct node) = 0x18\n"
        assert run("::sizeof struct a.out`node")[0] == "sizeof (struct a.out`node) = 0x18\n"
        if Path("/usr/lib/debug/.build-id").is_dir():
            out, err = run("::sizeof struct malloc_state")  # only libc defines it
            assert out == "sizeof (struct malloc_state) = 0x898\n", err
            assert run("::sizeof libc.so.6`mstate")[0] == "sizeof (libc.so.6`mstate) = 8\n"
        out, err = run("::sizeof libc.so.6`struct node")
        assert (out, run.status) == ("", 1)
        assert err == ("mdbpy: failed to look up type libc.so.6`struct node: no such type in "
                       "the target's DWARF\n")
        assert run("::sizeof nosuch.so`int")[1] == \
            "mdbpy: no object named 'nosuch.so' (see ::objects)\n"
    finally:
        run.close()
        r.stop()


# -- enums ------------------------------------------------------------------------------------

def test_enum_prefixes_and_flags():
    assert common_prefix(["P_READ", "P_WRITE", "P_EXEC"]) == "P_"
    assert common_prefix(["FOO", "FOO_BAR"]) == "FOO"
    assert common_prefix(["AB", "AB"]) == "A"  # never the whole of both names
    assert common_prefix(["A", "B"]) == ""
    e = Enum("perm", 4, [("P_READ", 1), ("P_WRITE", 2), ("P_EXEC", 4), ("P_SYNC", 0x40)])
    assert flags_text(e, 1) == "P_READ"
    assert flags_text(e, 5) == "P_{READ|EXEC}"
    assert flags_text(e, 0x47) == "P_{READ|WRITE|EXEC|SYNC}"
    assert flags_text(e, 0x85) == "P_{READ|EXEC}|0x80"
    assert flags_text(e, 0x80) == "0x80"
    assert flags_text(e, 0) == "0"
    assert flags_text(e, 5, all_prefix=True) == "READ|EXEC"
    assert flags_text(Enum("c", 4, [("RED", 0), ("BLUE", 10)]), 10) is None


# -- the dcmds' shapes ----------------------------------------------------------------------------

def test_print_type_layout_and_options(file_run):
    out, err = file_run("::print -t struct with_anon")
    assert (out, err) == ("struct with_anon {\n    int kind\n    union {...} {\n"
                          "        int ival\n        double dval\n    }\n    struct {...} {\n"
                          "        short int x\n        short int y\n    }\n"
                          "    struct {...} named {\n        int z\n    }\n}\n", "")
    out, _ = file_run("g_all::print -T chained u16")
    assert out == ("size_alias_t <<long unsigned int>> chained = 0x63\n"
                   "uint16_t <<short unsigned int>> u16 = 0xffff\n")
    out, _ = file_run("g_all::print -s 1 anon")
    assert out == ("anon = {\n    anon.kind = 0x2\n    { ... }\n    { ... }\n"
                   "    anon.named = { ... }\n}\n")
    out, _ = file_run("g_all::print -at pad.c pad.tail")
    g_all = file_run.session.symbols.lookup("g_all").addr
    assert out == (f"{g_all + 0x180:x} char pad.c = 'q'\n"
                   f"{g_all + 0x198:x} char pad.tail = 'r'\n")


def test_print_sets_dot_past_the_struct(file_run):
    out, _ = file_run("g_nodes::print struct node value; .::print struct node value")
    assert out == "value = 0xa\nvalue = 0xb\n"


def test_print_pipes_values_and_addresses(file_run):
    nodes = file_run.session.symbols.lookup("g_nodes").addr
    out, _ = file_run("g_nodes::print struct node next value tag | ::eval '.=J'")
    assert out.split() == [f"{nodes + 0x18:x}", "a", f"{nodes + 0x10:x}"]
    out, _ = file_run("::sizeof struct node | ::eval '.=D'")
    assert out.split() == ["24"]
    out, _ = file_run("::offsetof struct node tag | ::eval '.=D'")
    assert out.split() == ["16"]
    assert file_run("::enum color | ::eval '.=E'")[0].split() == ["0", "1", "10", "4294967293"]


def test_offsetof_bitfield_piped_is_refused(file_run):
    out, err = file_run("::offsetof struct bits b | ::eval '.=X'")
    assert (out, err) == ("", "mdbpy: member b of type struct bits is not byte-aligned\n")


def test_enum_searches(file_run):
    assert file_run("0t10::enum color")[0] == "      VALUE NAME\n         10 BLUE\n"
    assert file_run("::enum color $[1]")[0] == "      VALUE NAME\n          1 GREEN\n"
    assert file_run("::enum -x color")[0].splitlines()[-1] == "fffffffd NEGATIVE"
    assert file_run("0x85::enum perm")[0] == "   VALUE NAME\n      85 P_{READ|EXEC}|0x80\n"
    assert file_run("::enum small_t SMALL_B")[0] == "      VALUE NAME\n        200 SMALL_B\n"
    assert file_run("::enum color PURPLE")[1] == "mdbpy: name \"PURPLE\" not in 'enum color'\n"
    assert file_run("::enum node")[1] == "mdbpy: failed to look up types 'enum node', 'node'\n"
    assert file_run("::enum struct node")[1] == "mdbpy: 'struct node': not an enumeration\n"


def test_array_and_typed_list_with_a_variable(file_run):
    nodes = file_run.session.symbols.lookup("g_nodes").addr
    out, _ = file_run("g_nodes::array struct node 2 n | ::eval '<n=J'")
    assert out.split() == [f"{nodes:x}", f"{nodes + 0x18:x}"]
    out, _ = file_run("g_nodes+0x18::list struct node next n | ::eval '<n=J'")
    assert out.split() == [f"{nodes + 0x18 * i:x}" for i in (1, 2, 3)]
    out, _ = file_run("g_nodes::list -o 0 -n 2")
    assert out.split() == [f"{nodes:#x}", f"{nodes + 0x18:#x}"]
    assert file_run("g_padded::list struct padded i")[1] == \
        "mdbpy: i is not a word-aligned member\n"
    assert file_run("g_nodes::array struct node")[1].startswith("mdbpy: ::array needs a count")


@pytest.mark.parametrize("command, message", [
    ("::print struct nosuch", "failed to look up type struct nosuch: no such type in the "
                              "target's DWARF"),
    ("g_all::print nosuch", "failed to find member nosuch of struct everything"),
    ("g_all::print i.x", "int is not a struct or union type"),
    ("g_all::print i->x", "int is not a pointer type"),
    ("g_all::print matrix[1", "matrix[1: no trailing ']'"),
    ("g_all::print ptr->value", "cannot dereference a NULL struct node *"),
    ("g_all::print vp[1]", "cannot dereference void type"),
    ("g_padded::print $[0x1]", "invalid offset 1"),
    ("main::print", "no type data available for main"),
    ("g_all+1::print", "no symbol information for g_all+0x1"),
    ("0x10000000000::print struct node", "failed to read 24 bytes at 0x10000000000: no mapping"),
    ("::offsetof struct node next->value", "next->value: '->' leaves the type; ::offsetof "
                                           "takes '.' and '[i]'"),
    ("::sizeof struct flex[]", "struct flex[] has no size (an incomplete type, a function or "
                               "void)"),
])
def test_errors_are_one_line_with_status_1(exe, command, message):
    r = run_mdbpy(str(exe), "-S", "-e", command)
    assert (r.stdout, r.stderr, r.returncode) == ("", f"mdbpy: {message}\n", 1)


def test_usage_errors_print_the_usage(exe):
    r = run_mdbpy(str(exe), "-S", "-e", "::print")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.splitlines()[1].startswith("Usage: ")
    assert r.stderr.splitlines()[1].endswith("::print [-aCdhiLnpTtx] [-c lim] [-l lim] "
                                              "[-s depth] [type] [member|offset ...]")


# -- a live process: heap notes, one read per struct, the Python API ------------------------------

@pytest.fixture(scope="module")
def live(exe):
    r = start_fixture(exe)
    try:
        yield r
    finally:
        r.stop()


def test_pointers_name_the_heap_buffer_they_point_into(live):
    run = Commands(LiveTarget(live.pid, stop=True))
    try:
        head = live.addr("list")
        out, err = run("g_list::print")
        assert (out, err) == (f"{head:#x} (allocated from chunk 0x20)\n", "")
        out, _ = run("g_all::print -n ptr vp")
        assert out.splitlines()[0] == f"ptr = {head:#x}"
        out, _ = run("g_all::print vp")
        assert out == f"vp = {head - 0x20:#x} (allocated from chunk 0x20)\n"
        out, _ = run("*g_list::list struct node next | ::print struct node tag")
        assert out == 'tag = [ "heap0" ]\ntag = [ "heap1" ]\ntag = [ "heap2" ]\n'
    finally:
        run.close()
    live.assert_untouched()


def test_a_struct_is_read_once(live):
    run = Commands(LiveTarget(live.pid, stop=True))
    try:
        g_all = run.session.symbols.lookup("g_all").addr
        reads = []
        real = run.session.mem.read
        run.session.mem.read = lambda a, n: reads.append((a, n)) or real(a, n)
        out, err = run("g_all::print -L -C")
        assert out.count("\n") > 90 and not err
        inside = [(a, n) for a, n in reads if g_all <= a < g_all + 0x1a0]
        assert inside == [(g_all, 0x1a0)]
    finally:
        run.close()


def test_python_values(live):
    with mdbpy.attach(live.pid) as dbg:
        head = dbg.value("g_list")
        assert int(head) == live.addr("list")
        assert [(int(n.value), n.tag.string_()) for n in head.list("next")] == \
            [(100, b"heap0"), (101, b"heap1"), (102, b"heap2")]
        assert int(head.member("next").member("value")) == 101  # -> through the pointer
        assert head[1].address == int(head) + 0x18 and head.deref().address == int(head)
        flex = dbg.value("g_flex")
        assert [int(flex.items[i]) for i in range(4)] == [11, 22, 33, 44]
        assert flex.deref().value_()["items"] == []  # flexible: no length to iterate
        assert dbg.value("s_counter").value_() == 8
        assert len(dbg.value("g_nodes")) == 4 and dbg.value("g_text").string_() == \
            b"hello, types"
        with pytest.raises(mdbpy.MdbError, match="failed to lookup symbol nosuch"):
            dbg.value("nosuch")
        with pytest.raises(IndexError):
            dbg.value("g_row")[3]
        if Path("/usr/lib/debug/.build-id").is_dir():
            arena = dbg.value("libc.so.6`main_arena")
            assert int(arena.next) == arena.address  # one arena: a ring of one
            assert dbg.type("struct malloc_state").size == 0x898
    live.assert_untouched()


def test_cpp_qualified_names_and_statics(cpp_exe):
    run = Commands(open_file_target(str(cpp_exe)))
    try:
        assert run("::print -t shapes::inner::Point")[0] == \
            "shapes::inner::Point {\n    int x\n    int y\n}\n"
        out, _ = run("g_point::print")
        assert out == "{\n    x = 0xfffffffd\n    y = 0x4\n}\n"
        out, _ = run("::print -t shapes::Circle")
        assert out.splitlines()[:3] == ["shapes::Circle {", "    shapes::Shape <shapes::Shape> {",
                                        "        int (**)(...) _vptr.Shape"]
        assert "        static int count" in out
        assert run("g_circle::print id")[0] == "id = 0\n"  # set by main, not in the file
        assert run("::sizeof Box<double>")[0] == "sizeof (Box<double>) = 0x10\n"
        assert run("::offsetof Multi tag")[0] == "offsetof (Multi, tag) = 0x10, sizeof " \
                                                 "(...->tag) = 4\n"
    finally:
        run.close()
