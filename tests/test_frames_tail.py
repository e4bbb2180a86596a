"""Tail-call frames and entry values (issue 22): gdb's `bt full` is the oracle.

fixtures/frames_tail.c, built with -O2 -g, parks in pause() under main -> top -jmp-> middle
-jmp-> bottom -> fork_ -jmp-> via_a -jmp-> join -jmp-> park (fork_ may also jump to via_b,
which jumps to join too). gdb rebuilds top and middle as tail-call frames (the chain from
main's call of top to bottom is unambiguous) and join alone between bottom and park (the
paths through via_a and via_b share only join's jump), and shows the arguments whose entry
values the call sites give as `x=x@entry=v` or `x=v, x@entry=w`. For every frame, live and
on a gcore core, mdbpy's frames (names, pcs, which are tail-call frames), each argument's and
local's value and each entry value are gdb's; the values are also the program's own.
"""

from __future__ import annotations

import json
import re
import subprocess

import pytest
from support import engine_session, run_in
from test_frames import ARGS, _gdb_frames, _parsed, _session, args_equal_gdb, parked_o2
from types_oracle import compare

FUNCS = ("park", "join", "via_a", "via_b", "fork_", "bottom", "middle", "top", "main")
# innermost first: (function, a tail-call frame?, its arguments as $C shows them)
EXPECTED = [
    ("park", False, "n=<optimized out>, tag=tag@entry=0x4d"),
    ("join", True, "n=<optimized out>"),
    ("bottom", False, "x=x@entry=0xa, y=y@entry=0x32, z=0x23, z@entry=0x22"),
    ("middle", True, "a=a@entry=0x9, b=b@entry=0x19"),
    ("top", True, "a=a@entry=0xa, b=b@entry=0x14"),
    ("main", False, ""),
]


@pytest.fixture(scope="module")
def tail_parked(build_dir):
    """(exe, running process, its gcore core), parked in pause() inside park."""
    yield from parked_o2(build_dir, "frames_tail")


def test_fixture_premise(tail_parked):
    """gcc made the sibling calls jumps, and the DWARF marks them as tail calls and has the
    entry values the tests are about."""
    exe, _, _ = tail_parked
    text = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(exe)],
                          capture_output=True, text=True, check=True).stdout
    jumps = {}
    for m in re.finditer(r"^[0-9a-f]+ <(\w+)>:\n(.*?)\n\n", text, re.M | re.S):
        jumps[m.group(1)] = sorted(set(re.findall(r"\bjmp\s+[0-9a-f]+ <(\w+)>", m.group(2))))
    assert {f: jumps[f] for f in ("top", "middle", "fork_", "via_a", "via_b", "join")} == {
        "top": ["middle"], "middle": ["bottom"], "fork_": ["via_a", "via_b"],
        "via_a": ["join"], "via_b": ["join"], "join": ["park"]}
    assert not [f for f in ("main", "bottom", "park") if set(jumps[f]) & set(FUNCS)]
    info = subprocess.run(["readelf", "--debug-dump=info", str(exe)], capture_output=True,
                          text=True, check=True).stdout
    for what in ("DW_AT_call_tail_call", "DW_AT_call_all_calls", "DW_OP_entry_value",
                 "DW_AT_call_value"):
        assert what in info, what


def _shown(s) -> list[tuple]:
    """(function, pc, tail-call frame?, FrameVars with entry values) of the fixture's frames
    as $C lists them, innermost first."""
    from mdbpy.types.frames import frame_variables, shown_frames
    from mdbpy.unwind import unwind

    frames = unwind(s, s.current_thread())
    out = []
    for sh in shown_frames(s, frames):
        f = sh.frame(frames)
        name = s.format_addr(f.pc, f.ret).split("+")[0]
        if name in FUNCS:
            out.append((name, f.pc, sh.tail,
                        frame_variables(s, frames, sh.index, scope=sh.scope, entry=True)))
    return out


@pytest.mark.parametrize("where", ["live", "core"])
def test_tail_call_frames_and_entry_values_equal_gdb(where, tail_parked, tmp_path):
    """The frames are gdb's (the same functions at the same pcs, the same ones tail-call
    frames), every argument and local gdb's bt full shows is mdbpy's, exactly, and so is
    every entry value (`x@entry`); $C shows them in gdb's shapes, marks the tail-call frames
    `[tail call]` and gives them the frame pointer of the frame that was jumped to."""
    exe, r, core = tail_parked
    gdb = _gdb_frames(where, exe, r, core, tmp_path, FUNCS)
    assert [(g["func"], g["tail"]) for g in gdb] == [(f, t) for f, t, _ in EXPECTED]
    with _session(where, exe, r, core) as s:
        ours = _shown(s)
        assert [(f, pc, tail) for f, pc, tail, _ in ours] == \
            [(g["func"], g["pc"], g["tail"]) for g in gdb]
        checked = 0
        for (func, _, _, found), g in zip(ours, gdb):
            mine = {(v.arg, v.name): v for v in found}
            theirs = {**{(True, k): v for k, v in g["args"].items()},
                      **{(False, k): v for k, v in g["locals"].items()}}
            assert set(mine) == set(theirs), func
            for key, want in theirs.items():
                got = _parsed(s, mine[key])
                if want == "optimized out":
                    assert got == "<optimized out>", (func, key)
                else:
                    assert not compare(got, want, key[1]), (func, key, got, want)
                checked += 1
            for v in found:
                if v.arg and v.entry is not None:  # gdb's x@entry, where it has one
                    want = g["entry"][v.name]
                    assert want not in (None, "optimized out"), (func, v.name)
                    assert not compare(_parsed(s, _as_var(v)), want, v.name), (func, v.name)
                    checked += 1
        assert checked == 21  # 13 arguments and locals, 8 entry values
        text = run_in(s, "$C")
        assert run_in(s, "::stack -v") == text
        lines = [line for line in text.splitlines()
                 if (m := ARGS.match(line)) and m.group(2) in FUNCS]
        assert [(ARGS.match(line).group(2), "[tail call]" in line, ARGS.match(line).group(3))
                for line in lines] == EXPECTED
        for line, g in zip(lines, gdb):
            args_equal_gdb(s, ARGS.match(line).group(3), g)
        fps = [line.split()[0] for line in lines]
        assert fps[1] == fps[0] and fps[3] == fps[4] == fps[2]  # the callee's frame pointer


def _as_var(v):
    """A FrameVar whose value is v's entry value (to parse it as ::print shows it)."""
    from mdbpy.types.frames import FrameVar

    return FrameVar(v.name, v.type, True, v.entry)


def test_tail_call_frames_in_stacks_and_locals(tail_parked, tmp_path):
    """$c, ::stacks (text and JSON, with gdb's lines) list the tail-call frames as $C does;
    a piped $c passes on only the pcs the unwinder found (a tail-call frame's return address
    is not on the stack); ::frame selects a tail-call frame and ::locals prints its
    arguments."""
    from mdbpy.unwind import unwind

    exe, r, core = tail_parked
    gdb = _gdb_frames("core", exe, r, core, tmp_path, FUNCS)
    with engine_session(core=core, exe=exe) as s:
        names = run_in(s, "$c").splitlines()
        assert [n for n in names if n.startswith("[tail call] ")] == [
            re.sub(r"\(.*\)$", "()", line.split(" ", 1)[1])
            for line in run_in(s, "$C").splitlines() if "[tail call]" in line]
        assert len([n for n in names if n.startswith("[tail call] ")]) == 3
        tid = s.current_thread().tid
        assert run_in(s, "::stacks").splitlines() == [f"THREAD {tid}", *names, ""]
        s.options["json"] = True
        (thread,) = json.loads(run_in(s, "::stacks -l"))["threads"]
        s.options["json"] = False
        listed = [(f["name"].removeprefix("[tail call] ").split("+")[0], f["pc"],
                   f["name"].startswith("[tail call] "), f["line"]) for f in thread["frames"]]
        assert [x for x in listed if x[0] in FUNCS] == \
            [(g["func"], g["pc"], g["tail"], g["line"]) for g in gdb]
        pcs = [f"{f.pc:x}" for f in unwind(s, s.current_thread())]
        assert run_in(s, "$c | ::eval .=K").split() == pcs
        n = next(i for i, name in enumerate(names) if name.startswith("[tail call] middle+"))
        line = run_in(s, f"::frame 0t{n}")
        assert re.fullmatch(r"[0-9a-f]{16} \[tail call\] middle\+0x[0-9a-f]+"
                            r"\(a=a@entry=0x9, b=b@entry=0x19\)\n", line), line
        assert run_in(s, "::locals").splitlines() == ["long int a = 0x9", "long int b = 0x19"]


# -- the evaluator on its own: the entry value shapes it asks the frame about -------------------

class _EntryCtx:
    """A frame context whose caller passed 0x100 + n in register n, which pointed at 0x200 + n
    (deref_size bytes of it), and 0x300 + offset for the parameter DIE at unit offset offset."""

    bias = 0

    def entry_value(self, n, deref_size=None):
        return 0x100 + n if deref_size is None else 0x200 + n + 0x1000 * deref_size

    def parameter_ref(self, offset):
        return 0x300 + offset


def _value(expr: bytes) -> object:
    from elftools.dwarf.dwarf_expr import DWARFExprParser
    from elftools.dwarf.structs import DWARFStructs

    from mdbpy.types.locations import Unavailable, evaluate, place

    ops = DWARFExprParser(DWARFStructs(True, 32, 8)).parse_expr(expr)
    try:
        return int.from_bytes(place(evaluate(ops, _EntryCtx()), 8, _EntryCtx())[1], "little")
    except Unavailable as e:
        return f"<{e}>"


def test_entry_value_shapes():
    """DW_OP_entry_value of a register (DW_OP_regN, DW_OP_regx), of what a register pointed
    at (DW_OP_bregN 0 / DW_OP_bregx n 0, then DW_OP_deref or DW_OP_deref_size), both GNU
    spellings, and DW_OP_GNU_parameter_ref; any other shape is optimized out, as gdb has it."""
    stack_value = 0x9F
    assert _value(bytes([0xA3, 1, 0x55, stack_value])) == 0x105  # entry_value(reg5)
    assert _value(bytes([0xF3, 2, 0x90, 0x11, stack_value])) == 0x111  # GNU, regx 17
    assert _value(bytes([0xA3, 3, 0x73, 0, 0x06, stack_value])) == 0x8203  # breg3 0; deref
    assert _value(bytes([0xA3, 5, 0x92, 4, 0, 0x94, 4, stack_value])) == 0x4204  # bregx; size
    assert _value(bytes([0xFA, 0x2A, 0, 0, 0, stack_value])) == 0x32A  # GNU_parameter_ref
    assert _value(bytes([0xA3, 3, 0x73, 8, 0x06, stack_value])) == "<optimized out>"
    assert _value(bytes([0xA3, 2, 0x55, 0x55, stack_value])) == "<optimized out>"
    assert _value(bytes([0xA3, 1, 0x30, stack_value])) == "<optimized out>"  # lit0


# -- the chain search on its own: synthetic call-site graphs ---------------------------------

class _Site:
    """A tail-call site: its return address (pc) and the entry of the function it jumps to."""

    def __init__(self, pc: int, target: int):
        self.pc, self.target = pc, target


class _Graph:
    """What _Stack._chain asks of the DWARF, from {function entry: its tail-call sites}."""

    session = None  # _call_site, which alone asks it, is replaced

    def __init__(self, functions: dict[int, list[_Site]]):
        self.functions = functions

    def targets(self, fn, site, ctx):
        return [site.target]

    def _tail_sites(self, addr):
        return addr, self.functions.get(addr, [])


T = 0x900  # the callee every chain below looks for
# main's call site (0x10) calls A; A jumps (a1) to B; B jumps to itself (b1), else to T (b2).
SELF = (0x100, {0x100: [_Site(0x101, 0x200)], 0x200: [_Site(0x201, 0x200), _Site(0x202, T)]})
# main's call site calls F; F jumps to G (f1), to itself (f2), to T (f3); G jumps to D (g1),
# which jumps nowhere.
LOOP = (0x300, {0x300: [_Site(0x301, 0x400), _Site(0x302, 0x300), _Site(0x303, T)],
                0x400: [_Site(0x401, 0x500)]})


def _chain(graph, monkeypatch, steps: int = 4096):
    """_Stack._chain from main's call site (return address 0x10) to T over graph, its walk
    cut after steps call sites."""
    from mdbpy.types import frames

    start, functions = graph
    monkeypatch.setattr(frames, "_site_pc", lambda fn, site: site.pc)
    monkeypatch.setattr(frames, "_call_site", lambda session, caller: (None, _Site(0x10, start)))
    monkeypatch.setattr(frames, "MAX_CHAIN_STEPS", steps)
    return frames._Stack._chain(_Graph(functions), None, T)


def test_chain_search_backtracks_as_gdb(monkeypatch):
    """gdb's call_site_find_chain_1 enters only the first tail-call site of a function called
    and, when that one (or, backtracking, a sibling) is already on the path, leaves the whole
    function: it drops the deepest site of the path and tries that site's next sibling.
    SELF: a1, then b1 (B's first), then B again: b1 is on the path, so b1 is dropped and its
    sibling b2 taken, reaching T by [a1, b2] alone: ([0x101, 0x202], 2, 2), where going on to
    b1's sibling from inside b1 would also have found [a1, b1, b2] and kept only the ends.
    LOOP: f1, g1, D (no sites): back to f2; F again: f1, g1, D: back from f1, whose sibling f2
    is on the path, so f2 is dropped too and f3 taken: the one chain [f3]: ([0x303], 1, 1),
    where taking f3 right after f2 would also have found [f2, f3]."""
    assert _chain(SELF, monkeypatch) == [[0x101, 0x202], 2, 2]
    assert _chain(LOOP, monkeypatch) == [[0x303], 1, 1]


def test_chain_search_ending_on_its_last_step(monkeypatch):
    """SELF's walk takes 4 call sites (main's, a1, b1, b2) and ends on the 4th: with 4 allowed
    its chain is found; with 3 the walk is cut and nothing is."""
    assert _chain(SELF, monkeypatch, steps=4) == [[0x101, 0x202], 2, 2]
    assert _chain(SELF, monkeypatch, steps=3) is None
