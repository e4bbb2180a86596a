"""Fuzzing the ELF core reader (mdbpy/target/elfcore.py, core.py) and what runs on top of it.

Two real starting points: a small core mdbpy writes from synthetic memory (every note kind, a
mapped file on disk) and gdb's gcore of the `basic` fixture. Each example damages one of them
(truncation, bit flips, program header and ELF header fields set to absurd or clashing values,
note sizes, NT_FILE tables with huge counts, segments turned into more note segments) and then
opens it: the result is a one-line error or a target on which ::status, ::mappings, ::threads,
::regs, $c and reads at every mapping's edges work or print one-line errors. Peak memory must
stay bounded however many terabytes the segments claim.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pytest
from fuzz_support import (HANG_SECONDS, MAX_RSS_GROWTH_MIB, assert_message,
                          assert_one_line_errors, fuzz_settings, max_rss_mib, watchdog)
from hypothesis import given
from hypothesis import strategies as st
from support import compile_fixture, gcore, start_fixture

from mdbpy.errors import MdbError
from mdbpy.lang.engine import Engine
from mdbpy.session import Session
from mdbpy.target import elfcore as ec
from mdbpy.target.base import Mapping, Thread
from mdbpy.target.core import open_file_target
from mdbpy.target.gcore import write_core
from mdbpy.target.synthetic import SyntheticTarget

COMMANDS = "::status; ::mappings; ::threads; ::regs; $c; ::stack 3"
EXE_COMMANDS = "::status; ::mappings; ::objects; ::nm -x; main/X; main::dis -n 3; ::whereis main"
READS = 8  # mappings whose first and last bytes each example reads
HUGE = st.one_of(st.integers(0, 1 << 16), st.integers(1 << 30, (1 << 64) - 1),
                 st.sampled_from([0, 1, 1 << 32, 1 << 40, 1 << 44, 1 << 63, (1 << 64) - 1,
                                  (1 << 64) - 4096, 0xFFFF, 0x10000]))


class Base:
    """A well-formed core and the file offsets of the fields worth damaging."""

    def __init__(self, raw: bytes):
        self.raw = raw
        eh = ec.parse_ehdr(raw)
        self.phoff = eh.phoff
        self.phdrs = ec.parse_phdrs(raw[eh.phoff:], ec.phdr_count(
            eh, lambda off, n: raw[off:off + n]))
        self.notes: list[tuple[int, int, int]] = []  # (header offset, type, descsz)
        for ph in self.phdrs:
            if ph.type != ec.PT_NOTE:
                continue
            pos = ph.offset
            while pos + 12 <= ph.offset + ph.filesz:
                namesz, descsz, ntype = ec.NHDR.unpack_from(raw, pos)
                self.notes.append((pos, ntype, descsz))
                pos += 12 + (namesz + 3 & ~3) + (descsz + 3 & ~3)
        self.note_end = max(ph.offset + ph.filesz for ph in self.phdrs if ph.type == ec.PT_NOTE)

    def nt_file_desc(self) -> int | None:
        """File offset of the NT_FILE note's descriptor (its count comes first)."""
        for pos, ntype, _ in self.notes:
            if ntype == ec.NT_FILE:
                namesz = ec.NHDR.unpack_from(self.raw, pos)[0]
                return pos + 12 + (namesz + 3 & ~3)
        return None


def small_core(workdir: Path, mapped_file: Path) -> Base:
    """A few-KB core written by mdbpy: two threads, auxv, NT_FILE naming a real file whose
    text the core leaves out (so reads go to the disk), a heap, a stack and a gap."""
    regs = {r: 0x1000 + i for i, r in enumerate(ec.X86_64_REGS)}
    regs.update(rip=0x400010, rsp=0x7ff800, rbp=0x7ff900)
    segs = [(Mapping(0x400000, 0x402000, "r-xp", 0, path=str(mapped_file)), b""),
            (Mapping(0x600000, 0x601000, "rw-p", 0x1000, path=str(mapped_file)),
             bytes(range(256)) * 16),
            (Mapping(0x610000, 0x612000, "rw-p", path="[heap]"), b"h" * 0x2000),
            (0x7ff000, b"s" * 4096, "rw-p")]
    t = SyntheticTarget(segs, threads=[Thread(7, regs=regs), Thread(8, regs=regs)],
                        auxv={ec.AT_PHDR: 0x400040, 6: 4096, ec.AT_EXECFN: 0x7ff100})
    path = workdir / "small.core"
    write_core(t, str(path))
    raw = bytearray(path.read_bytes())
    # the text mapping holds no bytes in the core: its pages come from the file on disk
    base = Base(bytes(raw))
    i = next(k for k, ph in enumerate(base.phdrs) if ph.vaddr == 0x400000)
    struct.pack_into("<Q", raw, base.phoff + i * ec.PHDR.size + 32, 0)
    return Base(bytes(raw))


def gdb_core(workdir: Path, exe: Path) -> Base:
    r = start_fixture(exe)
    try:
        return Base(gcore(r.pid, workdir / "basic").read_bytes())
    finally:
        r.stop()


# -- damage ---------------------------------------------------------------------------------
PHDR_FIELDS = {"type": (0, "<I"), "flags": (4, "<I"), "offset": (8, "<Q"), "vaddr": (16, "<Q"),
               "filesz": (32, "<Q"), "memsz": (40, "<Q")}
EHDR_FIELDS = {"phoff": (32, "<Q"), "shoff": (40, "<Q"), "phentsize": (54, "<H"),
               "phnum": (56, "<H"), "shnum": (60, "<H"), "type": (16, "<H")}


def _put(raw: bytearray, at: int, fmt: str, value: int) -> None:
    if at + struct.calcsize(fmt) <= len(raw):
        struct.pack_into(fmt, raw, at, value & ((1 << 8 * struct.calcsize(fmt)) - 1))


@st.composite
def damage(draw, base: Base) -> list[tuple]:
    """One to four kinds of damage to base.raw, each as (kind, file offset, format, value)
    so that a failure reads as what was done to the file."""
    ops: list[tuple] = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["truncate", "flip", "phdr", "ehdr", "note", "nt_file",
                                     "overlap", "phnum"]))
        if kind == "truncate":
            ops.append((kind, draw(st.one_of(st.integers(0, base.note_end + 64),
                                             st.integers(0, len(base.raw))))))
        elif kind == "flip":
            span = draw(st.sampled_from([base.note_end, len(base.raw)]))
            ops += [(kind, draw(st.integers(0, span * 8 - 1)))
                    for _ in range(draw(st.integers(1, 16)))]
        elif kind == "phdr":
            i = draw(st.integers(0, len(base.phdrs) - 1))
            at, fmt = PHDR_FIELDS[draw(st.sampled_from(sorted(PHDR_FIELDS)))]
            value = draw(st.one_of(HUGE, st.sampled_from([ec.PT_LOAD, ec.PT_NOTE, 7,
                                                          0x6474E550])))
            ops.append((kind, base.phoff + i * ec.PHDR.size + at, fmt, value))
        elif kind == "ehdr":
            at, fmt = EHDR_FIELDS[draw(st.sampled_from(sorted(EHDR_FIELDS)))]
            ops.append((kind, at, fmt, draw(st.one_of(HUGE, st.sampled_from([ec.PN_XNUM, 56,
                                                                              64])))))
        elif kind == "note" and base.notes:
            pos = draw(st.sampled_from(base.notes))[0]
            ops.append((kind, pos + draw(st.sampled_from([0, 4, 8])), "<I", draw(st.one_of(
                HUGE, st.sampled_from([ec.NT_FILE, ec.NT_PRSTATUS, ec.NT_AUXV,
                                       ec.NT_SIGINFO])))))
        elif kind == "nt_file" and base.nt_file_desc() is not None:
            ops.append((kind, base.nt_file_desc() + draw(st.sampled_from([0, 8, 16, 24, 32])),
                        "<Q", draw(HUGE)))
        elif kind == "overlap":  # a segment moved onto, or grown over, another
            i, j = (draw(st.integers(0, len(base.phdrs) - 1)) for _ in range(2))
            src, at = base.phdrs[j], base.phoff + i * ec.PHDR.size
            ops.append((kind, at + 16, "<Q", src.vaddr + draw(st.sampled_from([0, 0x800,
                                                                               0x1000]))))
            ops.append((kind, at + 40, "<Q", draw(st.sampled_from([src.memsz, src.memsz * 4,
                                                                   1 << 40]))))
        elif kind == "phnum":  # more headers than written: data read as program headers
            ops.append((kind, 56, "<H", len(base.phdrs) + draw(st.integers(1, 200))))
    return ops


# The classes of header fields a reader must check before it trusts them (issue 19: a stack
# segment whose p_memsz had one bit flipped, 0x8000000000021000, sent ::findleaks into a read
# per page for ever). Each maps a Base to the (file offset, format) of that field in every
# header that has one.
HEADER_FIELDS = {
    **{f"p_{name}": (lambda b, at=PHDR_FIELDS[name][0]: [
        (b.phoff + i * ec.PHDR.size + at, "<Q") for i in range(len(b.phdrs))])
       for name in ("memsz", "filesz", "offset", "vaddr")},
    "note_size": lambda b: [(pos + at, "<I") for pos, _, _ in b.notes for at in (0, 4)],
    "count": lambda b: [(EHDR_FIELDS["phnum"][0], "<H")] + (
        [(b.nt_file_desc(), "<Q")] if b.nt_file_desc() is not None else []),
}
HEADER_SECONDS = 20  # per example, ::findleaks included; a bound proportional to real data
HEADER_COMMANDS = COMMANDS + "; ::findleaks; ::heap_stats"


@st.composite
def header_damage(draw, base: Base, field: str | None = None) -> list[tuple]:
    """One field of one class in one header set to an absurd value, or with one bit flipped
    (what a bad disk block does to the numbers a reader trusts)."""
    field = field or draw(st.sampled_from(sorted(HEADER_FIELDS)))
    at, fmt = draw(st.sampled_from(HEADER_FIELDS[field](base)))
    if draw(st.booleans()):
        return [("flip", at * 8 + draw(st.integers(0, 8 * struct.calcsize(fmt) - 1)))]
    return [("header", at, fmt, draw(HUGE))]


def apply(raw: bytes, ops: list[tuple]) -> bytes:
    out = bytearray(raw)
    for kind, at, *field in ops:
        if kind == "truncate":
            del out[at:]
        elif kind == "flip":
            if at // 8 < len(out):
                out[at // 8] ^= 1 << at % 8
        else:
            _put(out, at, *field)
    return bytes(out)


# -- cores built from scratch ------------------------------------------------------------------
PATHS = ["/bin/true", "/dev/zero", "/proc/self/mem", "/proc/kcore", "/nonexistent/lib.so",
         "/", "relative/path", "/bin/true\udcff"]
ADDRS = st.one_of(st.sampled_from([0, 0x400000, 0x401000, 0x600000, 0x7ff000, 1 << 47,
                                   (1 << 64) - 4096, (1 << 64) - 1]), HUGE)
FILE_ENTRY = st.builds(ec.FileEntry, ADDRS, ADDRS, HUGE, st.sampled_from(PATHS))
NOTE = st.one_of(
    st.builds(lambda tid, regs: (b"CORE", ec.NT_PRSTATUS, ec.pack_prstatus(tid, 11, dict(
        zip(ec.X86_64_REGS, regs)))), st.integers(0, (1 << 31) - 1),
        st.lists(ADDRS, min_size=len(ec.X86_64_REGS), max_size=len(ec.X86_64_REGS))),
    st.builds(lambda pid, name: (b"CORE", ec.NT_PRPSINFO, ec.pack_prpsinfo(ec.PsInfo(
        pid, name, name))), st.integers(0, (1 << 31) - 1), st.text(max_size=20)),
    st.builds(lambda kv: (b"CORE", ec.NT_AUXV, ec.pack_auxv(kv)),
              st.dictionaries(st.sampled_from([ec.AT_PHDR, ec.AT_SYSINFO_EHDR, ec.AT_EXECFN,
                                               6, 9, 0]), ADDRS)),
    st.builds(lambda es: (b"CORE", ec.NT_FILE, ec.pack_nt_file(es)),
              st.lists(FILE_ENTRY, max_size=40)),
    st.builds(lambda sig, code, addr: (b"CORE", ec.NT_SIGINFO, ec.pack_siginfo(ec.SigInfo(
        sig, 0, code, addr))), st.integers(-5, 70), st.integers(-5, 5), ADDRS),
    st.builds(lambda names: (b"MDBPY", ec.NT_MDBPY_NAMES, ec.pack_names(names)),
              st.lists(st.tuples(ADDRS, ADDRS, st.sampled_from(["[heap]", "[stack]", "x"])),
                       max_size=5)),
    st.tuples(st.sampled_from([b"CORE", b"GNU", b"", b"LINUX"]), st.integers(0, (1 << 32) - 1),
              st.binary(max_size=64)),
)
LOAD = st.tuples(ADDRS, HUGE, HUGE, st.integers(0, 7))  # vaddr, filesz, memsz, flags


@st.composite
def built_core(draw) -> tuple:
    """(notes, loads, note segments, xnum): a core assembled from parts, see assemble()."""
    return (draw(st.lists(NOTE, max_size=8)), draw(st.lists(LOAD, max_size=6)),
            draw(st.integers(0, 3)), draw(st.booleans()))


def assemble(example: tuple) -> bytes:
    """Notes in one blob that every PT_NOTE points at; each PT_LOAD's bytes (its content when
    given, else at most a page, whatever filesz claims) after it; with xnum, e_phnum says PN_XNUM and section
    header 0 holds the count."""
    notes, loads, note_segs, xnum = example
    blob = b"".join(ec.pack_note(*n) for n in notes)
    nph = note_segs + len(loads)
    head = ec.EHDR.size + nph * ec.PHDR.size + ec.SHDR.size
    phdrs = [ec.Phdr(ec.PT_NOTE, 0, head, 0, len(blob), 0)] * note_segs
    body = bytearray(blob)
    for vaddr, filesz, memsz, flags, *content in loads:
        phdrs.append(ec.Phdr(ec.PT_LOAD, flags, head + len(body), vaddr, filesz, memsz))
        body += content[0] if content else bytes(range(256)) * (min(filesz, ec.PAGE) // 256)
    shdr = ec.SHDR.pack(0, 0, 0, 0, 0, 0, 0, nph, 0, 0)
    ehdr = ec.pack_ehdr(ec.ET_CORE, ec.PN_XNUM if xnum else nph,
                        shoff=ec.EHDR.size + nph * ec.PHDR.size)
    return ehdr + b"".join(ec.pack_phdr(p) for p in phdrs) + shdr + bytes(body)


def this_vdso() -> bytes:
    """The vDSO image of this process: a real ELF with .eh_frame, as a core holds it."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        if line.endswith("[vdso]"):
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            with open("/proc/self/mem", "rb") as f:
                f.seek(lo)
                return f.read(hi - lo)
    raise AssertionError("no [vdso] in /proc/self/maps")


VDSO_BASE, STACK_BASE = 0x7FFF00000000, 0x7FFE00000000


@st.composite
def vdso_core(draw, vdso: bytes) -> tuple:
    """A thread stopped inside a damaged vDSO (the unwinder parses its ELF headers and CFI from
    the core's memory) with a stack of chosen words: for assemble()."""
    image = bytearray(vdso)
    for _ in range(draw(st.integers(1, 12))):
        at = draw(st.one_of(st.integers(0, 0x200), st.integers(0, len(image) - 8)))
        if draw(st.booleans()):
            image[at] ^= 1 << draw(st.integers(0, 7))
        else:
            struct.pack_into("<Q", image, at, draw(HUGE))
    stack = b"".join(struct.pack("<Q", w) for w in draw(st.lists(
        st.one_of(HUGE, st.integers(VDSO_BASE, VDSO_BASE + len(vdso)),
                  st.integers(STACK_BASE, STACK_BASE + 0x1000)), min_size=512, max_size=512)))
    regs = dict.fromkeys(ec.X86_64_REGS, 0)
    regs.update(rip=VDSO_BASE + draw(st.integers(0, len(vdso) - 1)),
                rsp=STACK_BASE + draw(st.integers(0, 0x1000 // 8 - 1)) * 8,
                rbp=draw(st.one_of(HUGE, st.integers(STACK_BASE, STACK_BASE + 0x1000))))
    notes = [(b"CORE", ec.NT_PRSTATUS, ec.pack_prstatus(100, 11, regs)),
             (b"CORE", ec.NT_AUXV, ec.pack_auxv({ec.AT_SYSINFO_EHDR: VDSO_BASE}))]
    loads = [(VDSO_BASE, len(image), len(image), 5, bytes(image)),
             (STACK_BASE, len(stack), len(stack), 6, stack)]
    return notes, loads, 1, False


# -- the check --------------------------------------------------------------------------------
def check_core(path: Path, raw: bytes, commands: str = COMMANDS,
               seconds: float = HANG_SECONDS) -> None:
    """Open the damaged core and use it within `seconds`: one-line errors only, and no new
    peak of memory more than MAX_RSS_GROWTH_MIB above the old one (so the example that
    allocates is the one that fails)."""
    path.write_bytes(raw)
    err = io.StringIO()
    before = max_rss_mib()
    with watchdog(seconds):
        _open_and_use(path, err, commands)
    grown = max_rss_mib() - before
    assert grown < MAX_RSS_GROWTH_MIB, f"peak memory grew by {grown:.0f} MiB"
    assert_one_line_errors(err.getvalue())


def _open_and_use(path: Path, err: io.StringIO, commands: str) -> None:
    try:
        target = open_file_target(str(path))
    except MdbError as e:
        assert_message(e)
        return
    session = Session(target, out=io.StringIO(), err=err)
    try:
        for w in getattr(target, "warnings", []):
            assert_message(MdbError(w))
        reads = [f"{a:x}/K; {a:x},2/B" for m in target.mappings()[:READS]
                 for a in (m.start, max(m.start, m.end - 8))]
        Engine(session).run_string("; ".join([commands, *reads]))
    finally:
        session.close()


def targets(workdir: Path, exe: Path, gdb: Base | None = None) -> dict:
    """The core fuzz targets, name -> (strategy, check), for pytest and bench/fuzz.py; `exe`
    (the basic fixture) is also damaged itself, as an executable opened alone."""
    small = small_core(workdir, exe)
    program = Base(exe.read_bytes())
    gdb = gdb or gdb_core(workdir, exe)
    path = workdir / "fuzzed.core"

    def checker(base: Base):
        return lambda ops: check_core(path, apply(base.raw, ops))

    def header_check(ops):
        check_core(path, apply(gdb.raw, ops), HEADER_COMMANDS, HEADER_SECONDS)

    return {"core-small": (damage(small), checker(small)),
            "core-gdb": (damage(gdb), checker(gdb)),
            "core-header": (header_damage(gdb), header_check),
            "core-built": (built_core(), lambda ex: check_core(path, assemble(ex))),
            "core-vdso": (vdso_core(this_vdso()), lambda ex: check_core(path, assemble(ex))),
            "exe": (damage(program), lambda ops: check_core(path, apply(program.raw, ops),
                                                            EXE_COMMANDS))}


@pytest.fixture(scope="module")
def gdb_base(basic_gcore) -> Base:
    return Base(basic_gcore[1].read_bytes())


@pytest.fixture(scope="module")
def fuzz_targets(tmp_path_factory, basic_exe, gdb_base):
    return targets(tmp_path_factory.mktemp("fuzzcore"), basic_exe, gdb_base)


@pytest.fixture(scope="module")
def header_check(fuzz_targets):
    return fuzz_targets["core-header"][1]


def _fuzz(fuzz_targets, name: str, data) -> None:
    strategy, check = fuzz_targets[name]
    check(data.draw(strategy))


@fuzz_settings(200)
@given(data=st.data())
def test_damaged_small_core(fuzz_targets, data):
    _fuzz(fuzz_targets, "core-small", data)


@fuzz_settings(30)
@given(data=st.data())
def test_damaged_gdb_core(fuzz_targets, data):
    _fuzz(fuzz_targets, "core-gdb", data)


@pytest.mark.parametrize("field", sorted(HEADER_FIELDS))
@fuzz_settings(10)
@given(data=st.data())
def test_core_header_field(header_check, gdb_base, field, data):
    """Each class of header field, absurd or one bit off, in gdb's core of a glibc program:
    opened and ::findleaks run within HEADER_SECONDS, one-line warnings only."""
    header_check(data.draw(header_damage(gdb_base, field)))


@fuzz_settings(150)
@given(data=st.data())
def test_cores_built_from_hostile_parts(fuzz_targets, data):
    _fuzz(fuzz_targets, "core-built", data)


# -- what the fuzzing found ---------------------------------------------------------------------
def _open(tmp_path: Path, raw: bytes):
    (tmp_path / "c").write_bytes(raw)
    return open_file_target(str(tmp_path / "c"))


def test_overlapping_file_entries_do_not_multiply_mappings(tmp_path):
    """2,000 NT_FILE entries each spanning the address space, over 2,000 segments, used to
    make 4 million omitted mappings (27 s); the entries are now cut where the previous ends."""
    entries = [ec.FileEntry(0x1000, 1 << 62, 0, f"/nonexistent/{i}") for i in range(2000)]
    loads = [(0x2000 + i * 0x2000, 0x1000, 0x1000, 4) for i in range(2000)]
    notes = [(b"CORE", ec.NT_FILE, ec.pack_nt_file(entries))]
    with _open(tmp_path, assemble((notes, loads, 1, False))) as t:
        assert len(t.mappings()) == 2000 + 2001  # the segments and the gaps around them
        assert {m.path for m in t.mappings()} == {"/nonexistent/0"}
        assert [(m.start, m.end) for m in t.mappings()[:3]] == [
            (0x1000, 0x2000), (0x2000, 0x3000), (0x3000, 0x4000)]
        assert t.warnings == [
            f"core file {tmp_path / 'c'}: NT_FILE entries overlap at 0x1000",
            "/nonexistent/0: No such file or directory; its pages not in the core are "
            "unreadable"]


def test_note_segments_are_bounded_and_read_in_place(tmp_path, monkeypatch):
    """Zeroed bytes are a stream of empty notes, and a note segment may claim the whole file
    and more: at most MAX_NOTES are parsed, through a view of the file, never a copy."""
    import tracemalloc

    from mdbpy.target import core

    monkeypatch.setattr(core, "MAX_NOTES", 1000)
    raw = bytearray(assemble(([(b"", 0, b"")] * 4000, [], 3, False)) + bytes(32 << 20))
    for i in range(3):  # every note segment claims a terabyte
        struct.pack_into("<Q", raw, ec.EHDR.size + i * ec.PHDR.size + 32, 1 << 40)
    (tmp_path / "c").write_bytes(raw)
    tracemalloc.start()
    try:
        t = open_file_target(str(tmp_path / "c"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    with t:
        assert t.warnings == [f"core file {tmp_path / 'c'} is truncated: notes cut short",
                              f"core file {tmp_path / 'c'} has more than 1000 notes; the rest "
                              f"are ignored"]
    assert peak < 4 << 20


def test_threads_are_capped(tmp_path, monkeypatch):
    from mdbpy.target import core

    monkeypatch.setattr(core, "MAX_THREADS", 3)
    notes = [(b"CORE", ec.NT_PRSTATUS, ec.pack_prstatus(tid, 0, {})) for tid in range(10, 15)]
    with _open(tmp_path, assemble((notes, [], 1, False))) as t:
        assert [th.tid for th in t.threads()] == [10, 11, 12]
        assert t.warnings == [f"core file {tmp_path / 'c'} has more than 3 threads; the rest "
                              f"are ignored"]


def test_a_mapped_path_with_a_newline_is_one_line(tmp_path):
    """A damaged NT_FILE count shifts the names onto bytes holding a newline: the warning
    naming the file escapes it (found by core-header)."""
    notes = [(b"CORE", ec.NT_FILE, ec.pack_nt_file([ec.FileEntry(0x1000, 0x2000, 0,
                                                                  "/nonexistent/a\nb")]))]
    with _open(tmp_path, assemble((notes, [], 1, False))) as t:
        assert t.warnings == ["/nonexistent/a\\nb: No such file or directory; its pages not in "
                              "the core are unreadable"]


@fuzz_settings(50)
@given(data=st.data())
def test_damaged_vdso_in_a_core(fuzz_targets, data):
    _fuzz(fuzz_targets, "core-vdso", data)


@fuzz_settings(40)
@given(data=st.data())
def test_damaged_executable_opened_alone(fuzz_targets, data):
    _fuzz(fuzz_targets, "exe", data)
