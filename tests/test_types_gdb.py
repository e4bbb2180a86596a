"""gdb is the oracle for the ::print family: on a live process and on its gcore core, every value
::print shows equals gdb's value of the same expression (fixtures/types.c: every C type kind;
fixtures/types_cpp.cc: classes, inheritance, virtual methods, static members, templates; libc's
own main_arena, mp_ and _IO_2_1_stdout_ through libc6-dbg), and ::sizeof / ::offsetof equal
gdb's for every struct and union the fixtures' DWARF defines."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import compile_fixture, gcore, start_fixture
from types_oracle import Commands, PrintParser, compare, compile_cpp, count_leaves, gdb_values

from mdbpy.target.core import open_file_target
from mdbpy.target.live import LiveTarget
from mdbpy.types.space import space_of

LIBC_DEBUG = Path("/usr/lib/debug/.build-id")

# (mdbpy command, the label ::print gives a member path or None, gdb's expression)
C_CASES = [
    ("g_text::print", None, "g_text"),
    ("g_row::print", None, "g_row"),
    ("g_nodes::print", None, "g_nodes"),
    ("g_list::print", None, "g_list"),
    ("*g_list::print struct node", None, "*g_list"),
    ("g_flex::print", None, "g_flex"),
    ("*g_flex::print struct flex", None, "*g_flex"),
    ("*g_flex::print struct flex items[3]", "items[3]", "g_flex->items[3]"),
    ("g_int::print", None, "g_int"),
    ("g_uint::print", None, "g_uint"),
    ("g_double::print", None, "g_double"),
    ("g_perm::print", None, "g_perm"),
    ("g_color::print", None, "g_color"),
    ("s_counter::print", None, "s_counter"),
    ("g_padded::print", None, "g_padded"),
    ("g_all::print -L -C", None, "g_all"),
    ("g_all::print -d", None, "g_all"),
    ("g_all::print bits", "bits", "g_all.bits"),
    ("g_all::print bits.d", "bits.d", "g_all.bits.d"),
    ("g_all::print ptr->next->value", "ptr->next->value", "g_all.ptr->next->value"),
    ("g_all::print ptr[0]", "ptr", "g_all.ptr[0]"),
    ("g_all::print matrix[1][2]", "matrix[1][2]", "g_all.matrix[1][2]"),
    ("g_all::print nodes[1]", "nodes[1]", "g_all.nodes[1]"),
    ("g_all::print anon.dval", "anon.dval", "g_all.anon.dval"),
    ("g_all::print anon.y", "anon.y", "g_all.anon.y"),
    ("g_all::print ptr_to_array", "ptr_to_array", "g_all.ptr_to_array"),
    ("g_all::print argv_like", "argv_like", "g_all.argv_like"),
    ("g_all::print ld", "ld", "g_all.ld"),
    ("g_all::print handler", "handler", "g_all.handler"),
]
LIBC_CASES = [
    ("main_arena::print -L", None, "main_arena"),
    ("mp_::print", None, "mp_"),
    ("_IO_2_1_stdout_::print -L -C", None, "_IO_2_1_stdout_"),
]
CPP_CASES = [
    ("g_circle::print", None, "g_circle"),
    ("g_square::print", None, "g_square"),
    ("g_multi::print", None, "g_multi"),
    ("g_box_int::print", None, "g_box_int"),
    ("g_box_double::print", None, "g_box_double"),
    ("g_point::print", None, "g_point"),
    ("g_holder::print", None, "g_holder"),
    ("g_mode::print", None, "g_mode"),
    ("g_shapes::print", None, "g_shapes"),
    ("*g_shape::print shapes::Circle", None, "*(shapes::Circle *)g_shape"),
    ("*(g_box_int+8)::print \"Box<int>\"", None, "*g_box_int.next"),
    ("g_square::print label", "label", "g_square.label"),
    ("g_square::print w", "w", "g_square.w"),
]


@pytest.fixture(scope="module")
def c_exe(build_dir) -> Path:
    return compile_fixture("types", build_dir)


@pytest.fixture(scope="module")
def cpp_exe(build_dir) -> Path:
    return compile_cpp(build_dir)


def _running_with_core(exe: Path, build_dir):
    r = start_fixture(exe)
    try:
        core = gcore(r.pid, Path(build_dir) / f"{exe.name}-gcore")
    except BaseException:
        r.stop()
        raise
    return r, core


@pytest.fixture(scope="module")
def c_proc(c_exe, build_dir):
    r, core = _running_with_core(c_exe, build_dir)
    try:
        yield r, core
    finally:
        r.stop()


@pytest.fixture(scope="module")
def cpp_proc(cpp_exe, build_dir):
    r, core = _running_with_core(cpp_exe, build_dir)
    try:
        yield r, core
    finally:
        r.stop()


def _open(where: str, proc, exe: Path) -> Commands:
    r, core = proc
    target = LiveTarget(r.pid, stop=True) if where == "live" else \
        open_file_target(str(core), exe=str(exe))
    return Commands(target)


def _gdb_args(where: str, proc, exe: Path) -> list[str]:
    r, core = proc
    return ["-p", str(r.pid)] if where == "live" else [str(exe), str(core)]


def _check_cases(cases, where, proc, exe, tmp_path, language="c", gdb_exe=None) -> int:
    """Every case's ::print equals gdb's value (gdb reading gdb_exe, the same build in a
    shape gdb reads, when given); returns how many values were compared."""
    args = _gdb_args(where, proc, exe) if gdb_exe is None else \
        [str(gdb_exe), *_gdb_args(where, proc, exe)[-2:]] if where == "live" else \
        [str(gdb_exe), str(proc[1])]
    want = gdb_values(args, [g for _, _, g in cases], tmp_path, language=language)
    mdb = _open(where, proc, exe)
    wrong, compared = [], 0
    try:
        parser = PrintParser(mdb.address_of)
        for command, label, expr in cases:
            got = parser.parse(mdb.run(command), label)
            wrong += [f"{command}: {d}" for d in compare(got, want[expr], expr)]
            compared += count_leaves(want[expr])
    finally:
        mdb.close()
    assert not wrong, "\n".join(wrong)
    return compared


@pytest.mark.parametrize("where", ["live", "core"])
def test_c_values_equal_gdb(where, c_proc, c_exe, tmp_path):
    assert _check_cases(C_CASES, where, c_proc, c_exe, tmp_path) > 250


@pytest.mark.parametrize("where", ["live", "core"])
def test_cpp_values_equal_gdb(where, cpp_proc, cpp_exe, tmp_path):
    assert _check_cases(CPP_CASES, where, cpp_proc, cpp_exe, tmp_path, "c++") >= 36


@pytest.mark.skipif(not LIBC_DEBUG.is_dir(), reason="libc6-dbg is not installed")
@pytest.mark.parametrize("where", ["live", "core"])
def test_libc_structs_equal_gdb(where, c_proc, c_exe, tmp_path):
    assert _check_cases(LIBC_CASES, where, c_proc, c_exe, tmp_path) > 300


def _layout_names(exe: Path) -> list[str]:
    """The fixture's own structs and unions (not libc's or libstdc++'s, whose names start
    with `_` or `std::`), as the index has them, spelled as C or C++ spells them."""
    mdb = Commands(open_file_target(str(exe)))
    try:
        space = space_of(mdb.session)
        (d,) = [d for o, d in space.objects() if o.is_exe]
        return [t.spelled() for kind in ("struct", "union") for name in d.index.names(kind)
                if not name.startswith(("_", "std::"))
                and (t := d.type_named(kind, name)).complete]
    finally:
        mdb.close()


def _number(text: str) -> int:
    return int(text, 16) if text.startswith("0x") else int(text)


@pytest.mark.parametrize("fixture", ["c_exe", "cpp_exe"])
def test_sizeof_offsetof_equal_gdb(fixture, request, tmp_path):
    exe = request.getfixturevalue(fixture)
    names, members = check_layouts(exe, tmp_path, "c" if fixture == "c_exe" else "c++")
    assert names >= (7 if fixture == "c_exe" else 8)
    assert members >= (60 if fixture == "c_exe" else 12)


def check_layouts(exe: Path, tmp_path, language: str = "c",
                  gdb_exe: Path | None = None) -> tuple[int, int]:
    """::sizeof and ::offsetof of every struct and union of the program's own equal gdb's
    (gdb reading gdb_exe, the same build in a shape gdb reads, when given); returns how many
    types and members were compared."""
    names = _layout_names(exe)
    want = gdb_values([str(gdb_exe or exe)], names, tmp_path, mode="layout", language=language)
    mdb = Commands(open_file_target(str(exe)))
    wrong, members = [], 0
    try:
        for name in names:
            w = want[name]
            assert "error" not in w, (name, w)
            head, _, size = mdb.run(f"::sizeof {name}").strip().partition(" = ")
            if head != f"sizeof ({name})" or _number(size) != w["size"]:
                wrong.append(f"{name}: sizeof {size} vs {w['size']}")
            for member, bitpos in w["fields"].items():
                members += 1
                out = mdb.run(f"::offsetof {name} {member}").strip()
                byte, _, bit = out.split(" = ")[1].split(",")[0].partition(".")
                if 8 * _number(byte) + int(bit or "0", 16) != bitpos:
                    wrong.append(f"{name}.{member}: {out} vs bit {bitpos}")
    finally:
        mdb.close()
    assert not wrong, "\n".join(wrong)
    return len(names), members
