"""The real libumem builds the tests run against, and the programs they run on them.

`../shared/umem/<build>/` (beside the repository) holds builds of the portable libumem
(shared/umem/README.md): `lib/` with both shared libraries (DWARF included), both static
archives, `include/` the headers. Every build found there is a test parameter; without that
folder (a user running the tests from a release tarball) the tests skip with one reason.

Nothing here names a soname: the libraries are found by glob (`libumem.so.*`), and what a build
records is read from the library itself (its dynamic symbols), the way the module decides too.
`libtool_layout` lays a build out as `make install` does (the mapped file libumem.so.N.0.0,
libumem.so.N a symlink to it), so that the module is also tested on the name users' maps show.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import ROOT, FIXTURES, gcore, run_mdbpy, start_fixture

SHARED = ROOT.parent / "shared" / "umem"
DEBUG_ENV = {"UMEM_DEBUG": "default", "UMEM_LOGGING": "transaction"}


@dataclass(frozen=True)
class Build:
    name: str
    lib: Path
    include: Path

    def shared(self, stem: str = "libumem") -> Path:
        """The one shared library `<stem>.so.*` of the build (the file, not a symlink)."""
        found = [p for p in sorted(self.lib.glob(f"{stem}.so.*"))
                 if p.is_file() and not p.is_symlink()]
        assert len(found) == 1, f"{self.lib}: {stem}.so.* is {found}"
        return found[0]

    @property
    def malloc(self) -> Path:
        """What LD_PRELOAD names: the malloc replacement library, by its symlink when it has
        one (libtool's layout), as a user names it."""
        real = self.shared("libumem_malloc")
        links = [p for p in self.lib.glob("libumem_malloc.so.*")
                 if p.is_symlink() and p.resolve() == real.resolve()]
        return links[0] if links else real

    def archive(self, stem: str) -> Path:
        return self.lib / f"{stem}.a"

    def defines(self, symbol: str) -> bool:
        """Whether the shared libumem exports `symbol` (nm -D: the test's own oracle)."""
        out = subprocess.run(["nm", "-D", "--defined-only", str(self.shared())],
                             capture_output=True, text=True, check=True).stdout
        return symbol in out.split()

    @property
    def v2(self) -> bool:
        """A v2 release (2026): per-CPU depot and rseq caches, per-thread caches, and allocation
        stacks recorded by a frame-pointer walk (the 2010 tree's getpcstack is a stub)."""
        return self.defines("umem_depot_steal_max")

    @property
    def maxbuf(self) -> int:
        """UMEM_MAXBUF: the largest umem_alloc a cache serves (2016 and later: 128 KiB)."""
        return 131072 if self.defines("umem_ptc_size") else 16384

    def libtool_layout(self, dest: Path) -> Build:
        """The build as libtool installs it: each library file renamed <name>.0.0 with its
        soname (the name found here) a symlink to it. libumem_malloc's RUNPATH $ORIGIN then
        finds libumem through the symlink, and the process maps libumem.so.N.0.0."""
        lib = dest / "lib"
        lib.mkdir(parents=True, exist_ok=True)
        for p in (self.shared(), self.malloc):
            real = lib / f"{p.name}.0.0"
            shutil.copy2(p, real)
            (lib / p.name).symlink_to(real.name)
        return Build(f"{self.name}-libtool", lib, self.include)


def builds() -> list[Build]:
    if not SHARED.is_dir():
        return []
    out = []
    for d in sorted(SHARED.iterdir()):
        if (d / "lib").is_dir() and list((d / "lib").glob("libumem_malloc.so.*")):
            out.append(Build(d.name, d / "lib", d / "include"))
    return out


def build_params(*variants: str) -> list:
    """One pytest param per build (id: its folder name), or per build and variant (value
    (build, variant)); one skipped param when there is no build."""
    found = builds()
    if not found:
        return [pytest.param(None, marks=pytest.mark.skip(
            reason=f"no libumem builds in {SHARED} (see its README for how they are made)"))]
    if not variants:
        return [pytest.param(b, id=b.name) for b in found]
    return [pytest.param((b, v), id=f"{b.name}-{v}") for b in found for v in variants]


def compile_c(src: Path | str, exe: Path, *extra, build: Build | None = None) -> Path:
    """gcc -g -O0 (frames for the stacks), the build's headers on the include path."""
    inc = ["-I", str(build.include)] if build is not None else []
    src = FIXTURES / src if isinstance(src, str) else src
    subprocess.run(["gcc", "-g", "-O0", "-pthread", *inc, "-o", str(exe), str(src), *extra],
                   check=True, capture_output=True, text=True)
    return exe


def start(exe: Path, *args, preload: Path | None = None, debug: bool = True, timeout=120):
    """The program started with libumem's malloc preloaded (or linked: preload None), with
    UMEM_DEBUG=default UMEM_LOGGING=transaction unless debug is False."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("LD_PRELOAD", "UMEM_DEBUG", "UMEM_LOGGING", "UMEM_OPTIONS")}
    if debug:
        env.update(DEBUG_ENV)
    if preload is not None:
        env["LD_PRELOAD"] = str(preload)
    return start_fixture(exe, *args, env=env, timeout=timeout)


def started(exe: Path, *args, cores: Path, **kw):
    """(Running, its gcore core): for module fixtures, which stop the process after."""
    r = start(exe, *args, **kw)
    try:
        return r, gcore(r.pid, cores / f"{exe.name}-core")
    except BaseException:
        r.stop()
        raise


def targets(r, core) -> list[tuple]:
    """mdbpy's arguments for the live process and for its core."""
    return [("-p", r.pid), (core,)]


def mdb(target, cmds: str, stderr: bool = False):
    """stdout of `mdbpy <target> -e cmds` (which must succeed), with stderr when asked."""
    p = run_mdbpy(*target, "-e", cmds, timeout=600)
    assert p.returncode == 0, p.stderr
    return (p.stdout, p.stderr) if stderr else p.stdout


def hexes(text: str) -> set[int]:
    """The 0x-prefixed numbers a walk printed, one a line."""
    return {int(x, 16) for x in text.split() if x.startswith("0x")}


def table_totals(out: str) -> list[str]:
    """The `Total` lines of ::findleaks's tables, after the word Total."""
    return [x.split("Total", 1)[1].strip() for x in out.splitlines()
            if x.lstrip().startswith("Total ")]


def assert_only_damage(target, out: str, buf: int) -> None:
    """::umem_verify's table (in `out`) names one corrupt buffer, in umem_alloc_80, and that
    cache's summary names `buf`: a malloc(50) buffer written after free at its user pointer."""
    bad = [x for x in out.splitlines() if x.endswith((" corrupt buffer", " corrupt buffers"))]
    assert len(bad) == 1 and bad[0].startswith("umem_alloc_80 ") and \
        bad[0].endswith(" 1 corrupt buffer"), bad
    assert mdb(target, f"{bad[0].split()[1]}::umem_verify") == (
        "Summary for cache 'umem_alloc_80'\n"
        f"  buffer {buf:x} (free) seems corrupted, at {buf + 16:x}\n")
