"""The core writer and ::gcore: cores written from synthetic bytes, from another core and from a
live process read back exactly in mdbpy, and open in gdb with threads, a backtrace and values."""

from __future__ import annotations

import io
import os
import re
import struct
import subprocess

import pytest
from support import BASIC_NODES, basic_list, run_mdbpy

from mdbpy.dcmd import Invocation
from mdbpy.errors import MdbError, ReadError, UsageError
from mdbpy.session import Session
from mdbpy.target import elfcore as ec
from mdbpy.target.base import Mapping, Target, Thread
from mdbpy.target.core import open_file_target
from mdbpy.target.gcore import CONTENT, content_kind, parse_content, write_core
from mdbpy.target.live import LiveTarget
from mdbpy.target.synthetic import SyntheticTarget
from mdbpy_commands.core.gcore import gcore

HOLE = 0x601000  # one unreadable page inside the heap mapping of the synthetic target


class HoleyTarget(SyntheticTarget):
    """A synthetic target with a page that fails to read, as a live process can have."""

    def read(self, addr: int, size: int) -> bytes:
        if addr < HOLE + ec.PAGE and addr + size > HOLE:
            raise ReadError(max(addr, HOLE), size, "no access")
        return super().read(addr, size)


def synthetic() -> HoleyTarget:
    regs = {r: 0x7000 + 8 * i for i, r in enumerate(ec.X86_64_REGS)}
    text = bytes(range(256)) * 32
    heap = b"".join(struct.pack("<Q", 0xABCD0000 + i) for i in range(3 * ec.PAGE // 8))
    segs = [(Mapping(0x400000, 0x402000, "r-xp", 0x1000, "08:01", 42, "/opt/app/bin"), text),
            (0x600000, heap, "rw-p"),
            (Mapping(0x700000, 0x701000, "---p"), b""),
            (0x800000, bytes(4 << 20), "rw-p")]
    threads = [Thread(100, regs=regs, state="SIGSEGV"),
               Thread(101, regs={**regs, "rip": 0x400123})]
    return HoleyTarget(segs, threads=threads, auxv={ec.AT_PHDR: 0x400040, 6: 4096, 25: 0x600010})



class ManyMappings(Target):
    """More mappings than e_phnum can count: 70000 pages, each starting with its address."""

    COUNT = 70000

    def mappings(self) -> list[Mapping]:
        return [Mapping(a, a + ec.PAGE, "rw-p") for a in range(0x10000000, 0x10000000 +
                                                                   self.COUNT * 2 * ec.PAGE,
                                                                   2 * ec.PAGE)]

    def read(self, addr: int, size: int) -> bytes:
        page = addr - addr % ec.PAGE
        return (struct.pack("<Q", page) + bytes(ec.PAGE - 8))[addr - page:addr - page + size]


def gdb_batch(exe, core) -> str:
    return subprocess.run(["gdb", "-batch", "-nx", str(exe), str(core), "-ex", "info threads",
                           "-ex", "bt", "-ex", "p global_int"], capture_output=True, text=True,
                          timeout=120).stdout


def assert_gdb_reads(exe, core, tids) -> None:
    out = gdb_batch(exe, core)
    assert sorted(int(x) for x in re.findall(r"\(LWP (\d+)\) ", out)) == sorted(tids), out
    assert re.search(r"^#\d+ +0x[0-9a-f]+ in main \(", out, re.M), out
    assert "$1 = 4660" in out, out


def test_synthetic_target_round_trip(tmp_path):
    src = synthetic()
    path = tmp_path / "core"
    calls = []
    size = write_core(src, str(path), progress=lambda done, total: calls.append((done, total)))
    assert size == path.stat().st_size
    assert path.stat().st_blocks * 512 < 1 << 20  # the 4 MB of zeros are a hole
    assert calls[-1] == (0x2000 + 0x3000 + (4 << 20),) * 2
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    with open_file_target(str(path)) as t:
        assert t.warnings == []
        assert [(m.start, m.end, m.perms, m.offset, m.path) for m in t.mappings()] == [
            (0x400000, 0x402000, "r-xp", 0x1000, "/opt/app/bin"),
            (0x600000, 0x603000, "rw-p", 0, ""), (0x700000, 0x701000, "---p", 0, ""),
            (0x800000, 0xC00000, "rw-p", 0, "")]
        assert t.read(0x400000, 0x2000) == src.read(0x400000, 0x2000)
        assert t.read(0x600000, 0x1000) == src.read(0x600000, 0x1000)
        assert t.read(HOLE, ec.PAGE) == bytes(ec.PAGE)  # unreadable page: written as zeros
        assert t.read(0x602000, 0x1000) == src.read(0x602000, 0x1000)
        assert t.read(0x800000 + (3 << 20), 16) == bytes(16)
        assert [(th.tid, th.regs, th.state) for th in t.threads()] == \
            [(th.tid, th.regs, th.state) for th in src.threads()]
        assert t.auxv() == src.auxv()
        assert (t.psinfo.pid, t.psinfo.fname) == (0, "synthetic")
        assert t.status_lines()[-1] == \
            "status: process terminated by SIGSEGV (Segmentation fault)"


def test_more_than_65535_mappings(tmp_path):
    """e_phnum overflows at 0xffff: the real count goes to section header 0 (PN_XNUM)."""
    path = tmp_path / "many"
    write_core(ManyMappings(), str(path))
    assert ec.parse_ehdr(path.read_bytes()[:64]).phnum == ec.PN_XNUM
    with open_file_target(str(path)) as t:
        maps = t.mappings()
        assert len(maps) == ManyMappings.COUNT
        last = maps[-1].start
        assert t.read(last, 16) == struct.pack("<QQ", last, 0)


def test_core_to_core_is_faithful_and_gdb_reads_it(basic_exe, basic_gcore, tmp_path):
    info, core = basic_gcore
    out = tmp_path / "again"
    with open_file_target(str(core)) as src:
        write_core(src, str(out))
        with open_file_target(str(out)) as t:
            assert t.warnings == []
            assert [m for m in t.mappings()] == [m for m in src.mappings() if m.readable]
            for m in t.mappings():
                assert t.read(m.start, m.size) == src.read(m.start, m.size), m
            assert [(th.tid, th.regs) for th in t.threads()] == \
                [(th.tid, th.regs) for th in src.threads()]
            assert t.auxv() == src.auxv() and t.psinfo == src.psinfo
            assert t.status_lines()[1:] == src.status_lines()[1:]
            assert basic_list(t, int(info["list_head"], 16)) == BASIC_NODES
    assert_gdb_reads(basic_exe, out, [th.tid for th in t.threads()])


def invoke(session: Session, *args: str) -> str:
    out = io.StringIO()
    gcore(Invocation(session, 0, 0, list(args), out, name="gcore"))
    return out.getvalue()


def test_gcore_of_a_live_process(basic_exe, basic_proc, tmp_path):
    tids = sorted(int(t) for t in os.listdir(f"/proc/{basic_proc.pid}/task"))
    target = LiveTarget(basic_proc.pid)
    try:
        session = Session(target, out=io.StringIO(), err=io.StringIO(), load_builtin=False)
        live_regs = {th.tid: th.regs["rip"] for th in target.threads()}
        prefix = tmp_path / "proc"
        assert invoke(session, "-o", str(prefix)) == f"{prefix}.{basic_proc.pid} dumped\n"
    finally:
        target.close()
    basic_proc.assert_untouched()
    path = f"{prefix}.{basic_proc.pid}"
    with open_file_target(path) as t:
        assert t.warnings == []
        assert sorted(th.tid for th in t.threads()) == tids
        assert {th.tid: th.regs["rip"] for th in t.threads()} == live_regs
        assert basic_list(t, basic_proc.addr("list_head")) == BASIC_NODES
        assert (t.psinfo.pid, t.psinfo.fname, t.psinfo.psargs) == \
            (basic_proc.pid, "basic", str(basic_exe))
        assert t.exe_path() == str(basic_exe)
        assert t.status_lines()[-1] == "status: process core file generated with gcore(1)"
    assert_gdb_reads(basic_exe, path, tids)


def test_gcore_from_the_command_line(basic_proc, tmp_path):
    prefix = tmp_path / "cli"
    r = run_mdbpy("-p", basic_proc.pid, "-e", f"::gcore -o {prefix}")
    assert (r.returncode, r.stdout, r.stderr) == (0, f"{prefix}.{basic_proc.pid} dumped\n", "")
    basic_proc.assert_untouched()
    r = run_mdbpy(f"{prefix}.{basic_proc.pid}", "-e", "::status")
    assert r.stdout.splitlines()[-1] == "status: process core file generated with gcore(1)"


def test_gcore_default_prefix_and_refusals(basic_proc, basic_gcore, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with LiveTarget(basic_proc.pid) as target:
        session = Session(target, out=io.StringIO(), err=io.StringIO(), load_builtin=False)
        assert invoke(session) == f"core.{basic_proc.pid} dumped\n"
        with pytest.raises(UsageError):
            invoke(session, "extra")
    assert (tmp_path / f"core.{basic_proc.pid}").stat().st_size > 0
    with open_file_target(str(basic_gcore[1])) as core:
        session = Session(core, out=io.StringIO(), err=io.StringIO(), load_builtin=False)
        with pytest.raises(MdbError) as e:
            invoke(session)
        assert str(e.value) == ("::gcore: only a live process can be dumped (target is core "
                                f"file {basic_gcore[1]})")


@pytest.mark.parametrize("spec, want", [
    ("all", set(CONTENT)), ("default", set(CONTENT)), ("none", set()),
    ("stack+heap", {"stack", "heap"}),
    ("default-shfile-shanon", set(CONTENT) - {"shfile", "shanon"}),
    ("none+text+data-text", {"data"}), ("heap-heap+anon", {"anon"}),
    ("", set()),  # nothing asked for: nothing written
])
def test_core_content_strings(spec, want):
    assert parse_content(spec) == want


@pytest.mark.parametrize("spec", ["stacks", "heap+all", "ism"])
def test_core_content_errors_name_the_word(spec):
    with pytest.raises(ValueError, match="^unknown core content '(stacks|all|ism)' \\(all, "):
        parse_content(spec)


def test_core_content_kinds():
    def kind(perms, path="", sps=()):
        return content_kind(Mapping(0x1000, 0x3000, perms, path=path), list(sps))

    assert [kind("rw-p", "[stack]"), kind("rw-p", "", [0x2000]), kind("rw-p", "[heap]"),
            kind("rw-p"), kind("rw-s"), kind("r-xp", "[vdso]"), kind("r-xp", "/lib/libc.so.6"),
            kind("rw-p", "/lib/libc.so.6"), kind("r--p", "/lib/libc.so.6"),
            kind("rw-s", "/dev/shm/x")] == ["stack", "stack", "heap", "anon", "shanon", "text",
                                            "text", "data", "rodata", "shfile"]


def test_gcore_content_keeps_only_the_kinds_asked_for(basic_proc, tmp_path):
    """-c stack+heap: the heap and the stacks have their bytes, every other mapping its
    PT_LOAD without bytes; the heap reads back as the live process's."""
    prefix = tmp_path / "sh"
    with LiveTarget(basic_proc.pid) as target:
        session = Session(target, out=io.StringIO(), err=io.StringIO(), load_builtin=False)
        assert invoke(session, "-o", str(prefix), "-c", "stack+heap") == \
            f"{prefix}.{basic_proc.pid} dumped\n"
        maps = sorted(target.mappings(), key=lambda m: m.start)
        sps = [t.regs["rsp"] for t in target.threads()]
        (heap,) = [m for m in maps if m.path == "[heap]"]
        live_heap = target.read(heap.start, heap.size)
        with pytest.raises(UsageError, match="unknown core content 'sstack'"):
            invoke(session, "-o", str(prefix), "-c", "sstack")
    basic_proc.assert_untouched()
    core = (tmp_path / f"sh.{basic_proc.pid}").read_bytes()
    eh = ec.parse_ehdr(core)
    loads = [p for p in ec.parse_phdrs(core[eh.phoff:], eh.phnum) if p.type == ec.PT_LOAD]
    assert [p.vaddr for p in loads] == [m.start for m in maps]
    kept = {m.start for m in maps if m.readable and content_kind(m, sps) in ("stack", "heap")}
    assert heap.start in kept and len(kept) >= 2  # the heap, and the stacks
    assert {p.vaddr for p in loads if p.filesz} == kept
    assert {content_kind(m, sps) for m in maps if m.start in kept} == {"stack", "heap"}
    with open_file_target(str(tmp_path / f"sh.{basic_proc.pid}")) as t:
        assert t.read(heap.start, heap.size) == live_heap


def test_gcore_is_registered_with_help():
    session = Session(SyntheticTarget([]), out=io.StringIO(), err=io.StringIO())
    d = session.registry.dcmd("gcore")
    assert (d.usage, d.example) == ("[-o prefix] [-c content] [-m size]",
                                    "::gcore -o /tmp/myprog -c stack+heap -m 512m")
    assert d.descr and "dumped" in d.help


def test_write_errors_are_one_line(tmp_path):
    with pytest.raises(MdbError) as e:
        write_core(synthetic(), str(tmp_path / "no" / "such" / "dir"))
    assert str(e.value) == \
        f"cannot create {tmp_path / 'no' / 'such' / 'dir'}: No such file or directory"
    os.symlink(tmp_path / "victim", tmp_path / "link")
    with pytest.raises(MdbError, match="^cannot create .*/link: Too many levels of symbolic"):
        write_core(synthetic(), str(tmp_path / "link"))
    assert not (tmp_path / "victim").exists()
