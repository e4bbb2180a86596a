"""Heuristic mode equals symbol mode: the same process and its core looked at with libc's
debug file (main_arena, mp_ and the tcache from symbols) and without it, as most users have
it (the system debug directories hidden and a fresh symbol cache, so nothing remembers the
symbols), must give the same documents: ::arenas, ::heaps, ::malloc_chunks, every bin,
::findleaks, ::heap_stats in JSON; ::ptmalloc, ::mp_, ::mallinfo, ::malloc_stats and
::ptmalloc_verify in text. Each program is healthy: its verify is clean, ::mallinfo is its own
mallinfo2(3), ::findleaks reports exactly the planted leaks, and mdbpy warns of nothing.

The programs are the heap shapes that broke the heuristics (fixtures/glibc_shapes.c): a
forked child whose brk heap grew after the fork (two adjacent mappings), 16 threads with an
arena each, a foreign sbrk user (the main heap in two runs of chunks around the foreign
block); and glibc_heap's leaks mode (every kind of free list, mmapped chunks). The same
comparison runs on other glibc releases in tests/test_ptmalloc_versions.py.
"""

from __future__ import annotations

import io
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from support import Running, compile_fixture, gcore, proc_maps, run_mdbpy, start_fixture
from test_ptmalloc_heap import FLAGS, MALLINFO

from mdbpy.session import Session
from mdbpy.target.core import open_file_target

KINDS = ("live", "core")
MODES = ("symbols", "heuristic")
SHAPES = ("fork", "threads", "sbrk")
JSON_COMMANDS = ("::arenas", "::heaps", "::malloc_chunks", "::tcachebins", "::fastbins",
                 "::unsortedbin", "::smallbins", "::largebins", "::findleaks -d",
                 "::heap_stats")
TEXT_COMMANDS = ("::ptmalloc", "::mp_", "::mallinfo", "::malloc_stats", "::ptmalloc_verify")
# how a part was found: the only thing the two modes may print differently
HOW = re.compile(r"locate mode \w+|\((symbols|heuristic|TLS slot|TLS scan|first chunk)\)")


@dataclass
class Seen:
    """What one session printed: each command's output, and its stderr."""

    out: dict[str, str] = field(default_factory=dict)
    err: str = ""

    def json(self, cmd: str) -> dict:
        (doc,) = [json.loads(line) for line in self.out[cmd].splitlines()
                  if line.startswith("{")]
        return doc

    def leaks(self) -> set[int]:
        """The buffers ::findleaks reported."""
        return {m for g in self.json("::findleaks -d")["leaks"] for m in g["members"]}

    def mallinfo(self) -> dict[str, int]:
        return {k.strip(): int(v) for k, v in (line.split(" = ") for line in
                                               self.out["::mallinfo"].splitlines())}

    def normalised(self) -> dict[str, str]:
        """The outputs with how each part was found left out."""
        return {cmd: HOW.sub("", text) for cmd, text in self.out.items()}


MARK = "@@@"  # ::echo'd before each command, to split the CLI's output per command


def look(pid: int, core: Path, kind: str, mode: str, cache_dir: Path,
         debug_dirs=None) -> Seen:
    """Every compared command run by the mdbpy CLI on the live process or its core, in
    symbol mode (libc's debug file in debug_dirs, else the system's) or in heuristic mode
    (auto, with libc's debug file out of sight as on a machine without libc6-dbg: no system
    debug directory, and a symbol cache of its own, since one filled with symbols would
    still name main_arena). A CLI of its own, as a user runs it: a core of 16 thread heaps
    maps a GiB, which would stay in this process's peak RSS (and in that of every program it
    starts after: ru_maxrss keeps the pre-exec image's, as test_ptmalloc_stream measures)."""
    if mode == "heuristic":
        env = {"MDBPY_SYSTEM_DEBUG_DIRS": "", "MDBPY_CACHE_DIR": str(cache_dir),
               "MDBPY_PTMALLOC_LOCATE": "auto"}
    else:
        dirs = [*(debug_dirs or ()), *os.environ.get("MDBPY_SYSTEM_DEBUG_DIRS",
                                                     "/usr/lib/debug").split(":")]
        env = {"MDBPY_SYSTEM_DEBUG_DIRS": ":".join(d for d in dirs if d),
               "MDBPY_PTMALLOC_LOCATE": "symbols"}
    cmds = TEXT_COMMANDS + JSON_COMMANDS
    script = "; ".join(f"::echo {MARK} {i}; {cmd}" for i, cmd in enumerate(cmds))
    target = ("-p", pid) if kind == "live" else (core,)
    r = run_mdbpy("-S", "--json", *target, "-e", script, env=env)
    parts = r.stdout.split(f"{MARK} ")[1:]
    assert len(parts) == len(cmds), r.stdout + r.stderr
    return Seen({cmd: part.split("\n", 1)[1] for cmd, part in zip(cmds, parts)}, r.stderr)


@dataclass
class Program:
    """A healthy program in its state, seen in each kind and mode: kind -> mode -> Seen."""

    name: str
    info: dict
    leaks: set[int]  # the planted leaks, as buffer addresses
    maps: list  # its /proc/PID/maps when seen (support.proc_maps)
    seen: dict = field(default_factory=dict)


def look_all(prog: Program, pid: int, core: Path, cache_dir: Path, debug_dirs=None,
             kinds=KINDS) -> Program:
    for kind in kinds:
        prog.seen[kind] = {mode: look(pid, core, kind, mode, cache_dir, debug_dirs)
                           for mode in MODES}
    return prog


def planted(name: str, r: Running) -> set[int]:
    """The buffers a fixture leaked on purpose: glibc_heap's (see test_ptmalloc_heap), or
    glibc_shapes' leak0, leak1, ... chunks."""
    if name == "heap":
        want = {r.addr("leak_string"), r.addr("leak_cycle_a"), r.addr("leak_cycle_b"),
                r.addr("leak_widget"), r.addr("thread_leak"), r.addr("leak_mmapped") + 16}
        # make_list allocates from the tail: the head is the highest of the three
        return want | {r.addr("leak_list") - 0x30 * k for k in range(3)}
    return {int(v, 16) + 16 for k, v in r.info.items() if re.fullmatch(r"leak\d+", k)}


def run_program(exe: Path, name: str, out_dir: Path, cache_dir: Path, loader=(),
                debug_dirs=None, kinds=KINDS) -> Program:
    """Start fixture `name` (glibc_shapes' modes, or "heap": glibc_heap's leaks mode; through
    `loader`, an argv prefix, when given), look at it and at its gcore core in both modes,
    then kill it."""
    args = ("leaks",) if name == "heap" else (name,)
    r = start_fixture(*loader, exe, *args)
    try:
        pid = int(r.info.get("pid", r.pid))  # the fork child names itself
        core = gcore(pid, out_dir / f"modes-{exe.name}-{name}")
        try:
            prog = Program(name, dict(r.info), planted(name, r), proc_maps(pid))
            return look_all(prog, pid, core, cache_dir, debug_dirs, kinds)
        finally:
            core.unlink()
    finally:
        r.stop()


def assert_modes_agree(prog: Program, kind: str) -> None:
    sym, heur = prog.seen[kind]["symbols"], prog.seen[kind]["heuristic"]
    lines = heur.out["::ptmalloc"].splitlines()
    assert "(heuristic)" in lines[1] and "(heuristic)" in lines[2], lines
    assert "(symbols)" in sym.out["::ptmalloc"].splitlines()[2]
    a, b = sym.normalised(), heur.normalised()
    for cmd in TEXT_COMMANDS + JSON_COMMANDS:
        assert b[cmd] == a[cmd], f"{prog.name} {kind}: {cmd} differs without symbols"


def assert_healthy(prog: Program, kind: str, mode: str) -> None:
    seen = prog.seen[kind][mode]
    assert seen.err == "", seen.err
    assert seen.out["::ptmalloc_verify"] == "ptmalloc: heap clean\n"
    assert seen.mallinfo() == {k: int(prog.info[k]) for k in MALLINFO}
    got = seen.leaks()
    assert got == prog.leaks, (f"reported, not planted: {sorted(map(hex, got - prog.leaks))}; "
                               f"planted, not reported: {sorted(map(hex, prog.leaks - got))}")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("modes-cache")


@pytest.fixture(scope="module", params=SHAPES + ("heap",))
def program(request, build_dir, cache_dir) -> Program:
    name = request.param
    src = "glibc_heap" if name == "heap" else "glibc_shapes"
    exe = compile_fixture(src, build_dir, flags=FLAGS, out_name=f"{src}-modes")
    return run_program(exe, name, build_dir, cache_dir)


@pytest.mark.parametrize("kind", KINDS)
def test_heuristic_mode_equals_symbol_mode(program, kind):
    assert_modes_agree(program, kind)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", MODES)
def test_healthy_heap_is_seen_exactly(program, kind, mode):
    assert_healthy(program, kind, mode)


def test_shapes_are_what_they_claim(program):
    """The fixture built the shape under test: a main heap over two mappings, 17 arenas,
    a main heap in two runs of chunks around the foreign block."""
    seen = program.seen["live"]["symbols"]
    main = seen.json("::heaps")["heaps"][0]
    if program.name == "fork":
        assert len([m for m in program.maps if main["start"] < m[1] and
                    m[0] < main["end"]]) == 2, program.maps
    if program.name == "threads":
        assert len(seen.json("::arenas")["arenas"]) == 17
    if program.name == "sbrk":
        chunks = seen.json("::malloc_chunks")["chunks"]
        inside = [c for c in chunks if main["start"] <= c["addr"] < main["end"]]
        gaps = [(a["addr"] + a["size"], b["addr"]) for a, b in zip(inside, inside[1:])
                if a["addr"] + a["size"] != b["addr"]]
        assert len(gaps) == 1 and 70004 <= gaps[0][1] - gaps[0][0] < 70004 + 64, gaps


def _patch_core(core: Path, out: Path, addr: int, data: bytes) -> Path:
    """A copy of core with data written at virtual address addr (inside one PT_LOAD)."""
    from elftools.elf.elffile import ELFFile

    raw = bytearray(core.read_bytes())
    with core.open("rb") as f:
        for seg in ELFFile(f).iter_segments("PT_LOAD"):
            if seg["p_vaddr"] <= addr and addr + len(data) <= seg["p_vaddr"] + seg["p_filesz"]:
                at = seg["p_offset"] + addr - seg["p_vaddr"]
                raw[at:at + len(data)] = data
                out.write_bytes(raw)
                return out
    raise AssertionError(f"0x{addr:x} is in no PT_LOAD of {core}")


def test_what_is_not_found_is_said_once(build_dir, cache_dir, tmp_path):
    """mp_ bent past recognition in a copy of a core (a tcache_count no uint16 count can
    reach): the heuristics find no malloc_par, and one line says so and what is therefore
    not checked; the heap is still found, walked and verified clean, its leaks exact."""
    exe = compile_fixture("glibc_shapes", build_dir, flags=FLAGS, out_name="glibc_shapes-modes")
    r = start_fixture(exe, "sbrk")
    try:
        core = gcore(r.pid, tmp_path / "sbrk")
        want = planted("sbrk", r)
    finally:
        r.stop()
    s = Session(open_file_target(str(core)), out=io.StringIO(), err=io.StringIO())
    try:
        from mdbpy_commands.ptmalloc.locate import locate

        st = locate(s)
        at = st.mp.addr + st.structs["malloc_par"].offset("tcache_count")
    finally:
        s.close()
    bent = _patch_core(core, tmp_path / "bent", at, (1 << 20).to_bytes(8, "little"))
    seen = look(r.pid, bent, "core", "heuristic", cache_dir)
    assert seen.err.splitlines() == [
        "mdbpy: ptmalloc: mp_ not found (no malloc_par in libc's data has sane counters and a "
        "heap's sbrk_base): the main heap starts at its top's mapping, and the mmapped chunks "
        "and tcache counts are not checked against glibc's counters",
        # ::mp_'s own answer (an error: it has nothing to print)
        "mdbpy: ptmalloc: mp_ was not found (no symbols, and no unique candidate)"]
    assert seen.out["::ptmalloc_verify"] == "ptmalloc: heap clean\n"
    assert seen.leaks() == want

