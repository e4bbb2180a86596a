"""The jemalloc builds the jemalloc tests link their fixtures with.

- `.ci/jemalloc/` (made by .ci/build-jemalloc): jemalloc 5.3.0 built with -g from Debian's source
  package: lib/libjemalloc.so.2 and lib/libjemalloc.a, with symbols and DWARF (the DWARF path);
- Debian's libjemalloc2 and libjemalloc-dev (installed by .ci/run): the same release, stripped
  of its internal symbols (the path without them).

A test that needs a build that is absent skips, naming what is missing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support import ROOT, compile_fixture

CI_BUILD = ROOT / ".ci" / "jemalloc"
DEBIAN_LIB = Path("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")
DEBIAN_HEADER = Path("/usr/include/jemalloc/jemalloc.h")


def need_ci_build() -> Path:
    if not (CI_BUILD / "done").exists():
        pytest.skip(f"{CI_BUILD} not built (run .ci/build-jemalloc)")
    return CI_BUILD


def compile_dwarf(name: str, out_dir: Path, static: bool = False) -> Path:
    """fixtures/<name>.c linked with the -g build: shared (rpath to it) or static."""
    b = need_ci_build()
    lib = b / "lib"
    libs = ([str(lib / "libjemalloc.a"), "-pthread", "-lm", "-ldl"] if static else
            [f"-L{lib}", f"-Wl,-rpath,{lib}", "-ljemalloc", "-pthread"])
    return compile_fixture(name, out_dir, flags=("-g", "-O0", f"-I{b / 'include'}"),
                           out_name=f"{name}_{'static' if static else 'dwarf'}", libs=libs)


def compile_debian(name: str, out_dir: Path) -> Path:
    """fixtures/<name>.c linked with Debian's libjemalloc2 (no internal symbols, no DWARF)."""
    if not (DEBIAN_LIB.exists() and DEBIAN_HEADER.exists()):
        pytest.skip("Debian's libjemalloc2/libjemalloc-dev are not installed")
    return compile_fixture(name, out_dir, out_name=f"{name}_debian",
                           libs=("-ljemalloc", "-pthread"))


def lib_path(name: str) -> str:
    return os.fspath(CI_BUILD / "lib" / name)
