"""Real-world shapes of DWARF, with gdb as the oracle (as tests/test_types_gdb.py): type units
and dwz's supplementary files.

- type units: fixtures/types.c built with `-g -fdebug-types-section`, as DWARF 4 (the types in
  .debug_types) and DWARF 5 (DW_UT_type units in .debug_info), every type referred to by
  DW_FORM_ref_sig8;
- dwz: two programs built -g (fixtures/types.c alone, and with a second file of its own) and
  run through `dwz -m common.debug prog1 prog2`, so that both carry a .gnu_debugaltlink to one
  common file holding the partial units they share: names are DW_FORM_GNU_strp_alt strings
  and types DW_FORM_GNU_ref_alt references into it; and the same pair through
  `dwz --dwarf-5`, whose link is DWARF 5's .debug_sup (DW_FORM_strp_sup, DW_FORM_ref_sup4),
  which gdb 13 cannot read ("Cannot handle DW_FORM_strp_sup"): there gdb reads the same build
  as it was before dwz, while mdbpy reads the dwz'ed one;
- and the same for fixtures/frames.c (at -O0 and -O2, one dwz'ed pair), whose frames' arguments
  and locals must equal gdb's `bt full` as tests/test_frames.py checks them.

On each: every ::print value of test_types_gdb's cases (globals printed by symbol, structs,
members, arrays, bitfields), live and on a gcore core, and ::sizeof / ::offsetof of every struct
and union, equal gdb's. The dwz'ed program with its common file missing gives one warning
naming the file, no traceback, and what was in the file is unknown (no such type), never
wrong.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from support import FIXTURES, SYS_PAUSE, compile_fixture, gcore, start_fixture, wait_syscalls
from test_types_gdb import C_CASES, CPP_CASES, _check_cases, _running_with_core, check_layouts
from types_oracle import Commands, compare

from mdbpy.target.core import open_file_target
from mdbpy.types.scan import SUP, TYPES
from mdbpy.types.space import space_of

needs_dwz = pytest.mark.skipif(shutil.which("dwz") is None, reason="dwz is not installed")

# prog2's own file: one more struct, and struct node again (dwz shares one definition)
SECOND = r"""
struct node { struct node *next; long value; char tag[8]; };
struct second { int id; struct node *head; unsigned char bytes[3]; };
struct second g_second = { 7, 0, { 1, 2, 3 } };
int second_id(void) { return g_second.id; }
"""
SECOND_CPP = r"""
namespace shapes { struct Extra { int a; double b; }; }
shapes::Extra g_extra = { 1, 2.5 };
int extra_a() { return g_extra.a; }
"""


def _gcc(out: Path, *sources, flags=("-g", "-O0")) -> Path:
    subprocess.run(["gcc", *flags, "-o", str(out), *map(str, sources), "-pthread"],
                   check=True, capture_output=True, text=True)
    return out


def _gxx(out: Path, *sources, flags=("-g", "-O0")) -> Path:
    subprocess.run(["g++", *flags, "-o", str(out), *map(str, sources)], check=True,
                   capture_output=True, text=True)
    return out


def _dwz(directory: Path, *exes: Path, dwarf5: bool = False) -> Path:
    """dwz -m common.debug exes..., run in their directory (so the link names common.debug,
    found beside them)."""
    subprocess.run(["dwz", *(["--dwarf-5"] if dwarf5 else []), "-m", "common.debug",
                    *(e.name for e in exes)], cwd=directory, check=True, capture_output=True,
                   text=True)
    return directory / "common.debug"


@pytest.fixture(scope="module")
def shaped(build_dir) -> dict[str, Path]:
    """The types fixture in each shape: tu4, tu5 (type units), dwz1, dwz2 (a dwz'ed pair),
    sup1, sup2 (a pair dwz'ed as DWARF 5); and fixtures/types_cpp.cc as cpp-tu4, cpp-tu5,
    cpp-dwz1, cpp-dwz2."""
    d = Path(build_dir) / "shapes"
    d.mkdir(exist_ok=True)
    src = FIXTURES / "types.c"
    out = {f"tu{v}": _gcc(d / f"types-tu{v}", src,
                          flags=("-g", f"-gdwarf-{v}", "-fdebug-types-section", "-O0"))
           for v in (4, 5)}
    cpp = FIXTURES / "types_cpp.cc"
    for v in (4, 5):
        out[f"cpp-tu{v}"] = _gxx(d / f"types_cpp-tu{v}", cpp,
                                 flags=("-g", f"-gdwarf-{v}", "-fdebug-types-section", "-O0"))
    if shutil.which("dwz") is not None:
        dc = d / "cpp"
        dc.mkdir(exist_ok=True)
        (dc / "second.cc").write_text(SECOND_CPP)
        out["cpp-dwz1"] = _gxx(dc / "types_cpp-dwz1", cpp)
        out["cpp-dwz2"] = _gxx(dc / "types_cpp-dwz2", cpp, dc / "second.cc")
        _dwz(dc, out["cpp-dwz1"], out["cpp-dwz2"])
        (d / "second.c").write_text(SECOND)
        out["dwz1"] = _gcc(d / "types-dwz1", src)
        out["dwz2"] = _gcc(d / "types-dwz2", src, d / "second.c")
        _dwz(d, out["dwz1"], out["dwz2"])
        d5 = d / "sup"
        d5.mkdir(exist_ok=True)
        out["sup1"] = _gcc(d5 / "types-sup1", src)
        out["sup2"] = _gcc(d5 / "types-sup2", src, d / "second.c")
        for k in ("sup1", "sup2"):  # gdb's copy
            out[f"{k}-plain"] = Path(shutil.copy(out[k], d / f"types-{k}-plain"))
        _dwz(d5, out["sup1"], out["sup2"], dwarf5=True)
    return out


def _sections(exe: Path) -> str:
    return subprocess.run(["readelf", "-S", "-W", str(exe)], check=True, capture_output=True,
                          text=True).stdout


def _index_of(exe: Path):
    mdb = Commands(open_file_target(str(exe)))
    try:
        (d,) = [d for o, d in space_of(mdb.session).objects() if o.is_exe]
        return d
    finally:
        mdb.close()


SHAPES = ["tu4", "tu5"] + [pytest.param(s, marks=needs_dwz)
                           for s in ("dwz1", "dwz2", "sup1", "sup2")]
CPP_SHAPES = ["cpp-tu4", "cpp-tu5"] + [pytest.param(s, marks=needs_dwz)
                                       for s in ("cpp-dwz1", "cpp-dwz2")]


@pytest.mark.parametrize("shape", SHAPES)
def test_fixture_premise(shape, shaped):
    """Each build has the shape it stands for, and the index reaches its types there."""
    exe = shaped[shape]
    sections = _sections(exe)
    d = _index_of(exe)
    off = d.index.type_die("struct", "everything")
    assert off is not None
    if shape == "tu4":
        assert ".debug_types" in sections and off >= TYPES
    elif shape == "tu5":
        assert ".debug_types" not in sections and off < SUP
    else:
        link = ".gnu_debugaltlink" if shape.startswith("dwz") else ".debug_sup"
        assert link in sections and SUP <= off < TYPES
        assert d.sup_path == str(exe.parent / "common.debug")
    if shape.startswith("tu"):
        assert len(d.index.sigs) >= 10
        assert "DW_FORM_ref_sig8" in {a.form for a in d.die(d.index.var_die("g_all"))
                                      .attributes.values()}
    if shape in ("dwz2", "sup2"):
        assert d.index.type_die("struct", "second") is not None
        assert d.index.var_die("g_second") is not None


@pytest.fixture(scope="module")
def shaped_procs(shaped, build_dir):
    procs = {}
    try:
        for shape, exe in shaped.items():
            if not shape.endswith("-plain"):
                procs[shape] = _running_with_core(exe, build_dir)
        yield procs
    finally:
        for r, _core in procs.values():
            r.stop()


@pytest.mark.parametrize("where", ["live", "core"])
@pytest.mark.parametrize("shape", SHAPES)
def test_values_equal_gdb(shape, where, shaped, shaped_procs, tmp_path):
    exe = shaped[shape]
    cases = C_CASES + ([("g_second::print", None, "g_second")] if shape.endswith("2") else [])
    assert _check_cases(cases, where, shaped_procs[shape], exe, tmp_path,
                        gdb_exe=shaped.get(f"{shape}-plain")) > 250


@pytest.mark.parametrize("where", ["live", "core"])
@pytest.mark.parametrize("shape", CPP_SHAPES)
def test_cpp_values_equal_gdb(shape, where, shaped, shaped_procs, tmp_path):
    """C++: classes in namespaces (defined, in a type unit, outside the namespace that
    declares them), inheritance, static members, templates, references."""
    cases = CPP_CASES + ([("g_extra::print", None, "g_extra")] if shape.endswith("2") else [])
    assert _check_cases(cases, where, shaped_procs[shape], shaped[shape], tmp_path,
                        "c++") >= 36


@pytest.mark.parametrize("shape", CPP_SHAPES)
def test_cpp_sizeof_offsetof_equal_gdb(shape, shaped, tmp_path):
    names, members = check_layouts(shaped[shape], tmp_path, "c++")
    assert names >= 8 and members >= 12


@pytest.mark.parametrize("shape", SHAPES)
def test_sizeof_offsetof_equal_gdb(shape, shaped, tmp_path):
    names, members = check_layouts(shaped[shape], tmp_path,
                                   gdb_exe=shaped.get(f"{shape}-plain"))
    assert names >= 7 + shape.endswith("2") and members >= 60


@needs_dwz
def test_missing_supplementary_file(shaped, tmp_path, monkeypatch):
    """The dwz'ed program without its common file: one warning naming it, no traceback, and
    the types kept there unknown (as no type at all), never wrong; what the program's own
    DWARF holds (its functions' code, line by line) is still there."""
    alone = tmp_path / "alone"
    alone.mkdir()
    exe = Path(shutil.copy(shaped["dwz1"], alone / "types-dwz1"))
    monkeypatch.setenv("MDBPY_SYSTEM_DEBUG_DIRS", str(tmp_path / "no-debug-dirs"))
    mdb = Commands(open_file_target(str(exe)))
    warnings = []
    try:
        for command in ("::sizeof struct everything", "::sizeof struct node",
                        "::offsetof struct everything bits", "g_all::print", "::enum color",
                        "g_nodes::print struct node", "::sizeof int"):
            out, err = mdb(command)
            assert "Traceback" not in out + err, (command, err)
            warnings += [line for line in err.splitlines() if "common.debug" in line]
            if command == "::sizeof int":
                assert out.strip() == "sizeof (int) = 4"  # C's own types need no DWARF
            else:
                assert mdb.status != 0 and not out, (command, out)
                assert "failed to look up type" in err or "no type" in err, (command, err)
        assert len(warnings) == 1, warnings
        assert "common.debug" in warnings[0] and "not found" in warnings[0]
        (d,) = [d for o, d in space_of(mdb.session).objects() if o.is_exe]
        assert d.index.type_die("struct", "everything") is None
        assert d.missing_sup is not None
    finally:
        mdb.close()


@needs_dwz
def test_supplementary_file_in_cache_key(shaped, tmp_path, monkeypatch, symbol_cache_dir):
    """The cached index says which common file it was built with: the same program indexed
    without its common file, then with it again, sees its types again."""
    from mdbpy.types import space

    alone = tmp_path / "alone"
    alone.mkdir()
    exe = Path(shutil.copy(shaped["dwz1"], alone / "types-dwz1"))
    monkeypatch.setenv("MDBPY_SYSTEM_DEBUG_DIRS", str(tmp_path / "no-debug-dirs"))
    for present in (False, True, False):
        sup = alone / "common.debug"
        if present:
            shutil.copy(shaped["dwz1"].parent / "common.debug", sup)
        elif sup.exists():
            sup.unlink()
        monkeypatch.setattr(space, "_files", {})  # a new mdbpy: only the disk cache is shared
        mdb = Commands(open_file_target(str(exe)))
        try:
            out, err = mdb("::sizeof struct everything")
            assert (out.strip() == "sizeof (struct everything) = 0x1a0") == present, (out, err)
        finally:
            mdb.close()


# -- frames: bt full --------------------------------------------------------------------------

@pytest.fixture(scope="module", params=["tu4", "tu5", "dwz-O0", "dwz-O2"])
def shaped_frames(request, build_dir):
    """(level, exe, running process, its core) of fixtures/frames.c in a shape, parked in
    pause() inside level4 as tests/test_frames.py's."""
    shape = request.param
    d = Path(build_dir) / "frames-shapes"
    d.mkdir(exist_ok=True)
    src = FIXTURES / "frames.c"
    if shape.startswith("tu"):
        exe = compile_fixture("frames", d, flags=("-g", f"-gdwarf-{shape[2]}",
                                                  "-fdebug-types-section", "-O0"),
                              out_name=f"frames-{shape}")
        level = "O0"
    else:
        if shutil.which("dwz") is None:
            pytest.skip("dwz is not installed")
        if not (d / "common.debug").exists():
            pair = [_gcc(d / f"frames-dwz-{lv}", src, flags=("-g", f"-{lv}"))
                    for lv in ("O0", "O2")]
            _dwz(d, *pair)
        level = shape.split("-")[1]
        exe = d / f"frames-dwz-{level}"
        assert ".gnu_debugaltlink" in _sections(exe)
    r = start_fixture(exe)
    try:
        wait_syscalls(r.pid, {r.pid: SYS_PAUSE})
        core = gcore(r.pid, d / f"{exe.name}-gcore")
        yield level, exe, r, core
    finally:
        r.stop()


@pytest.mark.parametrize("where", ["live", "core"])
def test_frames_equal_gdb_bt_full(where, shaped_frames, tmp_path):
    """As test_frames.test_values_equal_gdb_bt_full: every argument and local gdb's bt full
    shows, in every frame of the fixture's functions, is mdbpy's, exactly."""
    from test_frames import frames_equal_gdb

    frames_equal_gdb(where, *shaped_frames, tmp_path)


@needs_dwz
def test_missing_supplementary_file_frames(build_dir, tmp_path, monkeypatch):
    """A dwz'ed program's frames without its common file: the arguments and locals, whose
    names and types are kept there, print as `?=<unknown type>` (never a value read as a
    guessed type), the functions and the stack are still there, and the warning is said once."""
    from support import engine_session, run_in

    d = Path(build_dir) / "frames-missing"
    d.mkdir(exist_ok=True)
    pair = [_gcc(d / f"frames-{lv}", FIXTURES / "frames.c", flags=("-g", f"-{lv}"))
            for lv in ("O0", "O2")]
    _dwz(d, *pair)
    exe = Path(shutil.copy(pair[0], tmp_path / "frames-O0"))
    monkeypatch.setenv("MDBPY_SYSTEM_DEBUG_DIRS", str(tmp_path / "no-debug-dirs"))
    r = start_fixture(exe)
    try:
        wait_syscalls(r.pid, {r.pid: SYS_PAUSE})
        core = gcore(r.pid, tmp_path / "frames-gcore")
    finally:
        r.stop()
    with engine_session(core=core, exe=exe) as s:
        text = run_in(s, "$C")
        assert "level4+" in text and "level1+" in text and "main+" in text
        args = [a for line in text.splitlines() if "level" in line
                for a in line.split("(", 1)[1].rstrip(")").split(", ") if a]
        assert len(args) == 10 and all(a.endswith("=<unknown type>") for a in args), text
        run_in(s, "::frame 1")
        local = run_in(s, "::locals")
        assert "<unknown type>" in local and "0x" not in local, local
        err = s.err.getvalue()
        assert "Traceback" not in err
        assert len([w for w in err.splitlines() if "common.debug" in w]) == 1, err


@needs_dwz
def test_typegraph_same_through_dwz(build_dir, tmp_path):
    """The typegraph's roots are the globals the index finds by address, typed through the
    DWARF: on a core of a dwz'ed fixtures/typegraph.c, opened once with its dwz'ed executable
    and once with the same build before dwz, ::typegraph and ::whattype say the same."""
    from support import engine_session, run_in

    d = Path(build_dir) / "typegraph-dwz"
    d.mkdir(exist_ok=True)
    (d / "second.c").write_text(SECOND)
    src = FIXTURES / "typegraph.c"
    pair = [_gcc(d / "tg1", src), _gcc(d / "tg2", src, d / "second.c")]
    plain = Path(shutil.copy(pair[0], d / "tg1-plain"))
    _dwz(d, *pair)
    report = tmp_path / "report"
    r = start_fixture(pair[0], report)
    try:
        core = gcore(r.pid, tmp_path / "tg-gcore")
    finally:
        r.stop()
    addrs = [line.split()[0] for line in report.read_text().splitlines()][:40]
    outputs = []
    for exe in (pair[0], plain):
        with engine_session(core=core, exe=exe) as s:
            text = run_in(s, "::typegraph")
            text += "".join(run_in(s, f"{a}::whattype") for a in addrs)
            assert "Traceback" not in s.err.getvalue()
            outputs.append(text)
    assert outputs[0] == outputs[1]
    assert outputs[0].count("struct node") >= 20, outputs[0]


@needs_dwz
def test_supplementary_file_found_by_build_id_not_by_a_stale_name(shaped, tmp_path,
                                                                  monkeypatch):
    """Where the link's name finds nothing, the common file is found by its build-id under a
    debug directory (`.build-id/ab/cdef....debug`); a file of that name that is another build's
    common file (another build-id) is never used."""
    from mdbpy.symbols.debuginfo import supplementary_ids
    from mdbpy.types import space

    common = shaped["dwz1"].parent / "common.debug"
    (bid,) = supplementary_ids(str(common))
    alone = tmp_path / "alone"
    alone.mkdir()
    exe = Path(shutil.copy(shaped["dwz1"], alone / "types-dwz1"))
    # a stale common.debug beside it: the DWARF 5 pair's, another build-id
    shutil.copy(shaped["sup1"].parent / "common.debug", alone / "common.debug")
    debug = tmp_path / "debug"
    monkeypatch.setenv("MDBPY_SYSTEM_DEBUG_DIRS", str(debug))
    for by_id in (False, True):
        if by_id:
            (debug / ".build-id" / bid[:2]).mkdir(parents=True)
            shutil.copy(common, debug / ".build-id" / bid[:2] / f"{bid[2:]}.debug")
        monkeypatch.setattr(space, "_files", {})
        mdb = Commands(open_file_target(str(exe)))
        try:
            out, err = mdb("::sizeof struct everything")
            if by_id:
                assert out == "sizeof (struct everything) = 0x1a0\n" and not err
            else:
                assert not out and "common.debug" in err and "not found" in err
        finally:
            mdb.close()


@needs_dwz
def test_allocator_layouts_through_dwz(shaped, tmp_path, monkeypatch):
    """The allocator modules' struct binding (mdbpy/types/layouts.py) reads a dwz'ed file's
    structs from its common file, and its cached entry goes stale with the common file: one
    removed since binds nothing, as a fresh read would."""
    from mdbpy.types import space
    from mdbpy.types.layouts import dwarf_layouts

    alone = tmp_path / "alone"
    alone.mkdir()
    exe = Path(shutil.copy(shaped["dwz1"], alone / "types-dwz1"))
    shutil.copy(shaped["dwz1"].parent / "common.debug", alone / "common.debug")
    monkeypatch.setenv("MDBPY_SYSTEM_DEBUG_DIRS", str(tmp_path / "no-debug-dirs"))
    got = []
    for step in ("read", "cached", "removed"):
        if step == "removed":
            (alone / "common.debug").unlink()
        monkeypatch.setattr(space, "_files", {})
        mdb = Commands(open_file_target(str(exe)))
        try:
            (exe_obj,) = [o for o in mdb.session.symbols.objects() if o.is_exe]
            got.append(dwarf_layouts(mdb.session, exe_obj.name, ["node", "padded"]))
        finally:
            mdb.close()
    read, cached, removed = got
    assert read["node"].size == 0x18 and read["padded"].size == 0x20
    assert {n: (s.size, s.members) for n, s in cached.items()} == \
        {n: (s.size, s.members) for n, s in read.items()}
    assert removed == {}
