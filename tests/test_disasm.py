"""Instruction decoding (mdbpy/disasm.py) and the `i` / `I` formats: capstone's own text for
known bytes, symbolic targets, undecodable bytes, memory ends; and a real core, where memory
and the object file must decode alike and every direct call names its function."""

from __future__ import annotations

import io
import subprocess

import pytest

from mdbpy.dcmd import ADDRSPEC, to_number
from mdbpy.disasm import disassemble, read_available
from mdbpy.errors import ReadError
from mdbpy.lang.formats import display
from mdbpy.session import Session
from mdbpy.symbols.base import Symbol
from mdbpy.target.synthetic import SyntheticTarget

CODE = 0x401000
LIBC = 0x70001000  # within a rel32 call of CODE
# main: push rbp; mov rbp, rsp; call helper; lea rdi, [rip + 0xff0] (= message); call malloc
# (libc); mov eax, dword ptr [rip + 0x10e5] (nothing there); pop rbp; ret. helper: ret
PROGRAM = bytes.fromhex("554889e5" "e814000000" "488d3df00f0000" "e8" + "00" * 4
                        + "8b05e5100000" "5dc3" "c3")


def _capstone(data: bytes, addr: int) -> list[tuple[int, int, str]]:
    import capstone

    cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    return [(i.address, i.size, f"{i.mnemonic} {i.op_str}".rstrip())
            for i in cs.disasm(data, addr)]


def _program() -> bytes:
    """PROGRAM with its libc call pointed at LIBC's malloc."""
    code = bytearray(PROGRAM)
    call_end = CODE + 16 + 5
    code[17:21] = ((LIBC - call_end) & 0xFFFFFFFF).to_bytes(4, "little")
    return bytes(code)


@pytest.fixture
def s() -> Session:
    t = SyntheticTarget([(CODE, _program(), "r-xp"), (0x402000, bytes(64)),
                         (LIBC, b"\xc3" * 16, "r-xp")])
    s = Session(t, out=io.StringIO(), err=io.StringIO())
    s.symbols.add_symbols("a.out", [Symbol("main", CODE, 0x1d), Symbol("helper", CODE + 0x1d, 1),
                                    Symbol("message", 0x402000, 16, "object")], is_exe=True)
    s.symbols.add_symbols("libc.so.6", [Symbol("malloc", LIBC, 16)])
    return s


def test_text_is_capstone_plus_symbols(s):
    insns = disassemble(s, CODE, 9)
    ref = _capstone(_program(), CODE)
    assert [(i.address, i.size) for i in insns] == [(a, n) for a, n, _ in ref]
    assert [i.text for i in insns] == [
        "push rbp",
        "mov rbp, rsp",
        "call 0x40101d <helper>",
        "lea rdi, [rip + 0xff0] <message>",
        f"call 0x{LIBC:x} <libc.so.6`malloc>",
        "mov eax, dword ptr [rip + 0x10e5]",
        "pop rbp",
        "ret",
        "ret",
    ]
    # without the suffix, each text is exactly capstone's
    assert [i.text.split(" <")[0] for i in insns] == [t for _, _, t in ref]
    assert [i.target for i in insns[2:6]] == [CODE + 0x1d, 0x402000, LIBC, 0x402100]
    assert (insns[0].bytes, insns[1].mnemonic, insns[1].op_str) == (b"\x55", "mov", "rbp, rsp")


def test_count_and_memory_end(s):
    assert [i.text for i in disassemble(s, CODE, 2)] == ["push rbp", "mov rbp, rsp"]
    # the mapping ends: fewer instructions, none past it
    assert [i.address for i in disassemble(s, CODE + 0x1b, 10)] == [CODE + 0x1b, CODE + 0x1c,
                                                                    CODE + 0x1d]
    assert disassemble(s, 0x500000, 3) == []
    assert disassemble(s, CODE, 0) == []


def test_undecodable_bytes(s):
    t = SyntheticTarget([(0x1000, bytes.fromhex("0606c3"), "r-xp"),
                         (0x2000, bytes.fromhex("90e8"), "r-xp")])
    s2 = Session(t, out=io.StringIO(), err=io.StringIO())
    insns = disassemble(s2, 0x1000, 5)
    assert [(i.address, i.size, i.text) for i in insns] == [
        (0x1000, 1, "(bad)"), (0x1001, 1, "(bad)"), (0x1002, 1, "ret")]
    # a call cut off by the end of memory
    assert [i.text for i in disassemble(s2, 0x2000, 5)] == ["nop", "(bad)"]


def test_read_available_stops_at_the_edge(s):
    assert read_available(s.mem.read, CODE + 0x10, 100) == _program()[0x10:]
    assert read_available(s.mem.read, 0x500000, 100) == b""


def show(s, verb, addr, fmt) -> str:
    out = io.StringIO()
    display(s, verb, addr, fmt, flags=ADDRSPEC, out=out, count_eval=to_number)
    return out.getvalue()


def test_i_and_I_formats(s):
    margin = " " * 16
    assert show(s, "/", CODE + 4, "2i") == (
        "main+0x4:       call 0x40101d <helper>\n"
        + margin + "lea rdi, [rip + 0xff0] <message>\n")
    assert (s.dot, s.incr) == (CODE + 4, 12)
    assert show(s, "/", CODE, "ia") == "main:           push rbp\nmain+0x1:       \n"
    assert show(s, "/", CODE + 0x15, "I") == (
        "main+0x15:      401015 10e5058b: mov eax, dword ptr [rip + 0x10e5]\n")
    assert show(s, "/", CODE + 0x1d, "i") == "helper:\nhelper:         ret\n"
    with pytest.raises(ReadError):
        show(s, "/", 0x500000, "i")


@pytest.fixture(scope="module")
def core_session(basic_exe, basic_gcore, tmp_path_factory):
    import os

    from mdbpy.target.core import open_file_target

    os.environ.setdefault("MDBPY_CACHE_DIR", str(tmp_path_factory.mktemp("symcache")))
    _, core = basic_gcore
    s = Session(open_file_target(str(core), exe=str(basic_exe)), out=io.StringIO(),
                err=io.StringIO())
    yield s
    s.close()


def _link_symbols(exe) -> dict[int, str]:
    out = subprocess.run(["nm", str(exe)], capture_output=True, text=True, check=True).stdout
    return {int(p[0], 16): p[2] for p in (line.split() for line in out.splitlines())
            if len(p) == 3 and p[1] in "tT"}


def test_core_main_matches_the_file(core_session, basic_exe):
    from elftools.elf.elffile import ELFFile

    s = core_session
    main = s.symbols.lookup("main")
    funcs = _link_symbols(basic_exe)
    link_main = next(a for a, n in funcs.items() if n == "main")
    bias = main.addr - link_main
    with open(basic_exe, "rb") as f:
        off = next(ELFFile(f).address_offsets(link_main))
        f.seek(off)
        raw = f.read(main.size)
    insns = disassemble(s, main.addr, 1000)
    insns = [i for i in insns if i.address < main.addr + main.size]
    ref = _capstone(raw, main.addr)
    assert [(i.address, i.size, i.text.split(" <")[0]) for i in insns] == ref
    calls = [i for i in insns if i.mnemonic == "call" and i.target - bias in funcs]
    assert any(funcs[i.target - bias] == "checksum" for i in calls)
    for i in calls:
        assert i.text == f"call 0x{i.target:x} <{funcs[i.target - bias]}>"
    # memory and the object file decode alike
    n = len(insns)
    if hasattr(s.symbols, "read_file"):
        assert show(s, "?", main.addr, f"{n}i") == show(s, "/", main.addr, f"{n}i")
    assert show(s, "/", main.addr, "i") == f"main:\nmain:           {insns[0].text}\n"
