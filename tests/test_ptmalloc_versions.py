"""Other glibc releases: the fixtures run with Debian's libc6 of other releases through that
release's own loader, live and as a core, with that release's debug files and without: by
default bullseye (2.31: no safe-linking, the tcache key is the tcache) and trixie (2.41:
safe-linking, a random key, the newest tcache).

.ci/run fetches them (.ci/other-glibc: libc6, libc6-dbg and libc6-dev of each release,
downloaded with apt and unpacked, never installed) under .ci/glibc/<release>/<package>/
($MDBPY_OTHER_GLIBC names another such directory). A release that is not there is skipped,
saying why.

A fixture is compiled here and linked against the release's own libc, crt files and
libc_nonshared.a (a program linked against a newer glibc binds symbol versions an older one
lacks: __libc_start_main@GLIBC_2.34), then run as `ld-linux-x86-64.so.2 --library-path LIB
exe`. The release's debug files are found by build-id in its libc6-dbg tree, given to mdbpy
as a debug directory (test_ptmalloc_modes.look: $MDBPY_SYSTEM_DEBUG_DIRS).
"""

from __future__ import annotations

import io
import os
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import FIXTURES, ROOT, gcore, start_fixture
from test_ptmalloc_heap import FLAGS, MALLINFO, run, where
from test_ptmalloc_modes import SHAPES, assert_healthy, assert_modes_agree, planted, run_program

from mdbpy.heap.leaks import find_leaks
from mdbpy.lang.engine import Engine
from mdbpy.session import Session
from mdbpy_commands.ptmalloc.version import release_of_file

OTHER = Path(os.environ.get("MDBPY_OTHER_GLIBC") or ROOT / ".ci" / "glibc")
LIBDIRS = ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu")


@dataclass
class Release:
    """One unpacked release: its name, glibc version, and the trees of its packages."""

    name: str
    version: tuple[int, int]
    lib: Path  # libc6's directory of libc.so.6 and the loader
    dev: Path  # libc6-dev's directory of the crt files and libc_nonshared.a
    debug: Path  # libc6-dbg's debug directory (.build-id/...)

    @property
    def loader(self) -> tuple:
        """The argv prefix that runs a program on this release."""
        return (self.lib / "ld-linux-x86-64.so.2", "--library-path", self.lib)


def _unpacked() -> list[str]:
    return sorted(d.name for d in OTHER.glob("*") if (d / "libc6").is_dir())


def _release(name: str | None) -> Release:
    if name is None:
        pytest.skip(f"no other glibc release is unpacked under {OTHER} (.ci/run fetches "
                    "bullseye's and trixie's with apt: see .ci/other-glibc)")
    root = OTHER / name
    lib = next((root / "libc6" / d for d in LIBDIRS
                if (root / "libc6" / d / "libc.so.6").exists()), None)
    dev = root / "libc6-dev" / "usr/lib/x86_64-linux-gnu"
    debug = root / "libc6-dbg" / "usr/lib/debug"
    if lib is None or not (dev / "Scrt1.o").exists() or not debug.is_dir():
        pytest.skip(f"{name}'s libc6, libc6-dev or libc6-dbg is not unpacked under {root}")
    version = release_of_file(str(lib / "libc.so.6"))
    assert version is not None, f"{lib}/libc.so.6 has no glibc release string"
    return Release(name, version, lib, dev, debug)


def release_with(version: tuple[int, int]) -> Release:
    """The unpacked release of that glibc version (another test's way to one); skips when
    none is."""
    for name in _unpacked():
        rel = _release(name)
        if rel.version == version:
            return rel
    pytest.skip(f"no glibc {version[0]}.{version[1]} is unpacked under {OTHER} (.ci/run "
                "fetches it with apt: see .ci/other-glibc)")


def _build(rel: Release, out: Path, name: str) -> Path:
    """fixtures/<name>.c built to run on release rel."""
    exe = out / f"{name}-{rel.name}"
    if exe.exists():
        return exe

    def gccfile(f):
        return subprocess.run(["gcc", f"-print-file-name={f}"], capture_output=True,
                              text=True, check=True).stdout.strip()

    lib, dev = rel.lib, rel.dev
    cmd = ["gcc", *FLAGS, "-nostdlib", "-o", str(exe), str(dev / "Scrt1.o"),
           str(dev / "crti.o"), gccfile("crtbeginS.o"), str(FIXTURES / f"{name}.c"),
           str(lib / "libc.so.6"), str(lib / "libpthread.so.0"),
           str(lib / "ld-linux-x86-64.so.2"), str(dev / "libc_nonshared.a"),
           gccfile("crtendS.o"), str(dev / "crtn.o")]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return exe


@pytest.fixture(scope="module", params=_unpacked() or [None])
def other(request) -> Release:
    return _release(request.param)


@pytest.fixture(scope="module")
def release(other, build_dir):
    """(Release, Running, malloc_stats text, core) of glibc_heap's leaks mode on it."""
    exe = _build(other, build_dir, "glibc_heap")
    r = start_fixture(*other.loader, exe, "leaks")
    try:
        stats = ""
        for _ in range(64):  # printed right after READY (see test_ptmalloc_heap)
            stats += r.proc.stdout.readline()
            if "max mmap bytes" in stats:
                break
        core = gcore(r.pid, build_dir / f"glibc-{other.name}")
        yield other, r, stats, core
    finally:
        r.stop()


@contextmanager
def opened(rel, kind: str, mode: str):
    other, r, _stats, core = rel
    if kind == "live":
        from mdbpy.target.live import LiveTarget

        target = LiveTarget(r.pid)
    else:
        from mdbpy.target.core import open_file_target

        target = open_file_target(str(core))
    s = Session(target, out=io.StringIO(), err=io.StringIO(), debug_dirs=[str(other.debug)])
    s.settings["ptmalloc.locate"] = mode
    Engine(s)
    try:
        yield s
    finally:
        s.close()


@pytest.mark.parametrize("kind", ("live", "core"))
@pytest.mark.parametrize("mode", ("symbols", "heuristic"))
def test_other_release(release, kind, mode):
    other, r, stats = release[:3]
    major, minor = other.version
    with opened(release, kind, mode) as s:
        head = run(s, "::ptmalloc").splitlines()
        safe = "on" if other.version >= (2, 32) else "off"
        assert head[0].startswith(f"glibc {major}.{minor} (") and head[0].endswith(
            f"locate mode {mode}, safe-linking {safe}")
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
        assert {leak.addr for leak in report.leaks} == planted("heap", r)


@pytest.fixture(scope="module", params=SHAPES + ("heap",))
def program(request, other, build_dir, tmp_path_factory):
    """A fixture (test_ptmalloc_modes' programs) run on the release, looked at in both modes,
    live and as a core: symbols from the release's libc6-dbg, heuristics without it."""
    name = request.param
    exe = _build(other, build_dir, "glibc_heap" if name == "heap" else "glibc_shapes")
    return run_program(exe, name, build_dir, tmp_path_factory.mktemp("cache"), other.loader,
                       [str(other.debug)])


@pytest.mark.parametrize("kind", ("live", "core"))
def test_heuristic_mode_equals_symbol_mode(program, kind):
    assert_modes_agree(program, kind)


@pytest.mark.parametrize("kind", ("live", "core"))
@pytest.mark.parametrize("mode", ("symbols", "heuristic"))
def test_healthy_heap_is_seen_exactly(program, kind, mode):
    assert_healthy(program, kind, mode)
