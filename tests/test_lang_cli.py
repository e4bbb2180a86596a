"""The language through the real CLI on a live `basic` fixture: expressions over its symbols and
memory, a walker from an external dmod piped through ::map/::grep/::head, batch stdin with
error recovery, macro files on -I, shell pipes, and exit statuses."""

import textwrap
from pathlib import Path

import pytest
from support import run_mdbpy

MACROS = Path(__file__).resolve().parent / "macros"

NODES_DMOD = '''
"""Walks the `basic` fixture's linked list of struct node {next, value, tag}."""
from mdbpy.dcmd import walker


@walker("nodes", "walk basic's node list")
def nodes(session, addr):
    if addr is None:
        addr = session.mem.read_ptr(session.symbols.lookup("list_head").addr)
    for _ in range(1000):
        if not addr:
            return
        yield addr
        addr = session.mem.read_ptr(addr)
'''


@pytest.fixture
def nodes_dmod(tmp_path) -> Path:
    path = tmp_path / "nodes.py"
    path.write_text(textwrap.dedent(NODES_DMOD))
    return path


def test_pipelines_on_a_live_process(basic_proc, nodes_dmod):
    head = basic_proc.addr("list_head")
    r = run_mdbpy("-p", basic_proc.pid, "-e",
                  f"::load {nodes_dmod}; ::walk nodes n | ::map *(.+8); "
                  "::walk nodes | ::grep '*(.+8)==1003' ! wc -l; "
                  "*list_head::walk nodes | ::head -2; "
                  "::walk nodes n | ::eval '::echo $[<n] $[*/c/(<n+10)]'")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[:5] == ["1000", "1001", "1002", "1003", "1004"]
    assert lines[5].strip() == "1"
    assert lines[6] == f"{head:x}"
    assert lines[8] == f"{head:x} {ord('n'):x} "
    assert len(lines) == 13
    assert r.stderr == ""
    basic_proc.assert_untouched()


def test_expressions_over_symbols_and_memory(basic_proc):
    head = basic_proc.addr("list_head")
    r = run_mdbpy("-p", basic_proc.pid, "-e",
                  "::echo $[*/i/global_int] $[*global_long] $[*list_head] $[*/c/global_str]; "
                  "global_str>s; 0t10$d; ::echo $[*/i/global_int] $[<s==global_str]; "
                  "::echo $[%/i/global_int] $[<rip!=0] $[<rsp==<rsp]")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == f"1234 1122334455667788 {head:x} 68 "
    assert r.stdout.splitlines()[1:] == ["radix = 10 base ten", "4660 1 ", "4660 1 1 "]
    basic_proc.assert_untouched()


def test_batch_stdin_recovers_and_reports_last_status(basic_proc):
    r = run_mdbpy("-p", basic_proc.pid,
                  input="::echo $[*/i/global_int]\n::echo $[(\n::echo ok\n::nosuch\n")
    assert r.stdout == "1234 \nok \n"
    assert r.stderr.splitlines() == ['mdbpy: syntax error at end of command',
                                     "mdbpy: invalid command '::nosuch'"]
    assert r.returncode == 1
    basic_proc.assert_untouched()


def test_macros_shell_and_quit(basic_proc):
    r = run_mdbpy("-p", basic_proc.pid, "-I", str(MACROS), "-e",
                  "$<< simple.mdb; ::echo $[<m]; !echo from shell; $q; ::echo never")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "in macro \n1234 \nfrom shell\n"
    r = run_mdbpy("-p", basic_proc.pid, "-e", "::walk nosuch")
    assert r.returncode == 1
    assert r.stderr == "mdbpy: failed to perform walk: walker 'nosuch' not found " \
                       "(see ::walkers)\n"
    basic_proc.assert_untouched()
