"""The Python API (mdbpy/api.py): the examples of docs/api.md run as doctests against the demo
program and a live glibc_heap fixture; a live process is resumed on every way out (with block,
exception, close, garbage collection, interpreter exit); `import mdbpy` stays cheap."""

from __future__ import annotations

import doctest
import gc
import re
import subprocess
import sys
from pathlib import Path

import pytest
from support import compile_fixture, start_fixture

import mdbpy

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"
FENCE = re.compile(r"^```pycon\n(.*?)^```$", re.S | re.M)


@pytest.fixture(scope="module")
def glibc_heap(build_dir):
    exe = compile_fixture("glibc_heap", build_dir, flags=("-g", "-O0", "-Wno-use-after-free"))
    r = start_fixture(exe, "leaks")
    try:
        yield r
    finally:
        r.stop()


def run_doc_blocks(globs: dict) -> None:
    """Every pycon block of docs/api.md, in order, in one namespace; fails with doctest's
    report of each example whose output differs."""
    text = DOC.read_text()
    parser, report = doctest.DocTestParser(), []
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for m in FENCE.finditer(text):
        lineno = text.count("\n", 0, m.start(1))
        test = parser.get_doctest(m.group(1), globs, "docs/api.md", str(DOC), lineno)
        runner.run(test, out=report.append, clear_globs=False)
        globs.update(test.globs)  # DocTest copies its globs: carry names to the next block
    assert runner.failures == 0, "".join(report)
    assert runner.tries >= 30


def test_docs_examples_run(glibc_heap):
    run_doc_blocks({"pid": glibc_heap.pid})
    glibc_heap.assert_untouched()


@pytest.fixture
def heap_proc(build_dir, glibc_heap):
    """A second, private glibc_heap process (the module's one is shared)."""
    exe = Path(build_dir) / "glibc_heap"
    r = start_fixture(exe, "leaks")
    try:
        yield r
    finally:
        r.stop()


def test_live_process_resumed_after_exception(heap_proc):
    with pytest.raises(ZeroDivisionError):
        with mdbpy.attach(heap_proc.pid) as dbg:
            assert heap_proc.proc_status()["TracerPid"] != "0"
            1 / 0
    assert dbg.closed
    heap_proc.assert_untouched()


def test_live_process_resumed_when_garbage_collected(heap_proc):
    dbg = mdbpy.attach(heap_proc.pid)
    assert dbg.stack()[0].name  # the process is stopped and readable
    del dbg
    gc.collect()
    heap_proc.assert_untouched()


def test_live_process_resumed_at_interpreter_exit(heap_proc):
    code = ("import mdbpy, sys; d = mdbpy.attach(int(sys.argv[1])); "
            "d.cycle = d; print(len(d.threads()))")
    p = subprocess.run([sys.executable, "-c", code, str(heap_proc.pid)], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "2"
    heap_proc.assert_untouched()


def test_attach_failure_is_one_line():
    with pytest.raises(mdbpy.MdbError, match=r"^process 999999999 not found$"):
        mdbpy.attach(999999999)
    with pytest.raises(mdbpy.MdbError, match="No such file"):
        mdbpy.open_core("/nonexistent/core")


def test_open_core_and_struct_views_of_nested_fields(glibc_heap, build_dir):
    """A gcore of the fixture through open_core: nested structs and arrays of malloc_state."""
    from support import gcore

    core = gcore(glibc_heap.pid, Path(build_dir) / "api-glibc")
    with mdbpy.open_core(str(core)) as dbg:
        assert "malloc_state" in dbg.layouts()["ptmalloc"]
        arena = dbg.struct("malloc_state", dbg.symbol("main_arena").addr)
        # the fixture's second thread has its own arena: the ring is main_arena -> it -> back
        other = dbg.struct("malloc_state", arena.next)
        assert other.addr != arena.addr and other.next == arena.addr
        assert len(arena.fastbinsY) == 10 and len(arena.bins) == 254
        assert dbg.struct("ptmalloc`malloc_state", arena.addr).top == arena.top
        with pytest.raises(mdbpy.MdbError, match="no layout named nosuch"):
            dbg.struct("nosuch", 0)


def test_import_is_cheap():
    p = subprocess.run([sys.executable, "-c", "import mdbpy, sys; print(sorted(m for m in "
                        "sys.modules if m.startswith(('mdbpy', 'numpy', 'elftools'))))"],
                       capture_output=True, text=True, timeout=60)
    assert p.stdout.strip() == "['mdbpy']", p.stderr
