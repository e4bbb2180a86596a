"""One batch, three targets: a live process, a gdb gcore of it, and a core written by mdbpy's
::gcore give the same output, and that output holds the process's real values."""

from __future__ import annotations

import re

import pytest

from support import BASIC_NODES, gcore, run_mdbpy, start_fixture

BATCH = """\
::mappings
::nm -g
main::nm
global_long/J
global_str/s
global_array,2/2J
0t10*4+1=D
'AB'=X
*list_head::walk list | ::eval ".+8/J"
*list_head::walk list node | ::eval "<node=K"
::walk thread
$< {macro}
"""

MACRO = """\
// a macro file: its commands run as if typed here
static_counter/D
global_bss+0t100/4B
"""

# gdb's gcore does not dump the kernel's [vvar] pages (no one can read them), so a gdb core
# lists every mapping of the process but those.
VVAR = re.compile(r"^.*\[ vvar(_vclock)? \]\n", re.M)


@pytest.fixture(scope="module")
def outputs(basic_exe, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("agree")
    macro = tmp / "extra.mdb"
    macro.write_text(MACRO)
    batch = BATCH.format(macro=macro)
    proc = start_fixture(basic_exe)
    try:
        live = run_mdbpy("-S", "-p", proc.pid, input=batch)
        gdb_core = gcore(proc.pid, tmp / "gdb")
        r = run_mdbpy("-S", "-p", proc.pid, "-e", f"::gcore -o {tmp / 'mdbpy'}")
        assert r.returncode == 0 and r.stdout == f"{tmp / 'mdbpy'}.{proc.pid} dumped\n", r.stderr
        info = proc.info
    finally:
        proc.stop()
    from_gdb = run_mdbpy("-S", basic_exe, gdb_core, input=batch)
    from_mdbpy = run_mdbpy("-S", tmp / f"mdbpy.{proc.pid}", input=batch)
    for r in (live, from_gdb, from_mdbpy):
        assert r.returncode == 0 and r.stderr == "", r.stderr
    return info, live.stdout, from_gdb.stdout, from_mdbpy.stdout


def test_live_and_cores_agree(outputs):
    _, live, from_gdb, from_mdbpy = outputs
    assert from_mdbpy == live
    assert from_gdb == VVAR.sub("", live)
    assert VVAR.search(live), "the live process has [vvar] pages"


def test_output_holds_the_processs_values(outputs):
    info, live, _, _ = outputs
    head = int(info["list_head"], 16)
    lines = live.splitlines()
    assert "global_long:    1122334455667788 " in lines
    assert "global_str:     hello, mdbpy" in lines
    assert "                41              " in lines  # 0t10*4+1=D
    assert "                4142            " in lines  # 'AB'=X
    # the list, walked and piped: each node's value word, then the walk variable
    nodes = [head - 0x30 * k for k in range(len(BASIC_NODES))]
    values = [f"0x{n + 8:x}:" for n in nodes]
    got = [line.split()[0] for line in lines if line.split()[0] in values]
    assert got == values
    assert [line.split()[1] for line in lines if line.split()[0] in values] == \
        [f"{value:x}" for value, _tag in BASIC_NODES]
    assert [f"{n:x}" for n in nodes] == [
        line.strip() for line in lines if re.fullmatch(r"[0-9a-f]{12}", line.strip())]
    assert any(line.startswith("static_counter: ") and line.split()[1] == "7" for line in lines)
    assert "global_bss+0x64:ab      ab      ab      ab      " in lines
    # threads walk: the main thread's id first
    tids = [line for line in lines if re.fullmatch(r"0t?x?[0-9a-f]+", line)]
    assert tids and int(tids[0], 16) == int(info["pid"])
