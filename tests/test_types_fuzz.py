"""The type dcmds never fail with an internal error: random arguments (type names, member paths
with stray punctuation, options, numbers) at random addresses, on fixtures/types.c, end in
output or in a one-line `mdbpy:` message."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import compile_fixture
from types_oracle import Commands

from mdbpy.target.core import open_file_target

ADDRS = ["", "g_all", "g_nodes", "g_list", "g_flex", "g_text", "g_perm", "0", "0x10", "main",
         "g_all+1", "0xffffffffffffffff", "g_row"]
DCMDS = ["print", "print", "sizeof", "offsetof", "array", "list", "enum"]
WORDS = st.one_of(
    st.sampled_from(["struct", "union", "enum", "node", "everything", "bits", "color", "perm",
                     "int", "unsigned", "long", "char *", "struct node *", "int[3]", "a.out`int",
                     "-a", "-t", "-T", "-d", "-x", "-h", "-i", "-n", "-L", "-C", "-l", "-c",
                     "-s", "-p", "-e", "-o", "2", "0", "0t40", "next", "value", "tag",
                     "ptr->next", "nodes[1].tag", "matrix[9][9]", "bits.d", "anon.y", "a..b",
                     "x->", "[", "]", "[0]", "->", ".", "_vptr.x", "handler", "flexp->items[2]",
                     "num.bytes[3]", "ptr[0]", "vp[2]", "str[1]", "RED", "P_SYNC"]),
    st.text(alphabet="abcxyz_.->[]0123456789*` ", max_size=8).map(lambda s: f'"{s}"'),
    st.integers(0, 1 << 64).map(lambda n: f"$[{n:#x}]"),
)
LINE = st.tuples(st.sampled_from(ADDRS), st.sampled_from(DCMDS),
                 st.lists(WORDS, max_size=4)).map(
    lambda t: f"{t[0]}::{t[1]} {' '.join(t[2])}".strip())


@pytest.fixture(scope="module")
def commands(build_dir):
    exe: Path = compile_fixture("types", build_dir)
    c = Commands(open_file_target(str(exe)))
    yield c
    c.close()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(line=LINE)
def test_type_dcmds_fail_on_one_line(commands, line):
    out, err = commands(line)
    assert "internal error" not in err, (line, err)
    assert all(m.startswith(("mdbpy: ", "Usage: ")) for m in err.splitlines()), (line, err)
