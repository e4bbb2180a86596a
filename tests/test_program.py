"""The Program (mdbpy/program.py) alone: what is known of a target, without a Session or its
interaction state. The heap engines, the allocator modules and the typed reads work on it, and
give what they give through a Session; warnings reach the process's stderr."""

from __future__ import annotations

import pytest
from test_ptmalloc_heap import gh_exe, leaks  # noqa: F401  (a planted glibc heap)

from mdbpy.heap.leaks import find_leaks
from mdbpy.program import Program
from mdbpy.target.core import open_file_target

INTERACTION = ("dot", "incr", "radix", "vars", "options", "engine", "evaluate", "thread",
               "prompt", "macro_path", "var_tags")


def planted(r) -> set[int]:
    """The leaks glibc_heap's leaks mode plants (test_ptmalloc_heap's exact set)."""
    return {r.addr("leak_string"), r.addr("leak_cycle_a"), r.addr("leak_cycle_b"),
            r.addr("leak_widget"), r.addr("thread_leak"), r.addr("leak_mmapped") + 16} | {
        r.addr("leak_list") - 0x30 * k for k in range(3)}


def test_a_program_finds_the_leaks_with_no_session(leaks, capsys):  # noqa: F811
    r, _stats, core, exe = leaks
    p = Program(open_file_target(str(core), exe=str(exe)))
    try:
        assert not any(hasattr(p, a) for a in INTERACTION)
        assert [a.name for a in p.allocators()] == ["ptmalloc"]
        assert sorted(p.registry.dmods) == ["ptmalloc"]  # autoloaded; no `mdb` module
        assert {leak.addr for leak in find_leaks(p).leaks} == planted(r)
        assert p.format_addr(p.symbols.lookup("main").addr) == "main"
    finally:
        p.close()


def test_a_session_reads_its_programs_state_through(leaks):  # noqa: F811
    """session.mem, .cache, .symbols, .registry are the Program's own objects (one cache, one
    symbol table), and the allocators a command sees are the Program's."""
    import io

    from mdbpy.session import Session

    _r, _stats, core, exe = leaks
    s = Session(open_file_target(str(core), exe=str(exe)), out=io.StringIO(), err=io.StringIO())
    try:
        p = s.program
        for name in ("target", "mem", "cache", "symbols", "registry", "settings"):
            assert getattr(s, name) is getattr(p, name), name
        assert s.allocators() is p.allocators()
        p.warn("from the program")
        assert s.err.getvalue() == "mdbpy: from the program\n"  # the session's stream
    finally:
        s.close()


def test_a_programs_warnings_go_to_stderr(capsys):
    from mdbpy.target.synthetic import SyntheticTarget

    p = Program(SyntheticTarget([(0x1000, bytes(16), "rw-p", "")]))
    p.warn("hello")
    assert capsys.readouterr().err == "mdbpy: hello\n"
    with pytest.raises(Exception):
        p.load_dmod("nonesuch")
