"""Plugins by declaration (issue 21, point 2): a module is found through the entry-point group
mdbpy.modules, mdbpy's own and a third-party package's alike.

- examples/bumpalloc, pip-installed into a directory of its own and put on PYTHONPATH, is found
  with no ::load: its dcmds run, it is in ::dmods and ::help, its allocator is autodetected by
  the generic engines (live and on a core), and ::load takes its name.
- A declared module that fails to import is one warning line; the others still load.
- A `*.dist-info` in the current directory declares nothing (mdbpy drops the cwd from sys.path
  before it reads any package's metadata).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_example_module import EXAMPLE, HDR, bump  # noqa: F401 (bump is a fixture)

from support import bundled_modules, mdbpy_cmd, run_mdbpy


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """A directory into which pip installed examples/bumpalloc, as a user installs a plugin (built
    from a copy, so the build leaves nothing in the tree)."""
    d = tmp_path_factory.mktemp("plugin")
    shutil.copytree(EXAMPLE, d / "src", ignore=shutil.ignore_patterns("build", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target",
                    str(d / "site"), str(d / "src")], check=True, capture_output=True,
                   timeout=300)
    return d / "site"


def broken_plugin(d: Path) -> Path:
    """A directory holding an installed package whose declared module cannot be imported."""
    info = d / "mdbpy_broken-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mdbpy-broken\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[mdbpy.modules]\nbroken = no_such_module_anywhere\n")
    return d


def mdbpy(*args, path: list[Path]):
    """The CompletedProcess of mdbpy with `path` on PYTHONPATH, as a plugin's user runs it."""
    return run_mdbpy("-S", *args, env={"PYTHONPATH": os.pathsep.join(map(str, path))})


def target(bump, live: bool) -> tuple:
    r, exe, core, _ = bump
    return ("-p", r.pid) if live else (exe, core)


@pytest.mark.parametrize("live", [True, False], ids=["live", "core"])
def test_installed_plugin_is_found_without_load(bump, site, live):
    r, _exe, _core, arena = bump
    leak = r.addr("leak")
    out = mdbpy(*target(bump, live), "-e", f"{leak:x}::whatis -q; ::dmods; ::bumpstat; "
                "::walk bump_buf ! wc -l; ::help bumpstat", path=[site])
    assert (out.returncode, out.stderr) == (0, "")
    lines = out.stdout.splitlines()
    # the generic engine asked the allocators first: bumpalloc's was autodetected
    assert lines[:4] == [f"{leak:x} is header {leak - HDR:x} allocated from bump",
                         "bumpalloc", "mdb", "ptmalloc"]
    assert lines[4].startswith(f"arena {arena:x}: ")
    assert lines[5:7] == ["allocs 5, frees 1; walked 5 buffers, 4 in use", "4"]
    assert "\n".join(lines[7:]) == f"""
NAME
  bumpstat - print the bumpalloc arena's counters

SYNOPSIS
  ::bumpstat

DESCRIPTION
  The arena's address range, the bytes used, and the buffers allocated and
  freed, as the arena counts them and as the header walk finds them.

EXAMPLE
  ::bumpstat

ATTRIBUTES

  Target: {"live" if live else "core"}
  Module: bumpalloc
  Interface Stability: Unstable
"""


def test_help_and_load_know_an_installed_plugin_its_target_lacks(site):
    """On a program without bumpalloc nothing loads it, but ::help knows its commands and
    `::load bumpalloc` takes the declared name."""
    exe = os.path.realpath(sys.executable)
    out = mdbpy(exe, "-e", "::dmods; ::help bump_buf; ::load bumpalloc; ::dmods", path=[site])
    assert (out.returncode, out.stderr) == (0, "")
    assert out.stdout.splitlines() == [
        "mdb", "", "NAME", "  bump_buf - walk the allocated bumpalloc buffers (walker)", "",
        "ATTRIBUTES", "", "  Module: bumpalloc (not loaded in this session: ::load bumpalloc)",
        "", "bumpalloc", "mdb"]


def test_broken_plugin_is_one_warning_and_the_others_load(bump, site, tmp_path):
    out = mdbpy(*target(bump, False), "-e", "::dmods", path=[broken_plugin(tmp_path), site])
    assert out.stderr.splitlines() == [
        "mdbpy: failed to load module 'broken': ModuleNotFoundError: No module named "
        "'no_such_module_anywhere'"]
    assert (out.returncode, out.stdout.splitlines()) == (0, ["bumpalloc", "mdb", "ptmalloc"])


def test_metadata_in_the_cwd_declares_nothing(bump, tmp_path):
    """A package's metadata planted in the current directory, declaring a `sim` and a new
    module, is never read: mdbpy looks for modules where Python imports from, without the cwd."""
    broken_plugin(tmp_path)
    (tmp_path / "mdbpy_broken-1.0.dist-info" / "entry_points.txt").write_text(
        "[mdbpy.modules]\nsim = planted\nplanted = planted\n")
    (tmp_path / "planted.py").write_text("open('PWNED', 'w')\n")
    _r, exe, core, _ = bump
    out = subprocess.run(mdbpy_cmd("-S", exe, core, "-e", "::load planted; ::load sim"),
                         capture_output=True, text=True, cwd=tmp_path, timeout=120,
                         env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert out.stderr.splitlines() == [  # and ::load sim loaded mdbpy's own
        f"mdbpy: failed to load module 'planted': no such module (installed: "
        f"{', '.join(bundled_modules())}; a file is loaded by its path, e.g. ./planted.py)"]
    assert not (tmp_path / "PWNED").exists()
