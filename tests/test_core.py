"""Core files and object files as targets: cores from gdb's gcore and from the kernel, checked
against the live process they came from and against gdb; --sysroot; build-id checks; files
that are not cores; and hostile cores (truncated, bit-flipped, absurd sizes) that must give a
one-line error or a usable partial target, never anything else."""

from __future__ import annotations

import os
import re
import resource
import shutil
import signal
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import BASIC_NODES, basic_list, compile_fixture, read_line, run_mdbpy

from mdbpy.errors import MdbError, ReadError
from mdbpy.target import elfcore as ec
from mdbpy.target.base import Mapping, Thread
from mdbpy.target.core import RESIDENT_UNIT, CoreTarget, FileTarget, open_file_target
from mdbpy.target.gcore import write_core
from mdbpy.target.synthetic import SyntheticTarget

CRASH_C = "int main(void) { *(volatile int *)0x1234 = 1; return 0; }\n"


# -- helpers --------------------------------------------------------------------------------
def _core_name(pid: int, exe: Path) -> str:
    """The file name the kernel gives a core in the crashing process's cwd."""
    pattern = Path("/proc/sys/kernel/core_pattern").read_text().strip()
    if pattern.startswith("|") or "/" in pattern or re.search(r"%[^pe%]", pattern):
        pytest.skip(f"core_pattern {pattern!r} does not write a core in the cwd")
    name = pattern.replace("%p", str(pid)).replace("%e", exe.name[:15]).replace("%%", "%")
    if "%p" not in pattern and Path("/proc/sys/kernel/core_uses_pid").read_text().strip() == "1":
        name += f".{pid}"
    return name


def _unlimited_core():
    resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))


def kernel_core(exe: Path, workdir: Path, ready: bool = True) -> dict:
    """Run exe in workdir with cores enabled; when it is READY, record its maps and threads
    and kill it with SIGABRT (else let it crash by itself). Returns the facts and the core."""
    proc = subprocess.Popen([str(exe)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, cwd=workdir, preexec_fn=_unlimited_core)
    facts = {"pid": proc.pid}
    try:
        if ready:
            facts["info"] = dict(re.findall(r"(\w+)=(\S+)", read_line(proc, 20)))
            facts["maps"] = Path(f"/proc/{proc.pid}/maps").read_text()
            facts["tids"] = sorted(int(t) for t in os.listdir(f"/proc/{proc.pid}/task"))
            os.kill(proc.pid, signal.SIGABRT)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    core = workdir / _core_name(proc.pid, exe)
    assert core.exists(), f"no core written ({os.listdir(workdir)})"
    facts["core"] = core
    return facts


def nm(exe: Path) -> dict[str, int]:
    out = subprocess.run(["nm", str(exe)], capture_output=True, text=True, check=True).stdout
    return {p[2]: int(p[0], 16) for p in (line.split() for line in out.splitlines())
            if len(p) == 3}


def file_offset(exe: Path, vaddr: int) -> int:
    """The file offset of a link-time address, from the file's own PT_LOADs."""
    data = exe.read_bytes()
    eh = ec.parse_ehdr(data)
    for ph in ec.parse_phdrs(data[eh.phoff:], eh.phnum):
        if ph.type == ec.PT_LOAD and ph.vaddr <= vaddr < ph.vaddr + ph.filesz:
            return ph.offset + vaddr - ph.vaddr
    raise AssertionError(f"0x{vaddr:x} not in a PT_LOAD of {exe}")


def exe_base(t, exe: Path) -> int:
    return min(m.start for m in t.mappings() if m.path == str(exe))


def gdb_threads(exe: Path, core: Path) -> dict[int, tuple[int, int]]:
    """{lwp: (rip, rsp)} as gdb reads the same core."""
    out = subprocess.run(["gdb", "-batch", "-nx", str(exe), str(core), "-ex", "info threads",
                          "-ex", "thread apply all info registers rip rsp"],
                         capture_output=True, text=True, timeout=120).stdout
    regs: dict[int, tuple[int, int]] = {}
    for block in re.split(r"\nThread \d+ ", out)[1:]:
        lwp = int(re.search(r"\(LWP (\d+)\)", block).group(1))
        rip = int(re.search(r"^rip\s+(0x[0-9a-f]+)", block, re.M).group(1), 16)
        rsp = int(re.search(r"^rsp\s+(0x[0-9a-f]+)", block, re.M).group(1), 16)
        regs[lwp] = (rip, rsp)
    return regs





def file_maps(maps_text: str) -> set[tuple[int, int, int, str]]:
    out = set()
    for line in maps_text.splitlines():
        parts = line.split(None, 5)
        if len(parts) == 6 and parts[5].startswith("/"):
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            out.add((lo, hi, int(parts[2], 16), parts[5]))
    return out


# -- fixtures -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def kcore(basic_exe, tmp_path_factory):
    return kernel_core(basic_exe, tmp_path_factory.mktemp("kcore"))


@pytest.fixture(scope="module")
def crash_core(tmp_path_factory):
    d = tmp_path_factory.mktemp("crash")
    (d / "crash.c").write_text(CRASH_C)
    subprocess.run(["gcc", "-O0", "-o", str(d / "crash"), str(d / "crash.c")], check=True)
    return kernel_core(d / "crash", d, ready=False)


@pytest.fixture(scope="module")
def small_core(tmp_path_factory) -> bytes:
    """A few-KB core written from synthetic bytes: every structure, little data (for fuzzing)."""
    regs = {r: 0x1000 + i for i, r in enumerate(ec.X86_64_REGS)}
    segs = [(Mapping(0x400000, 0x401000, "r-xp", 0, path="/bin/true"), b"\x7fELF" + bytes(60)),
            (0x600000, bytes(range(256)) * 16, "rw-p"),
            (0x7ff000, b"s" * 4096, "rw-p")]
    t = SyntheticTarget(segs, threads=[Thread(7, regs=regs), Thread(8, regs=regs)],
                        auxv={ec.AT_PHDR: 0x400040, 6: 4096})
    path = tmp_path_factory.mktemp("small") / "core"
    write_core(t, str(path))
    return path.read_bytes()


# -- cores from gdb's gcore -----------------------------------------------------------------
def test_gdb_core_threads_registers_and_memory(basic_exe, basic_gcore):
    info, core = basic_gcore
    with open_file_target(str(core)) as t:
        assert isinstance(t, CoreTarget) and t.kind == "core"
        assert t.pid == int(info["pid"])
        assert t.warnings == []
        threads = t.threads()
        assert len(threads) == 4 and threads[0].tid == t.pid
        assert {th.tid: (th.regs["rip"], th.regs["rsp"]) for th in threads} == \
            gdb_threads(basic_exe, core)
        assert basic_list(t, int(info["list_head"], 16)) == BASIC_NODES
        syms = nm(basic_exe)
        base = exe_base(t, basic_exe)
        assert t.read(base + syms["global_int"], 4) == struct.pack("<i", 0x1234)
        assert t.read(base + syms["global_str"], 13) == b"hello, mdbpy\0"
        assert t.exe_path() == str(basic_exe)
        assert t.status_lines() == [
            f"debugging core file of basic (64-bit) from {core}", f"file: {basic_exe}",
            f"initial argv: {basic_exe}", "threading model: native threads",
            "status: process core file generated with gcore(1)"]


def test_gdb_core_text_comes_from_the_file(basic_exe, basic_gcore):
    """gdb writes no PT_LOAD for unmodified text; those pages are read from the executable."""
    _, core = basic_gcore
    with open_file_target(str(core)) as t:
        syms = nm(basic_exe)
        text = next(m for m in t.mappings() if m.path == str(basic_exe) and m.executable)
        assert text.perms == "r-xp" and text.offset == 0x1000
        got = t.read(exe_base(t, basic_exe) + syms["main"], 64)
        off = file_offset(basic_exe, syms["main"])
        assert got == basic_exe.read_bytes()[off:off + 64]


# -- cores from the kernel ------------------------------------------------------------------
def test_kernel_core_matches_the_process(basic_exe, kcore):
    with open_file_target(str(kcore["core"])) as t:
        assert t.warnings == []
        assert t.pid == kcore["pid"]
        assert sorted(th.tid for th in t.threads()) == kcore["tids"]
        assert all(th.state == "SIGABRT" for th in t.threads())
        assert {th.tid: (th.regs["rip"], th.regs["rsp"]) for th in t.threads()} == \
            gdb_threads(basic_exe, kcore["core"])
        got = {(m.start, m.end, m.offset, m.path) for m in t.mappings() if m.is_file}
        assert got == file_maps(kcore["maps"])
        assert [f.path for f in t.files if f.path == str(basic_exe)] == [str(basic_exe)] * 5
        assert basic_list(t, int(kcore["info"]["list_head"], 16)) == BASIC_NODES
        assert t.auxv()[ec.AT_PHDR] == exe_base(t, basic_exe) + 64
        assert t.status_lines() == [
            f"debugging core file of basic (64-bit) from {kcore['core']}",
            f"file: {basic_exe}", f"initial argv: {basic_exe}",
            "threading model: native threads", "status: process terminated by SIGABRT (Aborted)"]


def test_kernel_core_text_pages_are_read_from_disk(basic_exe, kcore):
    """The kernel dumps only the ELF header page of the text's file; the rest of the text is
    read from the executable after its build-id matched the one in that header page."""
    core = kcore["core"]
    raw = core.read_bytes()
    eh = ec.parse_ehdr(raw)
    loads = {p.vaddr: p for p in ec.parse_phdrs(raw[eh.phoff:], eh.phnum) if p.type == ec.PT_LOAD}
    with open_file_target(str(core)) as t:
        base = exe_base(t, basic_exe)
        syms = nm(basic_exe)
        text = next(m for m in t.mappings() if m.path == str(basic_exe) and m.executable)
        assert loads[text.start].filesz == 0 and loads[base].filesz == ec.PAGE
        off = file_offset(basic_exe, syms["main"])
        assert t.read(base + syms["main"], 64) == basic_exe.read_bytes()[off:off + 64]


def test_fault_status_has_the_address(crash_core):
    t = open_file_target(str(crash_core["core"]))
    with t:
        assert t.status_lines()[-1] == \
            "status: process terminated by SIGSEGV (Segmentation fault), addr=1234"
        assert t.siginfo.signo == signal.SIGSEGV and t.siginfo.addr == 0x1234


def test_sysroot_and_build_id_mismatch(tmp_path):
    """A core from elsewhere: its files are found under --sysroot (proved by a byte changed in
    the sysroot's libc text); a different binary at the executable's path is refused."""
    build = tmp_path / "build"
    build.mkdir()
    exe = compile_fixture("basic", build)
    facts = kernel_core(exe, tmp_path)
    core = str(facts["core"])
    root = tmp_path / "root"
    with open_file_target(core) as t:
        libc = next(m.path for m in t.mappings() if "/libc.so" in m.path)
        libc_text = next(m for m in t.mappings() if m.path == libc and m.executable)
    for f in {m.path for m in t.mappings() if m.path.startswith("/")}:
        (root / f.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, root / f.lstrip("/"))
    patched = bytearray((root / libc.lstrip("/")).read_bytes())
    patched[libc_text.offset + 16] ^= 0xFF
    (root / libc.lstrip("/")).write_bytes(patched)
    os.rename(exe, str(exe) + ".moved")
    syms = nm(root / str(exe).lstrip("/"))

    with open_file_target(core) as t:  # the executable is gone from its recorded path
        assert t.warnings == [f"{exe}: No such file or directory; its pages not in the core "
                              f"are unreadable"]
        with pytest.raises(ReadError, match="not in core file"):
            t.read(exe_base(t, exe) + syms["main"], 4)
    with open_file_target(core, sysroot=str(root)) as t:
        assert t.warnings == []
        assert t.exe_path() == str(root / str(exe).lstrip("/"))
        assert t.file_path(libc) == str(root / libc.lstrip("/"))
        assert t.read(libc_text.start + 16, 1)[0] == patched[libc_text.offset + 16]
        assert basic_list(t, int(facts["info"]["list_head"], 16)) == BASIC_NODES
        moved = Path(str(exe) + ".moved")
        off = file_offset(moved, syms["main"])
        assert t.read(exe_base(t, exe) + syms["main"], 8) == moved.read_bytes()[off:off + 8]

    r = run_mdbpy(core, "-e", "::status")  # the CLI passes the warnings on
    assert r.stderr == f"mdbpy: {exe}: No such file or directory; its pages not in the core " \
        "are unreadable\n"
    r = run_mdbpy("--sysroot", root, core, "-e", "::status")
    assert (r.returncode, r.stderr) == (0, "")
    assert f"file: {root / str(exe).lstrip('/')}" in r.stdout.splitlines()

    other = compile_fixture("basic", build, flags=("-O1",), out_name="basic")  # new build-id
    with open_file_target(core) as t:
        (msg,) = t.warnings
        assert msg.startswith(f"{other}: build-id ") and "does not match the core's" in msg
        with pytest.raises(ReadError, match="not in core file"):
            t.read(exe_base(t, exe) + syms["main"], 4)
        data = next(m for m in t.mappings() if m.path == str(exe) and m.writable)
        assert t.read(data.start, 8)  # what the core holds still reads
        assert basic_list(t, int(facts["info"]["list_head"], 16)) == BASIC_NODES


def test_exe_argument_names_the_executable(basic_exe, basic_gcore, tmp_path):
    _, core = basic_gcore
    copy = tmp_path / "prog"
    shutil.copy(basic_exe, copy)
    with open_file_target(str(core), exe=str(copy)) as t:
        assert t.exe_path() == str(copy)
        assert t.file_path(str(basic_exe)) == str(copy)
        assert t.status_lines()[1] == f"file: {copy}"


# -- object files ---------------------------------------------------------------------------
def test_file_target_reads_segments(basic_exe):
    with open_file_target(str(basic_exe)) as t:
        assert isinstance(t, FileTarget) and t.kind == "file" and t.threads() == []
        syms = nm(basic_exe)
        assert t.read(syms["global_int"], 4) == struct.pack("<i", 0x1234)
        off = file_offset(basic_exe, syms["main"])
        assert t.read(syms["main"], 32) == basic_exe.read_bytes()[off:off + 32]
        assert t.read(syms["global_bss"], 16) == bytes(16)  # bss reads as zeros
        assert all(m.path == str(basic_exe) for m in t.mappings())
        assert [m.perms for m in t.mappings()] == ["r--p", "r-xp", "r--p", "rw-p"]
        assert t.status_lines() == ["debugging object file (64-bit)",
                                    f"executable file: {basic_exe}", "status: idle"]
        with pytest.raises(MdbError, match="read-only"):
            t.write(syms["global_int"], b"\0")


def test_cli_reads_an_executable_alone(basic_exe):
    r = run_mdbpy(basic_exe, "-e", "main/4X")
    off = file_offset(basic_exe, nm(basic_exe)["main"])
    words = struct.unpack("<4I", basic_exe.read_bytes()[off:off + 16])
    assert r.returncode == 0 and r.stderr == ""
    assert r.stdout.split()[-4:] == [f"{w:x}" for w in words]


def _patched(src: Path, dst: Path, offset: int, data: bytes) -> str:
    raw = bytearray(src.read_bytes())
    raw[offset:offset + len(data)] = data
    dst.write_bytes(raw)
    return str(dst)


def test_open_errors_are_one_line(basic_exe, basic_gcore, tmp_path):
    (tmp_path / "text").write_text("this is not an ELF file\n" * 10)
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "o.c").write_text("int x;\n")
    subprocess.run(["gcc", "-c", "-o", str(tmp_path / "o.o"), str(tmp_path / "o.c")], check=True)
    cases = {
        str(tmp_path / "nope"): f"cannot open {tmp_path / 'nope'}: No such file or directory",
        str(tmp_path): f"cannot open {tmp_path}: Is a directory",
        str(tmp_path / "text"): f"{tmp_path / 'text'}: not an ELF file",
        str(tmp_path / "empty"): f"{tmp_path / 'empty'}: not an ELF file (only 0 bytes)",
        _patched(basic_exe, tmp_path / "elf32", 4, b"\x01"):
            f"{tmp_path / 'elf32'}: not a 64-bit ELF file (only ELF64 is supported)",
        _patched(basic_exe, tmp_path / "arm", 18, struct.pack("<H", 183)):
            f"{tmp_path / 'arm'}: ELF machine 183 is not x86_64",
        str(tmp_path / "o.o"):
            f"{tmp_path / 'o.o'}: ELF type 1 is neither an executable nor a core file",
    }
    for path, msg in cases.items():
        with pytest.raises(MdbError) as e:
            open_file_target(path)
        assert str(e.value) == msg
    with pytest.raises(MdbError, match=r"^.*basic: not a core file$"):
        open_file_target(str(basic_exe), exe=str(basic_exe))
    with pytest.raises(MdbError, match="truncated: program headers"):
        open_file_target(_truncated(basic_gcore[1], tmp_path / "short", 100))


def test_cli_reports_a_bad_file(tmp_path):
    r = run_mdbpy(tmp_path / "missing", "-e", "::status")
    assert r.returncode == 1
    assert r.stderr == f"mdbpy: cannot open {tmp_path / 'missing'}: No such file or directory\n"


# -- hostile cores --------------------------------------------------------------------------
def _truncated(src: Path, dst: Path, size: int) -> str:
    with open(src, "rb") as f:
        dst.write_bytes(f.read(size))
    return str(dst)


def exercise(path: str) -> None:
    """Open a core and use every part of it: only MdbError may escape, and only one line."""
    try:
        t = open_file_target(path)
    except MdbError as e:
        assert "\n" not in str(e) and str(e)
        return
    with t:
        t.threads(), t.auxv(), t.exe_path(), t.status_lines()
        assert all("\n" not in w for w in t.warnings)
        for m in t.mappings()[:64]:
            for addr in (m.start, max(m.start, m.end - 16)):
                try:
                    t.read(addr, 16)
                except ReadError:
                    pass


def test_truncated_real_core_at_many_points(basic_gcore, tmp_path):
    _, core = basic_gcore
    size = core.stat().st_size
    raw = core.read_bytes()
    eh = ec.parse_ehdr(raw)
    note = next(p for p in ec.parse_phdrs(raw[eh.phoff:], eh.phnum) if p.type == ec.PT_NOTE)
    points = [0, 10, 63, 64, 65, 64 + 56 * 3 + 7, 0x5b8, 0x2000, 0x30000, 1 << 20,
              note.offset + 20, note.offset + note.filesz // 2, size - 1]
    for n in points:
        exercise(_truncated(core, tmp_path / "t", n))
    # cut inside the memory: a usable target whose missing tail says so
    with open_file_target(_truncated(core, tmp_path / "t", 1 << 20)) as t:
        assert any("is truncated" in w for w in t.warnings)


def test_writable_core_changes_the_file(small_core, tmp_path):
    (tmp_path / "c").write_bytes(small_core)
    with open_file_target(str(tmp_path / "c")) as t:
        with pytest.raises(MdbError, match="read-only"):
            t.write(0x600000, b"x")
    with open_file_target(str(tmp_path / "c"), writable=True) as t:
        t.write(0x600ff0, b"abcd")
        with pytest.raises(MdbError, match="no mapping"):
            t.write(0x600ffe, b"abcd")  # runs off the segment: nothing is written
    with open_file_target(str(tmp_path / "c")) as t:
        assert t.read(0x600fee, 8) == bytes([0xee, 0xef]) + b"abcd" + bytes([0xf4, 0xf5])
        assert t.read(0x600ffe, 2) == bytes([0xfe, 0xff])


def test_truncated_core_reads_report_truncation(small_core, tmp_path):
    (tmp_path / "c").write_bytes(small_core[:-100])
    with open_file_target(str(tmp_path / "c")) as t:
        assert len(t.threads()) == 2
        with pytest.raises(ReadError, match="core file is truncated"):
            t.read(0x7ff000 + 0x1000 - 16, 16)


def test_read_rows_agrees_with_read(small_core, tmp_path):
    """The vectorized row reads (Target.read_rows, what findleaks gathers its records with)
    give read()'s bytes for every row inside one segment's image, and refuse the rest: rows
    before the first segment, in holes, across two segments, or past a truncated image; the
    page path (mdbpy.heap.gather.Gather.rows) then reads what can be read."""
    import numpy as np

    from mdbpy.heap.gather import Gather
    from mdbpy.memory import AddressSpace

    (tmp_path / "c").write_bytes(small_core[:-100])  # the stack segment loses its last 100
    addrs = [0x400000, 0x400030, 0x600000, 0x600123, 0x600ff0, 0x7ff000, 0x7ff000 + 4096 - 116,
             0x7ff000 + 4096 - 110, 0x3ffff8, 0x500000, 0x600ffc, 0x7ff000 + 4096 - 8,
             0x400ff8]
    with open_file_target(str(tmp_path / "c")) as t:
        rows, ok = t.read_rows(np.array(addrs, np.uint64), 16)
        assert ok.tolist() == [True] * 7 + [False] * 6
        for a, row, good in zip(addrs, rows, ok):
            assert row.tobytes() == (t.read(a, 16) if good else bytes(16))
        rows, ok = Gather(AddressSpace(t)).rows(addrs, 16)
        readable = []
        for a in addrs:
            try:
                readable.append(t.read(a, 16))
            except ReadError:
                readable.append(None)
        assert ok.tolist() == [r is not None for r in readable]
        assert [row.tobytes() for row in rows] == [r or bytes(16) for r in readable]
    t.close()  # the mmap closes: no view of it outlived the calls


def test_mapped_blocks_are_the_image_in_place(small_core, tmp_path):
    """Target.mapped (what findleaks scans a core's heap through) lends the image's bytes
    without a copy, only for a range one segment's image holds; its pages are dropped after
    the block and read back unchanged, and the file can still be closed."""
    (tmp_path / "c").write_bytes(small_core[:-100])
    t = open_file_target(str(tmp_path / "c"))
    with t.mapped(0x600010, 0xff0) as view:
        assert isinstance(view, memoryview) and view.readonly
        assert bytes(view) == t.read(0x600010, 0xff0)
    with pytest.raises(ValueError):  # released when the block ended
        bytes(view)
    assert t.read(0x600000, 4096) == bytes(range(256)) * 16
    for addr, size in ((0x600ff0, 0x20), (0x7ff000, 4096), (0x500000, 8), (0x3ff000, 0x2000)):
        with t.mapped(addr, size) as view:  # across a hole, truncated, unmapped, from before
            assert view is None
    t.close()


def mapped_rss(path) -> int:
    """Bytes of the file at path that this process has mapped in memory (/proc/self/smaps)."""
    rss, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if re.match(r"[0-9a-f]+-[0-9a-f]+ ", line):
            inside = line.endswith(" " + str(path))
        elif inside and line.startswith("Rss:"):
            rss += int(line.split()[1]) << 10
    return rss


def test_mapped_blocks_stay_resident_within_the_budget(tmp_path):
    """A lent block's pages stay mapped after it ends while the blocks kept fit in the target's
    resident_budget (a block lent again is counted once); past it they are dropped, so a scan
    of a core larger than the budget holds at most the budget in RSS."""
    block = RESIDENT_UNIT  # what the budget counts in; the kernel's fault-around never crosses one
    segs = [(0x10000000, bytes(range(256)) * (8 * block // 256), "rw-p")]
    write_core(SyntheticTarget(segs, threads=[Thread(7, regs={})]), str(tmp_path / "c"))
    t = open_file_target(str(tmp_path / "c"))
    seg = t._segs[0]
    first = seg.start + 2 * block - seg.off % block  # block-aligned in the file, past the headers
    t.resident_budget = 2 * block
    before = mapped_rss(tmp_path / "c")
    for k in (0, 1, 0, 2, 3, 1):
        with t.mapped(first + k * block, block) as view:
            assert bytes(view) == bytes(range(256)) * (block // 256)
    assert mapped_rss(tmp_path / "c") - before == 2 * block  # blocks 0 and 1, not 2 and 3
    t.close()


def test_warm_maps_ranges_in_the_background_within_the_budget(tmp_path):
    """warm() maps a range's pages in a thread, so the scan after it finds them mapped; a
    range that would pass the resident budget is left alone, one outside every image is
    ignored, and close() waits for the thread."""
    block = RESIDENT_UNIT
    segs = [(0x10000000, bytes(range(256)) * (8 * block // 256), "rw-p")]
    write_core(SyntheticTarget(segs, threads=[Thread(7, regs={})]), str(tmp_path / "c"))
    t = open_file_target(str(tmp_path / "c"))
    seg = t._segs[0]
    first = seg.start + 2 * block - seg.off % block
    t.resident_budget = 3 * block
    before = mapped_rss(tmp_path / "c")
    t.warm([(first + block, first + 3 * block), (0x500000, 0x600000)])
    t._warming.join()
    assert mapped_rss(tmp_path / "c") - before == 2 * block
    warming = t._warming
    t.warm([(first + 3 * block, first + 5 * block)])  # 2 more would make 4: over the budget
    assert t._warming is warming  # nothing to map: no new thread
    assert mapped_rss(tmp_path / "c") - before == 2 * block
    with t.mapped(first + block, block) as view:  # kept: counted once
        assert bytes(view[:4]) == bytes(range(4))
    assert mapped_rss(tmp_path / "c") - before == 2 * block
    t.close()
    t = open_file_target(str(tmp_path / "c"))
    t.warm([(seg.start, seg.end)])
    t.close()  # joins the thread, whatever it had done


def test_warm_reads_ahead_only_what_the_page_cache_lacks(tmp_path, monkeypatch):
    """Before faulting a step in, warm() asks the disk for it in one request
    (POSIX_FADV_WILLNEED) unless a probe that never waits finds its first and last pages
    cached: a cached core costs no read-ahead, a cold one is not read a fault at a time."""
    segs = [(0x10000000, bytes(range(256)) * (8 * RESIDENT_UNIT // 256), "rw-p")]
    write_core(SyntheticTarget(segs, threads=[Thread(7, regs={})]), str(tmp_path / "c"))
    (tmp_path / "c").read_bytes()  # every page cached
    t = open_file_target(str(tmp_path / "c"))
    asked = []
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, off, n, how: asked.append((off, n, how)))
    seg = t._segs[0]
    t._read_ahead(seg.off, RESIDENT_UNIT)
    assert asked == []

    def cold(fd, buffers, off, flags):
        assert flags == os.RWF_NOWAIT
        raise BlockingIOError(11, "not cached")

    monkeypatch.setattr(os, "preadv", cold)
    t._read_ahead(seg.off, RESIDENT_UNIT)
    assert asked == [(seg.off, RESIDENT_UNIT, os.POSIX_FADV_WILLNEED)]
    asked.clear()
    t.warm([(seg.start, seg.start + 3 * RESIDENT_UNIT)])
    t._warming.join()
    assert asked == [(seg.off - seg.off % os.sysconf("SC_PAGE_SIZE"), 3 * RESIDENT_UNIT +
                      seg.off % os.sysconf("SC_PAGE_SIZE"), os.POSIX_FADV_WILLNEED)]
    t.close()


def note_headers(core: bytes) -> list[int]:
    """File offsets of every note header in a (well-formed) core."""
    eh = ec.parse_ehdr(core)
    note = ec.parse_phdrs(core[eh.phoff:], 1)[0]
    out, pos = [], note.offset
    while pos < note.offset + note.filesz:
        out.append(pos)
        namesz, descsz, _ = ec.NHDR.unpack_from(core, pos)
        pos += 12 + (namesz + 3 & ~3) + (descsz + 3 & ~3)
    return out


HYPO = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@HYPO
@given(data=st.data())
def test_bit_flips_in_headers_and_notes(small_core, tmp_path, data):
    raw = bytearray(small_core)
    eh = ec.parse_ehdr(raw)
    note = ec.parse_phdrs(raw[eh.phoff:], 1)[0]
    end = note.offset + note.filesz
    for _ in range(data.draw(st.integers(1, 8))):
        bit = data.draw(st.integers(0, end * 8 - 1))
        raw[bit // 8] ^= 1 << (bit % 8)
    (tmp_path / "c").write_bytes(raw)
    exercise(str(tmp_path / "c"))


HUGE = st.one_of(st.integers(0, 1 << 16), st.integers(1 << 30, (1 << 64) - 1),
                 st.sampled_from([0, 1 << 63, (1 << 64) - 1, (1 << 64) - 4096]))


@HYPO
@given(data=st.data())
def test_absurd_sizes_and_overlaps(small_core, tmp_path, data):
    """Note sizes, segment sizes, offsets and addresses set to absurd or clashing values."""
    raw = bytearray(small_core)
    eh = ec.parse_ehdr(raw)
    phdrs = ec.parse_phdrs(raw[eh.phoff:], eh.phnum)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(phdrs) - 1))
        field = data.draw(st.sampled_from(["offset", "vaddr", "filesz", "memsz", "nhdr"]))
        if field == "nhdr":  # a note header's namesz or descsz
            pos = data.draw(st.sampled_from(note_headers(small_core))) + data.draw(
                st.sampled_from([0, 4]))
            struct.pack_into("<I", raw, pos, data.draw(st.integers(0, (1 << 32) - 1)))
            continue
        at = eh.phoff + i * ec.PHDR.size + {"offset": 8, "vaddr": 16, "filesz": 32,
                                              "memsz": 40}[field]
        value = (phdrs[data.draw(st.integers(0, len(phdrs) - 1))].vaddr + 0x800
                 if field == "vaddr" and data.draw(st.booleans()) else data.draw(HUGE))
        struct.pack_into("<Q", raw, at, value)
    (tmp_path / "c").write_bytes(raw)
    exercise(str(tmp_path / "c"))


def test_fifos_never_block(tmp_path):
    """A FIFO named as the core, or as a file the core maps, is refused instead of opened."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(MdbError) as e:
        open_file_target(str(fifo))
    assert str(e.value) == f"cannot open {fifo}: not a regular file"
    t = SyntheticTarget([(Mapping(0x400000, 0x401000, "r--p", 0, path=str(fifo)), b"x")])
    write_core(t, str(tmp_path / "c"))
    raw = bytearray((tmp_path / "c").read_bytes())
    eh = ec.parse_ehdr(raw)
    struct.pack_into("<Q", raw, eh.phoff + ec.PHDR.size + 32, 0)  # its PT_LOAD holds nothing
    (tmp_path / "c").write_bytes(raw)
    with open_file_target(str(tmp_path / "c")) as core:
        assert core.warnings == [f"{fifo}: not a regular file; its pages not in the core are "
                                 f"unreadable"]
        with pytest.raises(ReadError, match="not in core file"):
            core.read(0x400000, 1)


def test_huge_segment_costs_nothing(small_core, tmp_path):
    raw = bytearray(small_core)
    eh = ec.parse_ehdr(raw)
    at = eh.phoff + 3 * ec.PHDR.size  # the last PT_LOAD (0x7ff000): none for it to overlap
    struct.pack_into("<QQ", raw, at + 32, 1 << 44, 1 << 44)  # claims 16 TB in the file
    (tmp_path / "c").write_bytes(raw)
    with open_file_target(str(tmp_path / "c")) as t:
        m = next(m for m in t.mappings() if m.start == 0x7ff000)
        assert m.size == 1 << 44
        assert t.read(0x7ff000, 4) == b"ssss"
        with pytest.raises(ReadError, match="core file is truncated"):
            t.read(0x7ff000 + (1 << 40), 8)
        assert any("is truncated" in w for w in t.warnings)
