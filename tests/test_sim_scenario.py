"""The scenario language: every statement kind parses to its Stmt; every mistake is a one-line
ScenarioError naming its line; run-time mistakes (unknown names, bad returns) too."""

from __future__ import annotations

import pytest

from mdbpy.errors import MdbError
from mdbpy.sim.build import build
from mdbpy.sim.scenario import Ref, ScenarioError, Stmt, parse

GOOD = [
    ("program demo", ("program", ("demo",))),
    ("pid 100", ("pid", (100,))),
    ("cpus 4", ("cpus", (4,))),
    ("seed 0", ("seed", (0,))),
    ("cache dentry 192", ("cache", ("dentry", 192))),
    ("cache kmalloc-cg-64 64", ("cache", ("kmalloc-cg-64", 64))),
    ("global head", ("global", ("head", 8))),
    ("global table 0x40", ("global", ("table", 64))),
    ("thread worker", ("thread", ("worker", None))),
    ("thread worker cpu 3", ("thread", ("worker", 3))),
    ("call parse_config", ("call", ("parse_config",))),
    ("ret", ("ret", ())),
    ("p = kmalloc 64", ("alloc", ("p", "kmalloc", 64))),
    ("p = kzalloc 8", ("alloc", ("p", "kzalloc", 8))),
    ("p = alloc dentry", ("alloc", ("p", "cache", "dentry"))),
    ("p = alloc kmalloc-96", ("alloc", ("p", "cache", "kmalloc-96"))),
    ("free p", ("free", ("p",))),
    ("store head = p", ("store", (Ref("head"), Ref("p")))),
    ("store p+8 = q-16", ("store", (Ref("p", 8), Ref("q", -16)))),
    ("store local x = p", ("store", (Ref("x", 0, True), Ref("p")))),
    ("store head = &table+8", ("store", (Ref("head"), Ref("table", 8, address=True)))),
    ("store head = null", ("store", (Ref("head"), 0))),
    ("store head = 0x1234", ("store", (Ref("head"), 0x1234))),
    ('write p "hi\\x00"', ("write", (Ref("p"), b"hi\0"))),
    ('write p+0x10 "a b # c"', ("write", (Ref("p", 16), b"a b # c"))),
    ("write p-1 u8 0x41", ("write", (Ref("p", -1), b"A"))),
    ("write p u16 0x4142", ("write", (Ref("p"), b"BA"))),
    ("write p u32 1", ("write", (Ref("p"), b"\1\0\0\0"))),
    ("write local x u64 2", ("write", (Ref("x", 0, True), (2).to_bytes(8, "little")))),
    ("memset p 0x41 70", ("memset", (Ref("p"), 0x41, 70))),
    ("  free p   # a comment", ("free", ("p",))),
]


@pytest.mark.parametrize("text,want", GOOD, ids=[g[0] for g in GOOD])
def test_statement(text, want):
    assert parse("# header\n\n" + text) == [Stmt(3, *want)]


BAD = [
    ("frobnicate", "unknown statement 'frobnicate'"),
    ("pid x", "pid: expected a number, got 'x'"),
    ("cpus 0", "cpus 0 is out of range [1, 1024]"),
    ("cache c", "usage: cache NAME SIZE"),
    ("cache c 9000", "object size 9000 is out of range [1, 8192]"),
    ("global 1x", "bad global name '1x'"),
    ("thread w core 1", "usage: thread NAME [cpu N]"),
    ("call", "usage: call FUNC"),
    ("ret now", "usage: ret"),
    ("p = malloc 8", "unknown allocator 'malloc' (kmalloc, kzalloc or alloc)"),
    ("p = kmalloc 0", "allocation size 0 is out of range [1, 8192]"),
    ("p = kmalloc", "usage: p = kmalloc SIZE | kzalloc SIZE | alloc CACHE"),
    ("store head p", "usage: store DEST = SRC"),
    ("store h*2 = p", "bad reference 'h*2' (expected NAME, NAME+OFF or NAME-OFF)"),
    ("store local = p", "bad slot name '='"),
    ('write p "abc', "unterminated string"),
    ('write p "\\q"', 'bad string "\\q" (bytes only: use \\x escapes)'),
    ('write p "\u00e9"', 'bad string "\u00e9" (bytes only: use \\x escapes)'),
    ("write p u8 256", "u8 256 is out of range [0, 255]"),
    ("write p 12", 'usage: write DEST "text" | write DEST u8|u16|u32|u64 N'),
    ("memset p 0x41", "usage: memset DEST BYTE COUNT"),
    ("memset p 300 1", "byte 300 is out of range [0, 255]"),
]


@pytest.mark.parametrize("text,msg", BAD, ids=[b[0] for b in BAD])
def test_parse_error(text, msg):
    with pytest.raises(ScenarioError) as e:
        parse("call main\n" + text)
    assert str(e.value) == f"scenario line 2: {msg}"
    assert e.value.line == 2 and isinstance(e.value, MdbError)


RUN_BAD = [
    ("call main\nret\nret", 3, "ret: thread main has no function to return from"),
    ("call main\npid 3", 2, "`pid` must come before the first other statement"),
    ("seed 1\nseed 2", 2, "`seed` given twice"),
    ("global g\nglobal g", 2, "global g already exists"),
    ("cache c 8\ncache c 16", 2, "cache c already exists"),
    ("cache kmalloc-8 8", 1, "cache kmalloc-8 already exists"),
    ("call kmalloc", 1, "kmalloc is a built-in function"),
    ("thread w cpu 1\nthread w cpu 2", 2, "thread w already runs on cpu 1"),
    ("call main\nfree p", 2, "no object named p"),
    ("call main\np = alloc nosuch", 2, "no cache named nosuch"),
    ("global g\ncall main\ng = kmalloc 8", 3, "g is a global"),
    ("call main\nstore nothing = null", 2, "no object named nothing"),
    ("global g\nstore g = &h", 2, "no global named h"),
    ("global g\nstore g+0x1000 = null", 2,
     "write of 8 bytes at 0x403050 is outside the program's writable memory"),
    ("global g\nstore g-16 = null", 2, "write at 0x402040 would overwrite sim_allocator"),
]


@pytest.mark.parametrize("text,line,msg", RUN_BAD, ids=[r[2] for r in RUN_BAD])
def test_run_error(text, line, msg):
    with pytest.raises(ScenarioError) as e:
        build(text)
    assert str(e.value) == f"scenario line {line}: {msg}"


def test_function_and_global_clash():
    with pytest.raises(ScenarioError, match="main is both a function and a global"):
        build("global main\ncall main")
