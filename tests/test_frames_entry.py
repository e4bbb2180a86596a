"""Entry values gdb shows as an error (issue 22): gdb's bt is the oracle.

fixtures/frames_entry_error.c, built with -O2 -g, parks under main -> outer -> work ->
park_clobbered (assembly whose CFI says it overwrote rbp) -> park. outer's call site gives
work's x on entry as rbp (DW_OP_breg6 0), which no frame above park_clobbered can recover:
gdb's evaluator raises an error for the register there, and its bt shows
`x=70, x@entry=<error reading variable: value has been optimized out>`, while y's entry value
(through outer's own) is known. mdbpy shows the entry value where gdb does, in its own words
(`x@entry=<optimized out>`), in $C, ::stack -v and ::frame, live and on a gcore core.
"""

from __future__ import annotations

import re
import subprocess

import pytest
from support import run_in
from test_frames import ARGS, _gdb_frames, _session, args_equal_gdb, parked_o2

FUNCS = ("work", "outer")
WORK = "x=0x46, x@entry=<optimized out>, y=y@entry=0x2a"
GDB_WORK = "x=70, x@entry=<error reading variable: value has been optimized out>, y=y@entry=42"


@pytest.fixture(scope="module")
def parked(build_dir):
    """(exe, running process, its gcore core), parked in pause() under park."""
    yield from parked_o2(build_dir, "frames_entry_error")


def test_fixture_premise(parked):
    """outer's call site says x is rbp on entry (and keeps b there), and park_clobbered's CFI
    says rbp is not recoverable above it."""
    exe, _, _ = parked
    info = subprocess.run(["readelf", "--debug-dump=info", str(exe)], capture_output=True,
                          text=True, check=True).stdout
    assert re.search(r"DW_AT_location\s*: 1 byte block: 55 \t\(DW_OP_reg5 \(rdi\)\)\n"
                     r"\s*<\w+>\s*DW_AT_call_value\s*: 2 byte block: 76 0 \t"
                     r"\(DW_OP_breg6 \(rbp\): 0\)", info)
    frames = subprocess.run(["readelf", "--debug-dump=frames", str(exe)], capture_output=True,
                            text=True, check=True).stdout
    assert "DW_CFA_undefined: r6 (rbp)" in frames


@pytest.mark.parametrize("where", ["live", "core"])
def test_entry_value_error_where_gdb_shows_one(where, parked, tmp_path):
    """gdb's bt shows x's entry value as an error and y's as known; $C shows both where gdb
    does (x's as `<optimized out>`), its values gdb's, and ::stack -v and ::frame the same
    line."""
    exe, r, core = parked
    gdb = {g["func"]: g for g in _gdb_frames(where, exe, r, core, tmp_path, FUNCS)}
    assert (gdb["work"]["bt"], gdb["outer"]["bt"]) == (GDB_WORK, "v=v@entry=14")
    with _session(where, exe, r, core) as s:
        text = run_in(s, "$C")
        assert run_in(s, "::stack -v") == text
        lines = {m.group(2): (n, m.group(3)) for n, line in enumerate(text.splitlines())
                 if (m := ARGS.match(line)) and m.group(2) in FUNCS}
        assert {f: a for f, (_, a) in lines.items()} == {"work": WORK, "outer": "v=v@entry=0xe"}
        assert sum(args_equal_gdb(s, lines[f][1], gdb[f]) for f in FUNCS) == 4
        n = lines["work"][0]
        assert run_in(s, f"::frame 0t{n}") == text.splitlines()[n] + "\n"
