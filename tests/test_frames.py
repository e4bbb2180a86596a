"""Frames with their values (issue 22, point 4): gdb's `bt full` is the oracle for ::locals,
::frame and the arguments of $C.

fixtures/frames.c is built at -O0 and at -O2 with -g and parks in pause() under main -> level1
-> level2 -> level3 -> level4. For every frame of the fixture's own functions, on the live process
and on its gcore core, gdb's value of each argument and local in scope at the frame's pc (read
through gdb's Python API, `symbol.value(frame)` for each symbol of the frame's blocks, which is
what `bt full` prints) is compared with mdbpy's: every value gdb knows must be mdbpy's, exactly,
and where gdb says <optimized out> mdbpy must say so too. gdb's is_optimized_out is true when any
part of a value is unknown; mdbpy shows no partial values, so both sides then say optimized out.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from support import SYS_PAUSE, compile_fixture, engine_session, gcore, run_in, start_fixture, \
    wait_syscalls
from types_oracle import GDB_DUMP, PrintParser, compare, run_gdb_script

from mdbpy.types.printer import PrintOptions, Printer
from mdbpy.types.space import space_of

FUNCS = ("level4", "level3", "level2", "level1", "main")

GDB_FRAMES = GDB_DUMP + r'''
want = set(os.environ["FRAMES_FUNCS"].split(","))
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
                (args if sym.is_argument else locs)[sym.name] = \
                    "optimized out" if v.is_optimized_out else dump(v)
            if block.function is not None:
                break
            block = block.superblock
        frames.append({"func": fn.name, "pc": f.pc(), "args": args, "locals": locs})
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


def _gdb_frames(where, exe, r, core, tmp_path) -> list[dict]:
    args = ["-p", str(r.pid)] if where == "live" else [str(exe), str(core)]
    return run_gdb_script(args, GDB_FRAMES, tmp_path, "c", FRAMES_FUNCS=",".join(FUNCS))


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
    level, exe, r, core = parked
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


ARGS = re.compile(r"^([0-9a-f]{16}) (\w+)\+0x[0-9a-f]+\((.*)\)$")


@pytest.mark.parametrize("where", ["live", "core"])
def test_dollar_C_arguments_equal_gdb(where, parked, tmp_path):
    """$C (and ::stack -v) print each argument as `name=value`: scalars equal gdb's, structs
    `...`, and `<optimized out>` exactly where gdb says so."""
    level, exe, r, core = parked
    gdb = {g["func"]: g["args"] for g in _gdb_frames(where, exe, r, core, tmp_path)}
    with _session(where, exe, r, core) as s:
        text = run_in(s, "$C")
        assert run_in(s, "::stack -v") == text
        parser = PrintParser(_address_of(s))
        checked = 0
        for line in text.splitlines():
            m = ARGS.match(line)
            if m is None or m.group(2) not in gdb:
                continue
            want = gdb[m.group(2)]
            got = dict(a.split("=", 1) for a in re.split(r", (?=\w+=)", m.group(3))
                       if a) if m.group(3) else {}
            assert list(got) == list(want), line  # every argument, in order
            for name, value in got.items():
                checked += 1
                if want[name] == "optimized out":
                    assert value == "<optimized out>", line
                elif isinstance(want[name], dict) and not ({"$int", "$ptr"} & set(want[name])):
                    assert value == "...", line
                else:
                    assert not compare(parser.scalar(value), want[name], name), line
        assert checked == 10
        # $c keeps mdb's empty parentheses; cnt limits the arguments $C shows
        assert re.search(r"^level2\+0x[0-9a-f]+\(\)$", run_in(s, "$c"), re.M)
        limited = run_in(s, "$C 1")
        assert re.search(r" level2\+0x[0-9a-f]+\(count=0x4\)$", limited, re.M), limited


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
