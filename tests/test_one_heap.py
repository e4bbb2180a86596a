"""One heap, one mark: fixtures/one_heap.c holds glibc malloc chunks, bumpalloc buffers (the
examples/bumpalloc module), an mmap'd pool no allocator claims and, where ../shared/umem has a
build, real libumem buffers, each kept alive only by another allocator's buffer or by the pool.
::findleaks must report exactly the planted leaks, live and on a gcore core; ::whyalive names the
chains across allocators and through the anonymous pool."""

from __future__ import annotations

import subprocess

import pytest
from support import FIXTURES, ROOT, gcore, run_mdbpy, start_fixture

BUMPALLOC = ROOT / "examples" / "bumpalloc" / "bumpalloc.py"
UMEM = ROOT.parent / "shared" / "umem" / "5cc22b9"  # v2.4.0's own spans are issue 17's
POOL = 64 << 10

BUILDS = ["glibc", "glibc+umem"]


def _umem_lib():
    libs = sorted((UMEM / "lib").glob("libumem.so*")) if UMEM.is_dir() else []
    return libs[0] if libs else None


@pytest.fixture(scope="module", params=BUILDS)
def one_heap(request, tmp_path_factory):
    """(Running, exe, core) of the fixture, built with or without libumem, left running."""
    d = tmp_path_factory.mktemp("one_heap")
    exe = d / "one_heap"
    cmd = ["gcc", "-g", "-O0", "-o", str(exe), str(FIXTURES / "one_heap.c")]
    env = None
    if request.param == "glibc+umem":
        lib = _umem_lib()
        if lib is None:
            pytest.skip(f"no libumem build in {UMEM}")
        cmd[1:1] = ["-DWITH_UMEM", f"-I{UMEM / 'include'}"]
        cmd += [str(lib), f"-Wl,-rpath,{lib.parent}"]
        env = {"UMEM_DEBUG": "default", "UMEM_LOGGING": "transaction", "PATH": "/usr/bin:/bin"}
    subprocess.run(cmd, check=True, capture_output=True)
    r = start_fixture(exe, env=env)
    try:
        yield r, exe, gcore(r.pid, d / "core")
    finally:
        r.stop()


def mdbpy(one_heap, live: bool, commands: str) -> str:
    r, exe, core = one_heap
    target = ("-p", r.pid) if live else (exe, core)
    out = run_mdbpy("-S", *target, "-e", f"::load {BUMPALLOC}; {commands}")
    assert out.returncode == 0 and out.stderr == "", out.stderr
    return out.stdout


def planted(r) -> set[int]:
    want = {r.addr(k) for k in ("m_leak", "m_lost", "b_leak", "lost", "m_big")}
    if "u_leak" in r.info:
        want.add(r.addr("u_leak"))
    return want


@pytest.mark.parametrize("live", [True, False], ids=["live", "core"])
def test_exactly_the_planted_leaks(one_heap, live):
    r = one_heap[0]
    out = mdbpy(one_heap, live, "::findleaks; ::walk leakbuf")
    assert {int(x, 16) for x in out.splitlines() if x.startswith("0x")} == planted(r)


@pytest.mark.parametrize("live", [True, False], ids=["live", "core"])
def test_mmap_leak_row_and_long_forms(one_heap, live):
    """The lost pool is the one mmap(2) leak; the mmapped chunk leak (no allocation record)
    prints its long form with a sample address."""
    r = one_heap[0]
    out = mdbpy(one_heap, live, "::findleaks -d")
    lost, big = r.addr("lost"), r.addr("m_big")
    rows = [line for line in out.splitlines() if line.endswith(" MMAP")]
    assert rows == [f"{POOL:<16d} {1:7d} {lost:16x} MMAP"]
    assert f"mmap(2) leak: [{lost:x}, {lost + POOL:x}), {POOL} bytes" in out.splitlines()
    i = out.splitlines().index(f"    sample addr {big:x}")
    assert out.splitlines()[i - 1].startswith("oversize leak: 1 buffer, ")


@pytest.mark.parametrize("live", [True, False], ids=["live", "core"])
def test_whyalive_crosses_allocators_and_the_pool(one_heap, live):
    r = one_heap[0]
    pool, mh, bh = r.addr("pool"), r.addr("m_holder"), r.addr("b_holder")
    out = mdbpy(one_heap, live, "{0:#x}::whyalive; {1:#x}::whyalive; {2:#x}::whyalive".format(
        r.addr("m_pooled"), r.addr("m_held"), r.addr("b_held"))).splitlines()
    # the pool: the global `pool` -> the anonymous mapping -> the chunk it holds
    assert out[0].startswith(f"{r.addr('m_pooled'):x} is allocated from chunk ")
    assert out[1].startswith("    pool ") and out[1].endswith(
        f"-> {pool:x} (anon mapping {pool:x}-{pool + POOL:x} rw-p)")
    assert out[2].startswith(f"    {pool:x}+320 ") and out[2].endswith(
        f"-> {r.addr('m_pooled'):x} (chunk 0x50)")
    # a chunk held only by a bump buffer, a bump buffer held only by a chunk
    assert out[4].startswith("    b_holder ") and out[4].endswith(f"-> {bh:x} (bump)")
    assert out[5].startswith(f"    {bh:x}+8 ") and out[5].endswith(f"-> {r.addr('m_held'):x}"
                                                                    " (chunk 0x40)")
    assert out[7].startswith("    m_holder ") and out[7].endswith(f"-> {mh:x} (chunk 0x50)")
    assert out[8].startswith(f"    {mh:x}+10 ") and out[8].endswith(f"-> {r.addr('b_held'):x}"
                                                                     " (bump)")


@pytest.mark.parametrize("live", [True, False], ids=["live", "core"])
def test_shared_memory_nothing_reaches_is_a_root_not_a_leak(one_heap, live):
    """A shared anonymous mapping the program dropped may be held by another process: the
    chunk only it points to is alive, and -v names the mapping among the roots (live: the
    kernel's /dev/zero name says it is shared; gdb's core records it as a mapped file, whose
    writable data is a root anyway)."""
    r = one_heap[0]
    shared = r.addr("shared")
    out = mdbpy(one_heap, live, f"::findleaks -v; {r.addr('m_shared'):#x}::whyalive")
    lines = out.splitlines()
    assert f"{r.addr('m_shared'):x} is allocated from chunk 0x80, reachable through:" in lines
    if live:
        label = f"anon mapping {shared:x}-{shared + 0x1000:x} rw-s"
        assert f"findleaks:     {label} (shared: other processes may hold it)" in lines
        # the chain starts at the mapping itself, made a root
        assert lines[-2] == f"    {label + ' (shared: other processes may hold it)':<40s} -> " \
                            f"{shared:x} ({label})"
        assert lines[-1] == f"    {f'{shared:x}+18':<40s} -> {r.addr('m_shared'):x} (chunk 0x80)"
