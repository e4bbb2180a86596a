"""Frames with their values (issue 22, point 4): gdb's `bt full` is the oracle for ::locals,
::frame and the arguments of $C.

fixtures/frames.c is built at -O0 and at -O2 with -g and parks in pause() under main -> level1
-> level2 -> level3 -> level4. For every frame of the fixture's own functions, on the live process
and on its gcore core, gdb's value of each argument and local in scope at the frame's pc (read
through gdb's Python API, `symbol.value(frame)` for each symbol of the frame's blocks, which is
what `bt full` prints) is compared with mdbpy's: every value gdb knows must be mdbpy's, exactly,
and where gdb says <optimized out> mdbpy must say so too. gdb's is_optimized_out is true when any
part of a value is unknown; mdbpy shows no partial values, so both sides then say optimized out.

fixtures/frames_inline.c (-O2) has functions inlined into one another, a pointer that lives in
no memory (<synthetic pointer>), gcc's typed stack operations and entry values: the frames $C
lists, their variables and lines are gdb's, and the values the fixture's own.
fixtures/frames_cpp.cc (-O2) has C++ frames, named by their demangled symbols as gdb's bt names
them. The evaluator is also tested on its own, on hand-made expressions.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from support import FIXTURES, SYS_PAUSE, compile_fixture, engine_session, gcore, run_in, \
    start_fixture, wait_syscalls, without_args
from types_oracle import GDB_DUMP, PrintParser, compare, run_gdb_script

from mdbpy.types.printer import PrintOptions, Printer
from mdbpy.types.space import space_of

FUNCS = ("level4", "level3", "level2", "level1", "main")
CLONE_SUFFIX = re.compile(r" \[clone [^\]]*\]$")

GDB_FRAMES = GDB_DUMP + r'''
import re
want = set(os.environ["FRAMES_FUNCS"].split(","))
bt = {}  # frame level -> the arguments bt prints, entry values included
for line in gdb.execute("bt", to_string=True).splitlines():
    m = re.match(r"#(\d+)\s+(?:0x[0-9a-f]+ in )?\S+ \((.*)\)(?: at \S+:\d+| from \S+)?$", line)
    if m:
        bt[int(m.group(1))] = m.group(2)
frames = []
f = gdb.newest_frame()
while f is not None:
    fn = f.function()
    if fn is not None and fn.name in want:
        args, locs = {}, {}
        block = f.block()
        while block is not None:
            for sym in block:
                if not (sym.is_argument or sym.is_variable):
                    continue
                v = sym.value(f)
                # the innermost of two same-named variables is the one in scope; gdb lists an
                # inlined function's variables a second time, optimized out, from its
                # abstract origin when the concrete one sits in a nested block
                (args if sym.is_argument else locs).setdefault(
                    sym.name, "optimized out" if v.is_optimized_out else
                    "synthetic pointer" if v.type.code == gdb.TYPE_CODE_PTR
                    and str(v) == "<synthetic pointer>" else dump(v))
            if block.function is not None:
                break
            block = block.superblock
        entry = {}  # x@entry as gdb evaluates it (its bt shows the ones that are known)
        f.select()
        for name in args:
            try:
                e = gdb.parse_and_eval(name + "@entry")
                entry[name] = "optimized out" if e.is_optimized_out else dump(e)
            except gdb.error:
                entry[name] = None
        frames.append({"func": fn.name, "pc": f.pc(), "args": args, "locals": locs,
                       "inline": f.type() == gdb.INLINE_FRAME, "line": f.find_sal().line,
                       "tail": f.type() == gdb.TAILCALL_FRAME, "entry": entry,
                       "bt": bt.get(f.level())})
    f = f.older()
json.dump(frames, open(os.environ["TYPES_OUT"], "w"))
'''

# What -O0 keeps in memory for the whole call, so every value is known (gdb agrees: checked).
O0_VALUES = {
    "level4": {"depth": 37, "local4": 556, "inner4": 634, "word": "deep"},
    "level3": {"k": 36, "local3": 438, "s": {"x": 4, "y": 2},
               "p": {"a": 7, "b": 78}, "copy": {"a": 445, "b": 78}},
    "level2": {"count": 4, "flag": 6, "i": 2, "step": 36, "total": 78,
               "sm": {"x": 4, "y": 2}, "pr": {"a": 7, "b": 78}},
    "level1": {"seed": 5, "doubled": 10},
}


@pytest.fixture(scope="module", params=["O0", "O2"])
def parked(request, build_dir):
    """(level, exe, running process, its core), the process in pause() inside level4."""
    level = request.param
    exe = compile_fixture("frames", build_dir, flags=("-g", f"-{level}"),
                          out_name=f"frames-{level}")
    r = start_fixture(exe)
    try:
        wait_syscalls(r.pid, {r.pid: SYS_PAUSE})
        core = gcore(r.pid, Path(build_dir) / f"frames-{level}-gcore")
        yield level, exe, r, core
    finally:
        r.stop()


def _gdb_frames(where, exe, r, core, tmp_path, funcs=FUNCS) -> list[dict]:
    """gdb's frames of the functions funcs (GDB_FRAMES), of the live process or its core."""
    args = ["-p", str(r.pid)] if where == "live" else [str(exe), str(core)]
    return run_gdb_script(args, GDB_FRAMES, tmp_path, "c", FRAMES_FUNCS=",".join(funcs))


def _session(where, exe, r, core):
    return engine_session(r.pid) if where == "live" else engine_session(core=core, exe=exe)


def _our_frames(s) -> list[tuple[str, int, list]]:
    """(function, pc, FrameVars) of each of the fixture's frames, innermost first."""
    from mdbpy.types.frames import frame_variables
    from mdbpy.unwind import unwind

    frames = unwind(s, s.current_thread())
    out = []
    for i, f in enumerate(frames):
        name = s.format_addr(f.pc, f.ret).split("+")[0]
        if name in FUNCS:
            out.append((name, f.pc, frame_variables(s, frames, i)))
    return out


def _address_of(s):
    def address_of(token: str) -> int:
        name, _, off = token.partition("+")
        obj, _, sym = name.rpartition("`")
        found = s.symbols.lookup(sym, obj or None)
        assert found is not None, token
        return found.addr + (int(off, 16) if off else 0)
    return address_of


def _parsed(s, var):
    """mdbpy's value of a FrameVar as types_oracle's PrintParser reads ::print's text."""
    if var.value is None:
        return f"<{var.why}>"
    text = Printer(space_of(s), PrintOptions(array_limit=None)).render(var.value, var.name, ".")
    return PrintParser(_address_of(s)).parse(text, var.name)


@pytest.mark.parametrize("where", ["live", "core"])
def test_values_equal_gdb_bt_full(where, parked, tmp_path):
    frames_equal_gdb(where, *parked, tmp_path)


def frames_equal_gdb(where, level, exe, r, core, tmp_path) -> None:
    """Every argument and local gdb's bt full shows, in every frame of the fixture's
    functions, is mdbpy's, exactly (tests/test_types_shapes.py runs it on other DWARF
    shapes of the same program)."""
    gdb = _gdb_frames(where, exe, r, core, tmp_path)
    wrong, known, optimized = [], 0, 0
    with _session(where, exe, r, core) as s:
        ours = _our_frames(s)
        assert [(f, pc) for f, pc, _ in ours] == [(g["func"], g["pc"]) for g in gdb]
        for (func, _, found), g in zip(ours, gdb):
            mine = {(v.arg, v.name): v for v in found}
            theirs = {**{(True, k): v for k, v in g["args"].items()},
                      **{(False, k): v for k, v in g["locals"].items()}}
            assert set(mine) == set(theirs), func  # the same variables in scope
            for key, want in theirs.items():
                got = _parsed(s, mine[key])
                if want == "optimized out":
                    optimized += 1
                    if got != "<optimized out>":
                        wrong.append(f"{func} {key[1]}: {got!r} where gdb says optimized out")
                    continue
                known += 1
                wrong += [f"{func} {d}" for d in compare(got, want, key[1])]
    assert not wrong, "\n".join(wrong)
    if level == "O0":
        assert optimized == 0 and known == 24
    else:  # values kept in callee-saved registers, on the stack, and given by call sites
        assert known >= 12 and optimized >= 6


def test_values_are_the_programs(parked):
    """The values the fixture computes, independently of gdb: at -O0 every one is known; at
    -O2 every one that is not <optimized out> is the program's value."""
    level, exe, r, core = parked
    with engine_session(core=core, exe=exe) as s:
        for func, _, found in _our_frames(s):
            for name, want in O0_VALUES.get(func, {}).items():
                (var,) = [v for v in found if v.name == name]
                if var.value is None and level == "O2":
                    continue
                got = _parsed(s, var)
                if isinstance(want, str):
                    assert got == {"$string": want}, (func, name, got)
                elif isinstance(want, dict):
                    assert {k: got[k] for k in want} == want, (func, name, got)
                else:
                    assert got == want, (func, name, got)
            # level2's `before` block ended before the call: not in scope at its pc
            assert "before" not in {v.name for v in found}


ARGS = re.compile(r"^([0-9a-f]{16}) (?:\[tail call\] )?(\w+)\+0x[0-9a-f]+\((.*)\)$")


def arg_items(text: str) -> list[tuple[str, str, str]]:
    """(name, kind, value) of each argument a bt or $C line shows between its parentheses:
    kind `now` for `x=v`, `both` for `x=x@entry=v` (the entry value is the value now),
    `entry` for `x@entry=v`."""
    out = []
    for item in re.split(r", (?=[\w@]+=)", text) if text else []:
        key, _, value = item.partition("=")
        if key.endswith("@entry"):
            out.append((key.removesuffix("@entry"), "entry", value))
        elif value.startswith(f"{key}@entry="):
            out.append((key, "both", value.removeprefix(f"{key}@entry=")))
        else:
            out.append((key, "now", value))
    return out


GDB_ERRORS = ((r"value has been optimized out", "<optimized out>"),
              (r"Cannot access memory at address (0x[0-9a-f]+)", r"<unreadable \1>"))


def in_our_words(text: str) -> str:
    """What mdbpy shows where gdb's bt shows `<error reading variable: MSG>`."""
    msg = text.removeprefix("<error reading variable: ").removesuffix(">")
    for pattern, ours in GDB_ERRORS:
        if re.fullmatch(pattern, msg):
            return re.sub(pattern, ours, msg)
    raise AssertionError(f"no word for gdb's {text}")


def args_equal_gdb(s, line_args: str, g: dict) -> int:
    """Asserts that the arguments $C shows for a frame (line_args) are gdb's bt's for it (g,
    from GDB_FRAMES): the same arguments and entry values, in the same shapes, each value
    gdb's (`...` for a struct, as bt prints it); returns how many values were compared."""
    parser = PrintParser(_address_of(s))
    got = arg_items(line_args)
    theirs = arg_items(g["bt"])
    assert [(n, k) for n, k, _ in got] == [(n, k) for n, k, _ in theirs], (line_args, g["bt"])
    assert [n for n, k, _ in got if k != "entry"] == list(g["args"])  # every argument, in order
    for (name, kind, value), (_, _, text) in zip(got, theirs):
        if text.startswith("<error reading variable: "):  # an entry value gdb cannot evaluate
            assert value == in_our_words(text), (name, line_args)
            continue
        want = g["entry"][name] if kind == "entry" else g["args"][name]
        if kind == "both":
            assert g["entry"][name] == want, name
        if want == "optimized out":
            assert value == "<optimized out>", (name, line_args)
        elif isinstance(want, dict) and not ({"$int", "$ptr"} & set(want)):
            assert value == "...", (name, line_args)
        else:
            assert not compare(parser.scalar(value), want, name), (name, line_args)
    return len(got)


@pytest.mark.parametrize("where", ["live", "core"])
def test_dollar_C_arguments_equal_gdb(where, parked, tmp_path):
    """$C (and ::stack -v) print each argument as `name=value`, with its entry value as gdb's
    bt shows it (`x=x@entry=v`, `x=v, x@entry=w`): scalars equal gdb's, structs `...`, and
    `<optimized out>` exactly where gdb says so."""
    level, exe, r, core = parked
    gdb = {g["func"]: g for g in _gdb_frames(where, exe, r, core, tmp_path)}
    with _session(where, exe, r, core) as s:
        text = run_in(s, "$C")
        assert run_in(s, "::stack -v") == text
        checked = 0
        for line in text.splitlines():
            m = ARGS.match(line)
            if m is not None and m.group(2) in gdb:
                checked += args_equal_gdb(s, m.group(3), gdb[m.group(2)])
        assert checked == (10 if level == "O0" else 11)
        # $c keeps mdb's empty parentheses; cnt limits the arguments $C shows
        assert re.search(r"^level2\+0x[0-9a-f]+\(\)$", run_in(s, "$c"), re.M)
        limited = run_in(s, "$C 1")
        count = "count=0x4" if level == "O0" else "count=count@entry=0x4"  # gdb's, as above
        assert re.search(rf" level2\+0x[0-9a-f]+\({count}\)$", limited, re.M), limited


def test_frame_and_locals_commands(parked):
    """::frame N selects and prints frame N as $C does; ::locals prints its arguments then its
    locals, innermost block first, with their types."""
    level, exe, r, core = parked
    with engine_session(core=core, exe=exe) as s:
        lines = run_in(s, "$C").splitlines()
        n = next(i for i, line in enumerate(lines) if " level2+" in line)
        assert run_in(s, f"::frame 0t{n}").splitlines() == [lines[n]]
        assert run_in(s, "::frame").splitlines() == [lines[n]]
        out = run_in(s, "::locals").splitlines()
        assert out[:3] == ["long int count = 0x4", "int *values = g_values",
                           "unsigned char flag = 0x6"]
        assert "long int total = 0x4e" in out
        if level == "O0":
            assert out[3:5] == ["struct small sm = {", "    int sm.x = 0x4"]
            assert "long int step = 0x24" in out and "int i = 0x2" in out
        else:
            assert "struct small sm = <optimized out>" in out
            assert "int i = <optimized out>" in out
        assert not any("before" in line for line in out)
        run_in(s, "::frame 0t99")
        assert "no frame 99" in s.err.getvalue()
        assert run_in(s, "::frame").splitlines() == [lines[n]]  # the selection stays


# -- inlined frames, implicit pointers, typed stack ops: fixtures/frames_inline.c at -O2 ------

INLINE_FUNCS = ("span", "scale", "twice", "outer", "main")
# The fixture's own values (main's argc is 1): outer(3, 7, 41) -> twice(&pt, 41) -> scale(&pt,
# 42) -> span(g_buf + 3, g_buf + 1330, 42). What gcc keeps nowhere is optimized out; p points
# at pt, which lives in no memory.
INLINE_VALUES = {
    "span": {"start": ("g_buf", 3), "end": ("g_buf", 1330), "k": 42, "n": 1327 // 24,
             "m": 1327 % 7, "q": 42 // 5},
    "scale": {"k": 42, "p": "<synthetic pointer>", "sum": 3 * 42 + 7, "h": "heap",
              "r": "<optimized out>"},
    "twice": {"k": 41, "p": "<synthetic pointer>", "r": "<optimized out>"},
    "outer": {"a": 3, "b": 7, "c": 41, "pt": "<optimized out>", "r": "<optimized out>"},
    "main": {"argc": "<optimized out>", "argv": "<optimized out>"},
}


def parked_o2(build_dir, name: str):
    """(exe, running process, its gcore core) of fixtures/<name>.c built with -O2 -g, parked
    in pause() (a generator for a module fixture)."""
    exe = compile_fixture(name, build_dir, flags=("-g", "-O2"))
    r = start_fixture(exe)
    try:
        wait_syscalls(r.pid, {r.pid: SYS_PAUSE})
        yield exe, r, gcore(r.pid, Path(build_dir) / f"{name}-gcore")
    finally:
        r.stop()


@pytest.fixture(scope="module")
def inline_parked(build_dir):
    """(exe, running process, its gcore core), parked in pause() inside span."""
    yield from parked_o2(build_dir, "frames_inline")


def test_inline_fixture_premise(inline_parked):
    """The fixture's DWARF has what the tests below are about."""
    import subprocess

    exe, _, _ = inline_parked
    text = subprocess.run(["readelf", "--debug-dump=info,loc", str(exe)], capture_output=True,
                          text=True, check=True).stdout
    for what in ("DW_TAG_inlined_subroutine", "DW_OP_implicit_pointer", "DW_OP_convert",
                 "DW_OP_entry_value"):
        assert what in text, what


def _shown_vars(s):
    """(function, pc, inlined, FrameVars) of each of the fixture's frames as $C lists them."""
    from mdbpy.types.frames import frame_variables, shown_frames
    from mdbpy.unwind import unwind

    frames = unwind(s, s.current_thread())
    out = []
    for sh in shown_frames(s, frames):
        f = frames[sh.index]
        name = sh.name if sh.inlined else s.format_addr(f.pc, f.ret).split("+")[0]
        if name in INLINE_FUNCS:
            out.append((name, f.pc, sh.inlined,
                        frame_variables(s, frames, sh.index, scope=sh.scope)))
    return out


def _listed(frames) -> list[tuple]:
    """(function, pc, inlined, line) of the fixture's functions among ::stacks' JSON frames
    (or the API's), as gdb's bt would name them: `[inlined] ` and `+off` taken off."""
    out = []
    for f in frames:
        name = f["name"].removeprefix("[inlined] ").split("+")[0]
        if name in INLINE_FUNCS:
            out.append((name, f["pc"], f["name"].startswith("[inlined] "), f["line"]))
    return out


@pytest.mark.parametrize("where", ["live", "core"])
def test_inlined_frames_equal_gdb_bt_full(where, inline_parked, tmp_path):
    """The frames are gdb's, inlined ones included (same functions, pcs, inline or not), with
    the same variables in scope; every value is the program's (h: the buffer the fixture
    printed); where gdb says optimized out or <synthetic pointer> mdbpy says so too, and every
    other value gdb shows is mdbpy's. ::stacks -l's JSON and the API's stack() list the same
    frames as gdb, with gdb's lines."""
    import json

    import mdbpy

    exe, r, core = inline_parked
    args = ["-p", str(r.pid)] if where == "live" else [str(exe), str(core)]
    gdb = run_gdb_script(args, GDB_FRAMES, tmp_path, "c", FRAMES_FUNCS=",".join(INLINE_FUNCS))
    bt = [(g["func"], g["pc"], g["inline"], g["line"]) for g in gdb]
    assert [w[2] for w in bt] == [False, True, True, False, False]  # the fixture's premise
    with _session(where, exe, r, core) as s:
        ours = _shown_vars(s)
        assert [(f, pc, inl) for f, pc, inl, _ in ours] == [w[:3] for w in bt]
        s.options["json"] = True
        (thread,) = json.loads(run_in(s, "::stacks -l"))["threads"]
        s.options["json"] = False
        assert _listed(thread["frames"]) == bt
        assert [f for f, _, inl, _ in ours if inl] == ["scale", "twice"]
        g_buf = s.symbols.lookup("g_buf").addr
        for (func, _, _, found), g in zip(ours, gdb):
            mine = {v.name: _parsed(s, v) for v in found}
            assert mine.keys() == {**g["args"], **g["locals"]}.keys(), func
            truth = {k: g_buf + v[1] if isinstance(v, tuple) else r.addr(v) if v == "heap"
                     else v for k, v in INLINE_VALUES[func].items()}
            assert mine == truth, func
            for name, want in {**g["args"], **g["locals"]}.items():
                if want in ("optimized out", "synthetic pointer"):
                    assert mine[name] == f"<{want}>", (func, name)
                else:
                    assert not compare(mine[name], want, name), (func, name, mine[name], want)
    if where == "core":  # the API on the same core (attach would need the live one released)
        with mdbpy.open_core(str(core), str(exe)) as dbg:
            assert _listed([f.as_dict() for f in dbg.stack(lines=True)]) == bt


def test_inlined_frames_in_dollar_C_and_locals(inline_parked, tmp_path):
    """$C lists the inlined functions as frames of their own, `[inlined] name(args)` at the
    frame pointer of the frame holding them; -l gives each gdb's line (the line of the pc,
    then the inlined calls'); $c and $C list the same frames, and ::stacks -v -l (and ::stacks
    -l) lists them as $C -l ($c -l) does, in text and JSON; a piped $c passes each unwound
    frame's pc once; ::frame counts the inlined ones, and ::locals prints their variables; the
    typegraph types a buffer from an inlined frame's local."""
    import json

    from mdbpy.unwind import unwind

    exe, r, core = inline_parked
    gdb = {g["func"]: g["line"] for g in run_gdb_script(
        [str(exe), str(core)], GDB_FRAMES, tmp_path, "c", FRAMES_FUNCS=",".join(INLINE_FUNCS))}
    src = FIXTURES / "frames_inline.c"
    with engine_session(core=core, exe=exe) as s:
        lines = run_in(s, "$C -l").splitlines()
        k = next(i for i, line in enumerate(lines) if " span+" in line)
        fp = lines[k + 1].split()[0]
        assert lines[k + 1:k + 4] == [
            f"{fp} [inlined] scale(k=0x2a, p=<synthetic pointer>) at {src}:{gdb['scale']}",
            f"{fp} [inlined] twice(k=0x29, p=<synthetic pointer>) at {src}:{gdb['twice']}",
            f"{fp} {lines[k + 3].split()[1].split('(')[0]}(a=0x3, b=b@entry=0x7, c=0x29) at "
            f"{src}:{gdb['outer']}"]
        assert re.fullmatch(r"outer\+0x[0-9a-f]+", lines[k + 3].split()[1].split("(")[0])
        assert [without_args(line).split(" ", 1)[1] for line in lines] == \
            run_in(s, "$c -l").splitlines()
        tid = s.current_thread().tid
        assert run_in(s, "::stacks -v -l").splitlines() == [f"THREAD {tid}", *lines, ""]
        assert run_in(s, "::stacks -l").splitlines() == [f"THREAD {tid}",
                                                         *run_in(s, "$c -l").splitlines(), ""]
        s.options["json"] = True
        (thread,) = json.loads(run_in(s, "::stacks -l"))["threads"]
        s.options["json"] = False
        assert [f"{f['fp']:016x} {f['name']}()" + (f" at {f['file']}:{f['line']}" if f["file"]
                                                   else "")
                for f in thread["frames"]] == [without_args(line) for line in lines]
        pcs = [f"{f.pc:x}" for f in unwind(s, s.current_thread())]  # piped: each frame's pc
        assert run_in(s, "$c | ::eval .=K").split() == pcs
        assert run_in(s, f"::frame 0t{k + 1}").splitlines() == [lines[k + 1].split(" at ")[0]]
        heap = r.addr("heap")
        assert run_in(s, "::locals").splitlines() == [
            "int k = 0x2a", "const struct point *p = <synthetic pointer>", "int sum = 0x85",
            f"struct point *h = 0x{heap:x} (allocated from chunk 0x20)",
            "long int r = <optimized out>"]
        run_in(s, f"::frame 0t{k + 2}")
        assert run_in(s, "::locals").splitlines() == [
            "int k = 0x29", "const struct point *p = <synthetic pointer>",
            "long int r = <optimized out>"]
        # the typegraph's roots include the inlined frames' locals: h is the only pointer (to
        # an 8-byte struct in a 24-byte buffer: an array of 3, as the typegraph counts them)
        run_in(s, "::typegraph")
        assert run_in(s, f"{heap + 4:x}::whattype -v") == (
            f"{heap + 4:x} is 0x4 bytes into struct point [3] (member [0].y)\n"
            f"    in the 0x18-byte buffer at {heap:x}, typed by root pointer\n")


# -- C++: frames named by their demangled symbols ------------------------------------------------

CPP_CHAIN = ["zoo::wait_here", "zoo::Cat::purr", "zoo::Cat::speak",
             "zoo::apply<int>(int)::{lambda(int)#1}::operator()", "zoo::apply<int>", "main"]


def test_cpp_frames_are_demangled_as_gdb_names_them(build_dir):
    """fixtures/frames_cpp.cc at -O2: $c names each C++ frame as gdb's bt does (the inlined
    method through its DWARF linkage name), without parameters; gdb keeps a lambda's
    signature, and mdbpy shows the clone suffix of a symbol gcc specialized. ::stacks and its
    JSON list the same frames, the inlined method included, named the same way."""
    import json
    import subprocess

    exe = build_dir / "frames_cpp"
    subprocess.run(["g++", "-g", "-O2", "-o", str(exe), str(FIXTURES / "frames_cpp.cc")],
                   check=True, capture_output=True)
    r = start_fixture(exe)
    try:
        wait_syscalls(r.pid, {r.pid: SYS_PAUSE})
        bt = subprocess.run(["gdb", "-batch", "-nx", "-p", str(r.pid), "-ex", "bt"],
                            capture_output=True, text=True, timeout=120).stdout
        gdb = [re.sub(r"\(int\) const$", "", m.group(1)) for m in
               re.finditer(r"^#\d+\s+(?:0x[0-9a-f]+ in )?(.+?) \(", bt, re.M)]
        assert gdb[1:7] == CPP_CHAIN, bt
        with engine_session(r.pid) as s:
            names = [re.sub(r"(\+0x[0-9a-f]+)?\(\)$", "", line).removeprefix("[inlined] ")
                     for line in run_in(s, "$c").splitlines()]
            assert [CLONE_SUFFIX.sub("", n) for n in names[1:7]] == CPP_CHAIN
            assert names[0] == "libc.so.6`pause"
            assert run_in(s, "::stacks").splitlines()[1:-1] == run_in(s, "$c").splitlines()
            s.options["json"] = True
            frames = json.loads(run_in(s, "::stacks"))["threads"][0]["frames"]
            s.options["json"] = False
            assert [f["name"] for f in frames] == [
                line.removesuffix("()") for line in run_in(s, "::stacks").splitlines()[1:-1]]
            # ::whatis names a C++ function's address as the frames do
            sym = next(o for o in s.symbols.objects() if o.is_exe).lookup(
                "_ZN3zoo5applyIiEET_S1_")
            assert sym is not None and sym.size > 4
            line = run_in(s, f"{sym.addr + 4:x}::whatis")
            assert line.startswith(f"{sym.addr + 4:x} is zoo::apply<int>+0x4, in "), line
    finally:
        r.stop()


def test_demangling_switch_g(build_dir):
    """$G (mdb's C++ demangling switch): off, ::nm and /a show the symbols' own names; on,
    ::nm prints each C++ name whole as c++filt (libiberty, as gdb and `nm -C`) spells it, and
    /a names a C++ function as the frames do; again off, as before. `-o demangle` starts with
    it on."""
    import subprocess

    from support import run_mdbpy

    exe = build_dir / "frames_cpp_nm"
    subprocess.run(["g++", "-g", "-O2", "-o", str(exe), str(FIXTURES / "frames_cpp.cc")],
                   check=True, capture_output=True)
    nm = "::nm -h -f val,name"
    p = run_mdbpy(str(exe), "-S", "-e", f"{nm}; $G; {nm}; $G; {nm}")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    n = (len(lines) - 2) // 3
    raw, on, off = lines[:n], lines[n + 1:2 * n + 1], lines[2 * n + 2:]
    assert (lines[n], lines[2 * n + 1], off) == ("C++ symbol demangling enabled",
                                                 "C++ symbol demangling disabled", raw)
    names = [line.split("|", 1)[1] for line in raw]
    cxx = [m for m in names if m.startswith("_Z")]
    assert len(cxx) >= 4  # zoo::wait_here, zoo::Cat::speak, zoo::apply<int>, its lambda
    filt = subprocess.run(["c++filt"], input="\n".join(cxx) + "\n", capture_output=True,
                          text=True, check=True).stdout.splitlines()
    want = dict(zip(cxx, filt))
    assert [line.split("|", 1)[1] for line in on] == [want.get(m, m) for m in names]
    assert all(want[m] != m for m in cxx)
    # /a (dot as a symbol, the label and the value): the symbol's own name, then as the
    # frames name it
    sym = "_ZN3zoo9wait_hereEi"
    cmds = f"{sym}+4/a; $G; {sym}+4/a"
    p = run_mdbpy(str(exe), "-S", "-e", cmds)
    assert p.returncode == 0, p.stderr
    first, _, second = p.stdout.splitlines()
    assert (first.split(), second.split()) == ([f"{sym}+0x4:"] * 2,
                                               ["zoo::wait_here+0x4:"] * 2), p.stdout
    p = run_mdbpy(str(exe), "-S", "-o", "demangle", "-e", f"{sym}+4/a")
    assert p.stdout.split() == ["zoo::wait_here+0x4:"] * 2, p.stdout


@pytest.mark.parametrize("mangled,name", [
    ("_ZN3zoo3Cat5speakEi", "zoo::Cat::speak"),
    ("_ZNK3zoo3Cat5speakEi", "zoo::Cat::speak"),
    ("_ZN3zoo5applyIiEET_S1_", "zoo::apply<int>"),  # a template function's return type dropped
    ("_ZZN3zoo5applyIiEET_S1_ENKUliE_clEi.isra.0",
     "zoo::apply<int>(int)::{lambda(int)#1}::operator() [clone .isra.0]"),
    ("_ZNSt6vectorIiSaIiEE9push_backERKi", "std::vector<int, std::allocator<int> >::push_back"),
    ("_Znwm", "operator new"), ("_ZdlPvm", "operator delete"),
    ("_ZN12_GLOBAL__N_14Impl3runEv", "(anonymous namespace)::Impl::run"),
    ("_ZNKSt9exception4whatEv@@GLIBCXX_3.4", "std::exception::what"),
    ("_ZTV6Circle", "vtable for Circle"), ("_ZGVZ4mainE1x", "guard variable for main::x"),
    ("_ZN3zoo5countE", "zoo::count"),
    ("main", "main"), ("_Z", "_Z"),
    # hostile: too long to be passed on, and deep enough to hit libiberty's recursion limit
    ("_ZN" + "N1a" * 3000 + "E", "_ZN" + "N1a" * 3000 + "E"),
    ("_Z1f" + "P" * 4000 + "v", "_Z1f" + "P" * 4000 + "v")])
def test_function_names(mangled, name):
    """Demangled with libstdc++'s own demangler, shown as gdb's bt names frames; what is not a
    mangled name, or does not demangle, stays as it is."""
    from mdbpy.symbols.demangle import function_name

    assert function_name(mangled) == name


def test_readable_addresses():
    from mdbpy.symbols.demangle import readable

    assert readable("libstdc++.so.6`_ZNKSt9exception4whatEv+0x10") == \
        "libstdc++.so.6`std::exception::what+0x10"
    assert readable("_ZN3zoo3Cat5speakEi") == "zoo::Cat::speak"
    assert readable("main+0x2f") == "main+0x2f" and readable("0x1234") == "0x1234"


# -- the evaluator on its own: what it refuses to guess ----------------------------------------

class _Ctx:
    """A frame context with only rsp and rbx recovered, and memory that is readable only at
    0x1000..0x1010."""

    bias = 0

    def reg(self, n):
        from mdbpy.types.locations import OPTIMIZED_OUT, Unavailable

        regs = {7: 0x1000, 3: 0x2a}
        if n not in regs:
            raise Unavailable(OPTIMIZED_OUT)
        return regs[n]

    def cfa(self):
        return 0x1008

    def frame_base(self):
        return self.cfa()

    def entry_value(self, n):
        from mdbpy.types.locations import OPTIMIZED_OUT, Unavailable

        raise Unavailable(OPTIMIZED_OUT)

    def base_type(self, offset):
        """0x2a: unsigned long, 0x30: int, 0x38: unsigned char; 0x40 (a float) is refused."""
        from mdbpy.types.locations import OPTIMIZED_OUT, Unavailable

        types = {0x2a: (8, False), 0x30: (4, True), 0x38: (1, False)}
        if offset not in types:
            raise Unavailable(OPTIMIZED_OUT)
        return types[offset]

    def read(self, addr, size):
        from mdbpy.types.locations import Unavailable

        if not (0x1000 <= addr and addr + size <= 0x1010):
            raise Unavailable(f"unreadable 0x{addr:x}")
        return bytes(range(addr - 0x1000, addr - 0x1000 + size))


def _where(expr: bytes, size: int = 4):
    from elftools.dwarf.dwarf_expr import DWARFExprParser
    from elftools.dwarf.structs import DWARFStructs

    from mdbpy.types.locations import Unavailable, evaluate, place

    ops = DWARFExprParser(DWARFStructs(True, 32, 8)).parse_expr(expr)
    try:
        return place(evaluate(ops, _Ctx()), size, _Ctx())
    except Unavailable as e:
        return f"<{e}>"


def test_locations_never_guess():
    assert _where(bytes([0x91, 0x04])) == (0x100C, None)  # fbreg 4 on the CFA
    assert _where(bytes([0x77, 0x08])) == (0x1008, None)  # breg7 (rsp) 8
    assert _where(bytes([0x53])) == (None, bytes([0x2a, 0, 0, 0]))  # reg3 (rbx)
    assert _where(bytes([0x55])) == "<optimized out>"  # reg5 (rdi): not recovered
    assert _where(bytes([0x75, 0x00])) == "<optimized out>"  # breg5 (rdi)
    assert _where(bytes([0xa3, 0x01, 0x55, 0x9f])) == "<optimized out>"  # entry_value(rdi)
    assert _where(bytes([0x35, 0x9f])) == (None, bytes([5, 0, 0, 0]))  # lit5; stack_value
    # deref of unreadable memory: said so, never zeros
    assert _where(bytes([0x77, 0x30, 0x06])) == "<unreadable 0x1030>"
    # pieces: rbx then memory; a piece without a location makes the whole optimized out
    assert _where(bytes([0x53, 0x93, 0x04, 0x77, 0x00, 0x93, 0x04]), 8) == \
        (None, bytes([0x2a, 0, 0, 0, 0, 1, 2, 3]))
    assert _where(bytes([0x53, 0x93, 0x04, 0x93, 0x04]), 8) == "<optimized out>"
    assert _where(b"") == "<optimized out>"


def _value(expr: bytes, size: int = 8):
    """The integer an expression computes (a DW_OP_stack_value), or <why>."""
    got = _where(expr, size)
    return got if isinstance(got, str) else int.from_bytes(got[1], "little", signed=True)


def test_typed_stack_ops():
    """DW_OP_convert and the other typed ops: unsigned division of 8-byte values (gcc's), sign
    extension through a narrower type, typed registers, memory and constants; typed arithmetic
    the evaluator does not model, and floating-point types, are optimized out."""
    conv_ul, conv_int, conv_uc, conv_gen = [0xa8, 0x2a], [0xa8, 0x30], [0xa8, 0x38], [0xa8, 0x00]
    lit = lambda n: [0x08, n]  # noqa: E731  DW_OP_const1u n
    # -7 / 2 as unsigned long is 0x7ffffffffffffffc, as int -3 (C's division, toward zero)
    assert _value(bytes([*lit(7), 0x1f, *conv_ul, 0x32, *conv_ul, 0x1b, *conv_gen, 0x9f])) == \
        0x7FFFFFFFFFFFFFFC
    assert _value(bytes([*lit(7), 0x1f, *conv_int, *conv_gen, 0x9f])) == -7
    # 0x2a (rbx) as unsigned char, minus 1 in generic arithmetic; and the GNU spelling
    assert _value(bytes([0xf5, 0x03, 0x38, *conv_gen, 0x31, 0x1c, 0x9f])) == 0x29
    assert _value(bytes([0xf7, 0x38, 0xf7, 0x00, 0x9f]), 1) == "<optimized out>"  # empty stack
    assert _value(bytes([0xa5, 0x03, 0x38, *conv_gen, 0x9f])) == 0x2a  # regval_type rbx
    assert _value(bytes([0x77, 0x01, 0xa6, 0x01, 0x38, *conv_gen, 0x9f])) == 1  # deref_type
    assert _value(bytes([0xa4, 0x30, 0x04, 0xff, 0xff, 0xff, 0xff, *conv_gen, 0x9f])) == -1
    # 17 % 5 (unsigned), equality of typed values
    assert _value(bytes([*lit(17), *conv_ul, *lit(5), *conv_ul, 0x1d, *conv_gen, 0x9f])) == 2
    assert _value(bytes([*lit(3), *conv_ul, *lit(3), *conv_ul, 0x29, 0x9f])) == 1
    # not modelled: narrow typed arithmetic, mixed types, typed shifts, floats
    assert _value(bytes([*lit(3), *conv_int, *lit(3), *conv_int, 0x22, 0x9f])) == \
        "<optimized out>"
    assert _value(bytes([*lit(3), *conv_ul, *lit(3), 0x22, 0x9f])) == "<optimized out>"
    assert _value(bytes([*lit(3), *conv_ul, *lit(1), *conv_ul, 0x25, 0x9f])) == \
        "<optimized out>"
    assert _value(bytes([*lit(3), *conv_ul, 0x1f, 0x9f])) == "<optimized out>"  # neg
    assert _value(bytes([*lit(3), 0xa8, 0x40, 0x9f])) == "<optimized out>"


def test_implicit_pointer_is_a_synthetic_pointer():
    """A pointer to a value in no memory is <synthetic pointer> (gdb's words) whole, and part
    of an optimized-out variable when it is one piece of several."""
    implicit = [0xa0, 0x10, 0, 0, 0, 0]  # DW_OP_implicit_pointer <0x10> + 0
    assert _where(bytes(implicit), 8) == "<synthetic pointer>"
    assert _where(bytes([0xf2, 0x10, 0, 0, 0, 0]), 8) == "<synthetic pointer>"  # GNU
    assert _where(bytes([*implicit, 0x93, 0x08, 0x53, 0x93, 0x08]), 16) == "<optimized out>"
