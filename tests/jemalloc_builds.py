"""The jemalloc builds the jemalloc tests link their fixtures with.

- `.ci/jemalloc/` (made by .ci/build-jemalloc): jemalloc 5.3.0 built with -g from Debian's source
  package: lib/libjemalloc.so.2 and lib/libjemalloc.a, with symbols and DWARF (the DWARF path);
- the static -g build with its DWARF stripped (the path with symbols, without DWARF);
- `.ci/jemalloc/rjem/` (made by .ci/build-jemalloc): the same source configured as
  tikv-jemalloc-sys configures it for Rust services (`_rjem_` public prefix, `_rjem_je_`
  internals, static only), linked statically into the fixture: with its symbols and DWARF,
  and stripped of everything (`strip --strip-all`: jemalloc then has no symbol at all);
  `.ci/jemalloc/rjem-nostats/`: the same with tikv-jemalloc-sys' default `--disable-stats`;
- Debian's libjemalloc2 and libjemalloc-dev (installed by .ci/run): the same release, stripped
  of its internal symbols (the heuristic path);
- `.ci/jemalloc-5.2/` (made by .ci/build-jemalloc): Debian bullseye's libjemalloc.so.2, jemalloc
  5.2.1, stripped (the 5.2 layouts, by the heuristics); beside it bullseye's libjemalloc-dev:
  lib/libjemalloc_pic.a with its symbol table, no DWARF, and the 5.2.1 header (the 5.2 path
  by symbols); `.ci/jemalloc-5.2/g/`: jemalloc 5.2.1 built with -g from the copy redis
  bundles (upstream's layouts, its version string `5.2.1-0-g0`; the 5.2 layouts bound from
  DWARF, whose arena_t and base_t offsets are those found in bullseye's library).

A test that needs a build that is absent skips, naming what is missing.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from support import ROOT, compile_fixture

CI_BUILD = ROOT / ".ci" / "jemalloc"
BULLSEYE = ROOT / ".ci" / "jemalloc-5.2"
BULLSEYE_G = BULLSEYE / "g"
DEBIAN_LIB = Path("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")
DEBIAN_HEADER = Path("/usr/include/jemalloc/jemalloc.h")


def need_ci_build(build: Path = CI_BUILD) -> Path:
    if not (build / "done").exists():
        pytest.skip(f"{build} not built (run .ci/build-jemalloc)")
    return build


def compile_dwarf(name: str, out_dir: Path, static: bool = False,
                  build: Path = CI_BUILD) -> Path:
    """fixtures/<name>.c linked with a -g build (5.3's, or BULLSEYE_G: 5.2's): shared (rpath
    to it) or static."""
    b = need_ci_build(build)
    lib = b / "lib"
    libs = ([str(lib / "libjemalloc.a"), "-pthread", "-lm", "-ldl"] if static else
            [f"-L{lib}", f"-Wl,-rpath,{lib}", "-ljemalloc", "-pthread"])
    kind = "static" if static else "dwarf"
    return compile_fixture(name, out_dir, flags=("-g", "-O0", f"-I{b / 'include'}"),
                           out_name=f"{name}_{kind}{'52' if build == BULLSEYE_G else ''}",
                           libs=libs)


def compile_nodwarf(name: str, out_dir: Path) -> Path:
    """fixtures/<name>.c linked statically with the -g build, then stripped of its DWARF
    (`strip --strip-debug`): jemalloc's internal symbols without DWARF."""
    exe = compile_dwarf(name, out_dir, static=True)
    out = Path(out_dir) / f"{name}_nodwarf"
    subprocess.run(["strip", "--strip-debug", "-o", str(out), str(exe)], check=True)
    return out


def compile_rjem(name: str, out_dir: Path, strip: str = "", stats: bool = True) -> Path:
    """fixtures/<name>.c linked statically with the `_rjem_` build, as a Rust service links
    tikv-jemallocator: JEMALLOC_MANGLE makes the fixture's malloc, free and mallctl jemalloc's
    `_rjem_` names; glibc's malloc stays in the process beside it. `strip`: then
    `strip --strip-all` ("all": no .symtab left, and the static jemalloc is in no .dynsym) or
    `--strip-debug` ("debug": its symbols without DWARF), linked with a build-id of its own
    (`--build-id=uuid`): mdbpy's symbol cache is keyed by build-id, so a twin sharing the
    unstripped build's id would be read with that build's cached symbols within one test
    session. `stats=False`: the build without stats."""
    b = CI_BUILD / ("rjem" if stats else "rjem-nostats")
    if not (b / "done").exists():
        pytest.skip(f"{b} not built (run .ci/build-jemalloc)")
    tag = f"rjem{'' if stats else 'nostats'}"
    exe = compile_fixture(name, out_dir, out_name=f"{name}_{tag}{'full' if strip else ''}",
                          flags=("-g", "-O0", "-DJEMALLOC_MANGLE", f"-I{b / 'include'}"),
                          libs=(str(b / "lib" / "libjemalloc_pic.a"), "-pthread", "-lm",
                                "-ldl", *(["-Wl,--build-id=uuid"] if strip else [])))
    if not strip:
        return exe
    out = Path(out_dir) / f"{name}_{tag}{'stripped' if strip == 'all' else 'nodwarf'}"
    subprocess.run(["strip", f"--strip-{strip}", "-o", str(out), str(exe)], check=True)
    return out


def compile_debian(name: str, out_dir: Path) -> Path:
    """fixtures/<name>.c linked with Debian's libjemalloc2 (no internal symbols, no DWARF)."""
    if not (DEBIAN_LIB.exists() and DEBIAN_HEADER.exists()):
        pytest.skip("Debian's libjemalloc2/libjemalloc-dev are not installed")
    return compile_fixture(name, out_dir, out_name=f"{name}_debian",
                           libs=("-ljemalloc", "-pthread"))


def compile_bullseye(name: str, out_dir: Path) -> Path:
    """fixtures/<name>.c run with Debian bullseye's libjemalloc.so.2 (5.2.1, stripped; made
    by .ci/build-jemalloc): built with bookworm's header (the API it uses is 5.2's too) and
    linked to the 5.2.1 library by its path, with an rpath to it."""
    if not (BULLSEYE / "done").exists():
        pytest.skip(f"{BULLSEYE} not unpacked (run .ci/build-jemalloc)")
    if not DEBIAN_HEADER.exists():
        pytest.skip("Debian's libjemalloc-dev is not installed (the header)")
    lib = BULLSEYE / "lib"
    return compile_fixture(name, out_dir, out_name=f"{name}_bullseye",
                           libs=(str(lib / "libjemalloc.so.2"), f"-Wl,-rpath,{lib}",
                                 "-pthread"))


def compile_symbols52(name: str, out_dir: Path) -> Path:
    """fixtures/<name>.c built with bullseye's 5.2.1 header and linked statically with its
    libjemalloc_pic.a (libjemalloc-dev 5.2.1-3, made by .ci/build-jemalloc): jemalloc 5.2.1's
    internal symbols (je_extents_rtree, je_arenas, ...) without DWARF."""
    if not (BULLSEYE / "done-dev").exists():
        pytest.skip(f"bullseye's libjemalloc-dev not unpacked under {BULLSEYE} (run "
                    ".ci/build-jemalloc)")
    return compile_fixture(name, out_dir, flags=("-g", "-O0", f"-I{BULLSEYE / 'include'}"),
                           out_name=f"{name}_symbols52",
                           libs=(str(BULLSEYE / "lib" / "libjemalloc_pic.a"), "-pthread",
                                 "-lm", "-ldl"))


def lib_path(name: str) -> str:
    return os.fspath(CI_BUILD / "lib" / name)
