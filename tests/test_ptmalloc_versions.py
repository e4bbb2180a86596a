"""Other glibc releases: the glibc_heap fixture run with Debian's libc6 of bullseye (2.31: no
safe-linking, tcache key = the tcache) and trixie (2.41: safe-linking, random key), through
that release's own loader, live and as a core, with that release's debug files and without.

The releases are unpacked outside the repository (tests skip when they are absent), e.g.:

    mkdir -p $D && cd $D    # D=${MDBPY_OTHER_GLIBC:-/work/glibc-other}
    # an apt sources.list naming bullseye and trixie, used through apt-get -o Dir::...
    apt-get download libc6=2.31-13+deb11u11 libc6-dbg=2.31-13+deb11u11 \\
        libc6-dev=2.31-13+deb11u11 libc6=2.41-12+deb13u4 libc6-dbg=2.41-12+deb13u4
    dpkg -x libc6_2.31*.deb 2.31; dpkg -x libc6-dbg_2.31*.deb 2.31-dbg
    dpkg -x libc6-dev_2.31*.deb 2.31-dev
    dpkg -x libc6_2.41*.deb 2.41; dpkg -x libc6-dbg_2.41*.deb 2.41-dbg

A program built here binds symbols of glibc 2.34+ (__libc_start_main), so the 2.31 fixture is
linked against 2.31's own libc, crt files and libc_nonshared.a; 2.41 runs the host build.
"""

from __future__ import annotations

import io
import os
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest
from support import FIXTURES, gcore, start_fixture
from test_ptmalloc_heap import FLAGS, MALLINFO, run, where

from mdbpy.heap.leaks import find_leaks
from mdbpy.lang.engine import Engine
from mdbpy.session import Session

OTHER = Path(os.environ.get("MDBPY_OTHER_GLIBC", "/work/glibc-other"))
VERSIONS = {"2.31": "off", "2.41": "on"}  # release -> safe-linking


def _libdir(root: Path) -> Path:
    for sub in ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu"):
        if (root / sub / "libc.so.6").exists():
            return root / sub
    pytest.skip(f"glibc not unpacked under {root}")


def _build(version: str, out: Path, name: str = "glibc_heap") -> Path:
    """fixtures/<name>.c built to run under glibc `version`."""
    exe = out / f"{name}-{version}"
    src = str(FIXTURES / f"{name}.c")
    if version >= "2.34":
        cmd = ["gcc", *FLAGS, "-o", str(exe), src, "-pthread"]
    else:
        lib = _libdir(OTHER / version)
        dev = OTHER / f"{version}-dev" / "usr/lib/x86_64-linux-gnu"
        if not (dev / "Scrt1.o").exists():
            pytest.skip(f"libc6-dev {version} not unpacked under {dev}")

        def gccfile(name):
            return subprocess.run(["gcc", f"-print-file-name={name}"], capture_output=True,
                                  text=True, check=True).stdout.strip()

        cmd = ["gcc", *FLAGS, "-nostdlib", "-o", str(exe), str(dev / "Scrt1.o"),
               str(dev / "crti.o"), gccfile("crtbeginS.o"), src, str(lib / "libc.so.6"),
               str(lib / "libpthread.so.0"), str(lib / "ld-linux-x86-64.so.2"),
               str(dev / "libc_nonshared.a"), gccfile("crtendS.o"), str(dev / "crtn.o")]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return exe


@pytest.fixture(scope="module", params=sorted(VERSIONS))
def release(request, build_dir):
    """(version, Running, malloc_stats text, core, debug dir) of the fixture under it."""
    version = request.param
    lib = _libdir(OTHER / version)
    exe = _build(version, build_dir)
    r = start_fixture(lib / "ld-linux-x86-64.so.2", "--library-path", lib, exe, "leaks")
    try:
        stats = ""
        for _ in range(64):  # printed right after READY (see test_ptmalloc_heap)
            stats += r.proc.stdout.readline()
            if "max mmap bytes" in stats:
                break
        core = gcore(r.pid, build_dir / f"glibc-{version}")
        yield version, r, stats, core, str(OTHER / f"{version}-dbg" / "usr/lib/debug")
    finally:
        r.stop()


@contextmanager
def opened(rel, kind: str, mode: str):
    _v, r, _stats, core, dbg = rel
    if kind == "live":
        from mdbpy.target.live import LiveTarget

        target = LiveTarget(r.pid)
    else:
        from mdbpy.target.core import open_file_target

        target = open_file_target(str(core))
    s = Session(target, out=io.StringIO(), err=io.StringIO(), debug_dirs=[dbg])
    s.settings["ptmalloc.locate"] = mode
    Engine(s)
    try:
        yield s
    finally:
        s.close()


@pytest.mark.parametrize("kind", ("live", "core"))
@pytest.mark.parametrize("mode", ("symbols", "heuristic"))
def test_other_release(release, kind, mode):
    version, r, stats = release[:3]
    with opened(release, kind, mode) as s:
        head = run(s, "::ptmalloc").splitlines()
        assert head[0].startswith(f"glibc {version} (") and head[0].endswith(
            f"locate mode {mode}, safe-linking {VERSIONS[version]}")
        assert f"({mode})" in head[1] and f"({mode})" in head[2]
        assert run(s, "::malloc_stats") == stats
        got = dict(line.split(" = ") for line in run(s, "::mallinfo").splitlines())
        assert {k.strip(): int(v) for k, v in got.items()} == {k: int(r.info[k])
                                                              for k in MALLINFO}
        assert where(s, r.addr("fast_chunk")) == "fastbin[3]"
        assert where(s, r.addr("tcache_chunk")) == "tcache[3]"
        assert where(s, r.addr("small_chunk")) == "smallbin[62]"
        assert where(s, r.addr("thread_tcache_chunk")) == "tcache[3]"
        assert run(s, "::ptmalloc_verify") == "ptmalloc: heap clean\n"
        report = find_leaks(s)
        want = {r.addr("leak_string"), r.addr("leak_cycle_a"), r.addr("leak_cycle_b"),
                r.addr("leak_widget"), r.addr("thread_leak"), r.addr("leak_mmapped") + 16}
        want |= {r.addr("leak_list") - 0x30 * k for k in range(3)}
        assert {leak.addr for leak in report.leaks} == want
