"""docs/new-allocator.md's example: examples/bumpalloc, an allocator module loaded with ::load
from outside the package, on its C program live and as a core. Its dcmd and walker appear in
::dcmds and ::walkers, and the generic ::findleaks, ::whatis and ::whyalive work through its
Allocator with exact addresses."""

from __future__ import annotations

import re
import subprocess

import pytest

from support import ROOT, gcore, mapped_base, run_mdbpy, start_fixture

EXAMPLE = ROOT / "examples" / "bumpalloc"
MODULE = EXAMPLE / "bumpalloc.py"
HDR = 32  # sizeof(struct bump_hdr)


@pytest.fixture(scope="module")
def bump(tmp_path_factory):
    """(Running, exe, core, bump_arena's address) of the example program, left running."""
    d = tmp_path_factory.mktemp("bump")
    exe = d / "bumpalloc"
    subprocess.run(["gcc", "-g", "-O0", "-o", str(exe), str(EXAMPLE / "bumpalloc.c")],
                   check=True, capture_output=True)
    nm = subprocess.run(["nm", str(exe)], check=True, capture_output=True, text=True).stdout
    arena_off = int(re.search(r"^([0-9a-f]+) B bump_arena$", nm, re.M).group(1), 16)
    r = start_fixture(exe)
    try:
        core = gcore(r.pid, d / "core")
        yield r, exe, core, mapped_base(r.pid, exe) + arena_off
    finally:
        r.stop()


def mdbpy(bump, live: bool, commands: str):
    r, exe, core, _ = bump
    target = ("-p", r.pid) if live else (exe, core)
    out = run_mdbpy("-S", *target, "-e", f"::load {MODULE}; {commands}")
    assert out.returncode == 0 and out.stderr == "", out.stderr
    return out.stdout.splitlines()


@pytest.mark.parametrize("live", [True, False], ids=["live", "core"])
def test_module_loads_and_lists(bump, live):
    out = mdbpy(bump, live, "::dcmds ! grep bump; ::walkers ! grep bump; ::dmods")
    assert out[:2] == ["bumpstat                 - print the bumpalloc arena's counters",
                       "bump_buf                 - walk the allocated bumpalloc buffers"]
    assert "bumpalloc" in out[2:]


@pytest.mark.parametrize("live", [True, False], ids=["live", "core"])
def test_dcmd_and_walker(bump, live):
    r, _exe, _core, arena = bump
    head, leak, freed = r.addr("head"), r.addr("leak"), r.addr("freed")
    base = freed - 4 * HDR - 3 * 16  # three 16-byte nodes, then the 64-byte scratch buffer
    out = mdbpy(bump, live, "::bumpstat; ::walk bump_buf")
    assert out[:2] == [f"arena {arena:x}: [{base:x}, {base + (1 << 20):x}), 320 bytes used",
                       "allocs 5, frees 1; walked 5 buffers, 4 in use"]
    nodes = [base + HDR + i * (HDR + 16) for i in range(3)]
    assert nodes[2] == head
    assert out[2:] == [f"0x{a:x}" for a in (*nodes, leak)]


@pytest.mark.parametrize("live", [True, False], ids=["live", "core"])
def test_findleaks_and_whatis_through_the_module(bump, live):
    r, _exe, _core, arena = bump
    head, leak = r.addr("head"), r.addr("leak")
    out = mdbpy(bump, live, f"::findleaks; {leak:x}::whatis -q; {head:x}::whyalive")
    assert out[0].split() == ["CACHE", "LEAKED", "BUFCTL", "CALLER"]
    cache, count, bufctl, caller = out[1].split()
    assert (int(cache, 16), count, int(bufctl, 16)) == (arena, "1", leak - HDR)
    assert re.fullmatch(r"make_leak\+0x[0-9a-f]+", caller)
    assert out[3].split() == ["Total", "1", "buffer,", "48", "bytes"]
    assert out[4] == f"{leak:x} is header {leak - HDR:x} allocated from bump"
    assert out[5:] == [f"{head:x} is allocated from bump, reachable through:",
                       f"    list_head (bumpalloc data)               -> {head:x} (bump)"]
