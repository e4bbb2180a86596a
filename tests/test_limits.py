"""Resource limits (issue 8): ::set -o walklimit=N, the core writer's cap on anonymous
mappings, and a core claiming a 4 GiB heap analysed in bounded memory and stoppable by Ctrl-C.

The 4 GiB core is written by mdbpy's own core writer from a target whose heap reads as zeros
except for a few planted words, so the file is sparse: it costs a few pages of disk, and mdbpy
still has to stream all 4 GiB of it to search it.
"""

from __future__ import annotations

import os
import signal

import pytest
from test_lang_engine import Harness

from mdbpy.target.base import Mapping, Target
from mdbpy.target.core import CoreTarget
from mdbpy.target.gcore import write_core
from support import PipedSession, compile_fixture, one_line_stderr, run_mdbpy, run_measured, \
    start_fixture

GIB = 1 << 30
MIB = 1 << 20
HEAP = 0x10000000  # where the sparse core's heap starts
MARK = 0xFEEDFACECAFEBEEF  # planted near the end of the heap: a search must stream to it
RSS_BOUND_KIB = 500 * 1024


# -- walklimit ------------------------------------------------------------------------------

@pytest.fixture
def h():
    return Harness()


def test_walklimit_cuts_walks_with_a_note(h):
    assert h.run("::walk tlist") == "0x1000\n0x1020\n0x1040\n"
    h.run("::set -o walklimit=2")
    assert h.run("::walk tlist") == "0x1000\n0x1020\n"
    assert h.errors() == ("mdbpy: walk stopped after 2 elements (walklimit; "
                          "::set -o walklimit=0 lifts it)\n")
    assert h.run("1000::list") == "0x1000\n0x1020\n"  # ::list obeys it too ...
    assert h.errors().startswith("mdbpy: walk stopped after 2 elements")
    assert h.run("1000::list -n 3") == "0x1000\n0x1020\n0x1040\n"  # ... unless -n is given
    h.run("::walk tlist | ::rec")  # a pipeline gets the cut walk
    assert [c[0] for c in h.calls] == [0x1000, 0x1020]
    assert "walk limit: 2\n" in h.run("::set")


def test_walklimit_exactly_reached_says_nothing(h):
    h.run("::set -o walklimit=3")
    assert h.run("::walk tlist") == "0x1000\n0x1020\n0x1040\n"
    assert h.errors() == ""
    h.run("::set -o walklimit=0")
    assert h.run("::walk tlist") == "0x1000\n0x1020\n0x1040\n"
    assert "walk limit: none\n" in h.run("::set")


@pytest.mark.parametrize("cmd, error", [
    ("::set -o walklimit=many", "mdbpy: walklimit= needs a decimal count, not 'many'\n"),
    ("::set -o walklimit=-1", "mdbpy: walklimit= needs a decimal count, not '-1'\n"),
    ("::set -o pagesize=4", "mdbpy: unknown option 'pagesize=' (valued options: walklimit=N, "
                            "follow_fork_mode=parent|child)\n"),
])
def test_walklimit_bad_values(h, cmd, error):
    h.run(cmd)
    assert h.errors() == error
    assert "walklimit" not in h.session.settings


# -- the core writer's cap ------------------------------------------------------------------

@pytest.fixture(scope="module")
def selfsum_small(build_dir):
    """A selfsum fixture with 100,000 nodes: an 8 MB [heap]."""
    r = start_fixture(compile_fixture("selfsum", build_dir, flags=("-g", "-O2")), 100_000)
    try:
        yield r
    finally:
        r.stop()


def test_gcore_caps_anonymous_mappings(selfsum_small, tmp_path):
    r = selfsum_small
    head = r.addr("head")
    heap = next(m for m in _maps(r.pid) if m[2] == "[heap]")
    out = run_mdbpy("-S", "-p", r.pid, "-e", f"::gcore -o {tmp_path}/capped -m 1m")
    assert out.stdout == f"{tmp_path}/capped.{r.pid} dumped\n"
    size = (heap[1] - heap[0]) / MIB
    assert one_line_stderr(out.stderr) == (
        f"mdbpy: ::gcore: [heap] [0x{heap[0]:x}, 0x{heap[1]:x}): only the first 1 MiB of "
        f"{size:.4g} MiB written (limit 1 MiB per anonymous mapping); -m 0 writes it all")
    core = f"{tmp_path}/capped.{r.pid}"
    inside, outside = heap[0] + MIB - 8, heap[0] + MIB
    out = run_mdbpy("-S", core, "-e", f"{head:x}::list -n 2; {inside:x}/K; {outside:x}/K")
    assert out.stdout.split()[:2] == [f"0x{head:x}", f"0x{head + 0x50:x}"]
    assert one_line_stderr(out.stderr) == f"mdbpy: failed to read 8 bytes at 0x{outside:x}: " \
                                          f"not in core file"
    # -m 0: the whole heap
    out = run_mdbpy("-S", "-p", r.pid, "-e", f"::gcore -o {tmp_path}/whole -m 0")
    assert (out.returncode, one_line_stderr(out.stderr)) == (0, "")
    tail = CoreTarget(f"{tmp_path}/whole.{r.pid}")
    try:
        assert len(tail.read(heap[1] - MIB, MIB)) == MIB
    finally:
        tail.close()


def test_gcore_bad_size(selfsum_small):
    out = run_mdbpy("-S", "-p", selfsum_small.pid, "-e", "::gcore -o /nonexistent/x -m 12q")
    assert out.returncode == 1
    assert out.stderr.splitlines()[0] == ("mdbpy: ::gcore: bad size '12q' (decimal bytes, or "
                                          "with k, m or g)")


def _maps(pid: int) -> list[tuple[int, int, str]]:
    out = []
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split()
            a, b = (int(x, 16) for x in parts[0].split("-"))
            out.append((a, b, parts[5] if len(parts) > 5 else ""))
    return out


# -- a 4 GiB core in bounded memory -----------------------------------------------------------

class SparseHeap(Target):
    """A target with one 4 GiB heap that reads as zeros but for planted 8-byte words."""

    kind = "synthetic"

    def __init__(self, words: dict[int, int]):
        self.words = words

    def mappings(self) -> list[Mapping]:
        return [Mapping(HEAP, HEAP + 4 * GIB, "rw-p", path="[heap]")]

    def read(self, addr: int, size: int) -> bytes:
        data = bytearray(size)
        for at, value in self.words.items():
            if addr <= at and at + 8 <= addr + size:
                data[at - addr:at - addr + 8] = value.to_bytes(8, "little")
        return bytes(data)

    def threads(self):
        return []

    def auxv(self):
        return {}

    def describe(self) -> str:
        return "a sparse 4 GiB heap"


@pytest.fixture(scope="module")
def big_core(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("big") / "core.sparse")
    write_core(SparseHeap({HEAP: HEAP + 64, HEAP + 4 * GIB - 16: MARK}), path, max_anon=0)
    st = os.stat(path)
    assert st.st_size > 4 * GIB and st.st_blocks * 512 < 16 * MIB  # sparse
    return path


def test_search_through_4gib_core_in_bounded_memory(big_core):
    out, err, status, peak = run_measured("-S", big_core, "-e", f"{HEAP:x}/M {MARK:#x}")
    assert (status, one_line_stderr(err)) == (0, "")
    assert out == f"0x{HEAP + 4 * GIB - 16:x}\n"
    assert peak < RSS_BOUND_KIB, f"peak RSS {peak} KiB"


def test_ctrl_c_stops_a_search_through_4gib(big_core):
    s = PipedSession(big_core)
    try:
        s.send(f"{HEAP:x}/M 0x1234567\n")  # not there: the search would read all 4 GiB
        s.wait_read(256 * MIB)
        s.proc.send_signal(signal.SIGINT)
        assert s.finish() == (130, "mdbpy: interrupted")
    finally:
        s.kill()
