"""The format verbs / ? = and their format characters, ::formats and ::dump, on synthetic
memory whose every byte is known: exact output, dot, increment and variable `0`."""

from __future__ import annotations

import io
import struct
import time

import pytest

from mdbpy.dcmd import ADDRSPEC, LOOP, LOOPFIRST, PIPE_OUT, Invocation, to_number
from mdbpy.errors import MdbError, ParseError, ReadError, WriteError
from mdbpy.lang.formats import display, search
from mdbpy.session import Session
from mdbpy.symbols.base import Symbol
from mdbpy.target.synthetic import SyntheticTarget

DATA = 0x10000
CODE = 0x401000
PAD = " " * 16  # the margin that unlabelled format output is indented to

# DATA layout: each format character below reads a value chosen for it.
MEMORY = b"".join([
    bytes.fromhex("feffffff78563412"),  # 0x00: 0x12345678fffffffe as u64
    bytes.fromhex("1032547698badcfe"),  # 0x08: 0xfedcba9876543210
    struct.pack("<f", 1.5) + bytes(4),  # 0x10
    struct.pack("<d", -2.25),  # 0x18
    struct.pack("<i", 1000000000) + bytes(4),  # 0x20: 2001 Sep  9 01:46:40 UTC
    struct.pack("<q", 1000000000),  # 0x28
    struct.pack("<Q", CODE + 4),  # 0x30: main+0x4
    b"A" + bytes(7),  # 0x38
    b'hi\t"x\\\n\x01\xff\0next\0',  # 0x40: 9 bytes, NUL, "next", NUL
])
# push rbp; mov rbp, rsp; call main; mov rax, [rip + 0xff0] (= DATA_SYM below); ret
CODE_BYTES = bytes.fromhex("554889e5e8f7ffffff488b05f00f0000c3")


def make_session(writable=False) -> Session:
    target = SyntheticTarget([(DATA, MEMORY + bytes(0x100 - len(MEMORY))),
                              (CODE, CODE_BYTES, "r-xp")], writable=writable)
    s = Session(target, out=io.StringIO(), err=io.StringIO())
    s.symbols.add_symbols("a.out", [
        Symbol("data", DATA, 0x10, "object"),
        Symbol("main", CODE, len(CODE_BYTES)),
        Symbol("global_long", 0x402000, 8, "object"),
    ], is_exe=True)
    return s


@pytest.fixture
def s() -> Session:
    return make_session()


def show(s, verb, addr, fmt, flags=ADDRSPEC) -> str:
    out = io.StringIO()
    display(s, verb, addr, fmt, flags=flags, out=out, count_eval=to_number)
    return out.getvalue()


NOLABEL = ADDRSPEC | LOOP  # a later iteration of a loop: no label, output at the margin

# (format, offset, printed text, field width, bytes consumed, value left in `0`)
CHARS = [
    ("B", 0, "fe", 8, 1, 0xfe),
    ("V", 0, "254", 8, 1, 0xfe),
    ("b", 0, "0376", 8, 1, 0xfe),
    ('""v', 0, "-2", 8, 1, 0xfe),
    ("c", 0x38, "A", 0, 1, 0x41),
    ("x", 0, "fffe", 8, 2, 0xfffe),
    ("d", 0, "-2", 8, 2, 0xfffe),
    ("u", 0, "65534", 8, 2, 0xfffe),
    ("o", 0, "0177776", 8, 2, 0xfffe),
    ("q", 0, "-02", 8, 2, 0xfffe),
    ("h", 4, "7856", 8, 2, 0x7856),
    ('""w', 0, "fffe", 8, 2, 0xfffe),
    ("X", 4, "12345678", 16, 4, 0x12345678),
    ("D", 0, "-2", 16, 4, 0xfffffffe),
    ("U", 0, "4294967294", 16, 4, 0xfffffffe),
    ("O", 4, "02215053170", 16, 4, 0x12345678),
    ("Q", 0, "-02", 16, 4, 0xfffffffe),
    ("H", 4, "78563412", 16, 4, 0x78563412),
    ('""W', 4, "12345678", 16, 4, 0x12345678),
    ("Y", 0x20, "2001 Sep  9 01:46:40", 24, 4, 1000000000),
    ("J", 0x30, "401004", 16, 8, CODE + 4),
    ("J", 8, "fedcba9876543210", 17, 8, 0xfedcba9876543210),
    ("K", 8, "fedcba9876543210", 17, 8, 0xfedcba9876543210),
    ('""Z', 8, "fedcba9876543210", 17, 8, 0xfedcba9876543210),
    ("E", 0, "1311768469162688510", 21, 8, 0x12345678fffffffe),
    ("e", 8, "-81985529216486896", 21, 8, 0xfedcba9876543210),
    ("G", 0, "110642547437777777776", 23, 8, 0x12345678fffffffe),
    ("g", 8, "-4432126361152746760", 24, 8, 0xfedcba9876543210),
    ("F", 0x18, "-2.2500000000000000e+00", 0, 8, 0xc002000000000000),
    ("y", 0x28, "2001 Sep  9 01:46:40", 24, 8, 1000000000),
    ("p", 0x30, "main+0x4", 19, 8, CODE + 4),
    ("P", 0x30, "main+0x4", 19, 8, CODE + 4),
]


@pytest.fixture
def utc(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize("fmt,off,text,width,size,value", CHARS, ids=[c[0] for c in CHARS])
def test_format_character(s, utc, fmt, off, text, width, size, value):
    s.incr = 99
    assert show(s, "/", DATA + off, fmt, NOLABEL) == PAD + text.ljust(width) + "\n"
    assert (s.dot, s.incr, s.vars["0"]) == (DATA + off, size, value)


def test_float_leaves_variable_zero_alone(s):
    s.vars["0"] = 7
    assert show(s, "/", DATA + 0x10, "f", NOLABEL) == PAD + "+1.5000000e+00\n"
    assert (s.incr, s.vars["0"]) == (4, 7)


def test_binary_fills_the_line(s):
    bits = f"{0xfedcba9876543210:064b}"
    assert show(s, "/", DATA + 8, "R", NOLABEL) == PAD + bits + "\n"
    # 16 + 61 digits: the padding would reach the edge, so it becomes the newline
    assert show(s, "/", DATA, "R", NOLABEL) == PAD + f"{0x12345678fffffffe:b}\n"


def test_jazzed_binary(s):
    assert show(s, "=", 0b1000000000101, "j") == (
        PAD + "1000000000101\n"
        + PAD + "|         | |\n"
        + PAD + "|         | +-- bit 0  mask 0x0001\n"
        + PAD + "|         +---- bit 2  mask 0x0004\n"
        + PAD + "+-------------- bit 12 mask 0x1000\n")


def test_label_symbol_line_and_wrapping(s):
    assert show(s, "/", DATA, "4X") == (
        "data:\n"
        "data:           fffffffe        12345678        76543210        fedcba98\n")
    assert s.incr == 16
    # the fifth value does not fit: a new line, indented to the margin
    assert show(s, "/", DATA + 4, "5X") == (
        "data+0x4:       12345678        76543210        fedcba98        3fc00000\n"
        + PAD + "0".ljust(16) + "\n")
    # no symbol: 0x-address label; not a symbol start: no symbol line
    assert show(s, "/", DATA + 0x38, "c") == "0x10038:        A\n"


def test_no_label_when_piped_or_looping(s):
    assert show(s, "/", DATA + 4, "X", ADDRSPEC | PIPE_OUT) == PAD + "12345678".ljust(16) + "\n"
    assert show(s, "/", DATA + 4, "X", ADDRSPEC | LOOP | LOOPFIRST) == (
        "data+0x4:       12345678        \n")


def test_counts_strings_and_layout_characters(s):
    assert show(s, "/", DATA, '2B"|"n3x', NOLABEL) == (
        PAD + "fe      ff      |\n" + PAD + "ffff    5678    1234    \n")
    assert s.incr == 8
    # a tab always moves to the next stop, even from one
    assert show(s, "/", DATA, "B8tB5rB", NOLABEL) == (
        PAD + "fe      " + " " * 8 + "ff      " + " " * 5 + "ff      \n")
    assert show(s, "/", DATA, "$[3]B", NOLABEL) == PAD + "fe      ff      ff      \n"
    assert s.incr == 3
    assert show(s, "/", DATA, '"a\\tb\\"\\101"', NOLABEL) == PAD + "a" + " " * 7 + 'b"A\n'
    assert show(s, "/", DATA, "0X", NOLABEL) == ""
    assert s.incr == 0


def test_dot_moving_characters(s):
    assert show(s, "/", DATA, "X4+X", NOLABEL) == PAD + "fffffffe".ljust(16) + "76543210".ljust(16) + "\n"
    assert s.incr == 12
    assert show(s, "/", DATA, "8+X2-X", NOLABEL) == PAD + "76543210".ljust(16) + "ba987654".ljust(16) + "\n"
    assert s.incr == 14
    # ^ steps back by the increment of the character before it
    assert show(s, "/", DATA, "X^X", NOLABEL) == PAD + "fffffffe".ljust(16) + "fffffffe".ljust(16) + "\n"
    assert s.incr == 4
    assert show(s, "/", DATA + 0x40, "a", NOLABEL) == "0x10040:        \n"
    assert s.vars["0"] == DATA + 0x40


def test_strings(s):
    assert show(s, "/", DATA + 0x40, "S", NOLABEL) == 'hi\\t\\"x\\\\\\n\\001\\377\n'
    assert (s.dot, s.incr) == (DATA + 0x40, 10)
    assert show(s, "/", DATA + 0x40, "2s", NOLABEL) == 'hi      "x\\\n\x01\ufffd\\0next\n'.replace(
        "\ufffd", "\\xff")
    assert s.incr == 15
    assert show(s, "/", DATA + 0x40, "11C", NOLABEL) == PAD + 'hi\\t\\"x\\\\\\n\\001\\377\\0n\n'
    assert s.incr == 11


def test_default_format_list(s):
    assert show(s, "/", CODE, "") == "main:\nmain:           e5894855        = push rbp\n"
    assert s.incr == 1


def test_instructions(s):
    assert show(s, "/", CODE, "5i") == (
        "main:\n"
        "main:           push rbp\n"
        + PAD + "mov rbp, rsp\n"
        + PAD + "call 0x401000 <main>\n"
        + PAD + "mov rax, qword ptr [rip + 0xff0] <global_long>\n"
        + PAD + "ret\n")
    assert (s.dot, s.incr) == (CODE, len(CODE_BYTES))
    assert show(s, "/", CODE + 1, "2I") == (
        "main+0x1:       401001 e8e58948: mov rbp, rsp\n"
        "401004 fffff7e8: call 0x401000 <main>\n")
    assert s.incr == 8
    # adb's `ai`: the label on its own line, no symbol line
    assert show(s, "/", CODE, "ai") == "main:           \nmain:           push rbp\n"


def test_value_verb(s):
    assert show(s, "=", 0x1234, "X") == PAD + "1234".ljust(16) + "\n"
    assert (s.dot, s.incr) == (0x1234, 0)
    assert show(s, "=", 10, "DoE") == PAD + "10".ljust(16) + "012".ljust(8) + "10".ljust(21) + "\n"
    assert show(s, "=", 0x41, "c") == PAD + "A\n"
    assert show(s, "=", CODE + 4, "p") == PAD + "main+0x4".ljust(19) + "\n"
    assert show(s, "=", 0x10, "a") == "0x10:           \n"
    assert show(s, "=", 0x6f6c6c6568, "s") == "hello\n"
    # only + and - move the new dot; the value read never changes
    assert show(s, "=", 0x20, "X8+X4-X") == PAD + "20".ljust(16) * 3 + "\n"
    assert (s.dot, s.incr) == (0x24, 0)
    assert show(s, "=", 0xc3, "i") == PAD + "ret\n"
    with pytest.raises(MdbError, match="expected one or more format characters"):
        show(s, "=", 1, "")


def test_object_file_verb(s):
    if not hasattr(s.symbols, "read_file"):
        pytest.skip("SymbolTable.read_file is missing")
    with pytest.raises(ReadError):  # synthetic objects have no file behind them
        show(s, "?", CODE, "X")


def test_physical_verbs_refused(s):
    for verb in "\\@":
        with pytest.raises(MdbError, match="physical memory"):
            show(s, verb, DATA, "X")


def test_errors(s):
    with pytest.raises(MdbError, match="invalid format character -- 'k'"):
        show(s, "/", DATA, "Xk")
    with pytest.raises(MdbError, match="invalid format character -- 'L'"):
        show(s, "/", DATA, "XL")
    with pytest.raises(ParseError, match="unmatched"):
        show(s, "/", DATA, '"abc')
    with pytest.raises(ParseError, match=r"\$\[ unmatched"):
        show(s, "/", DATA, "$[3X")
    with pytest.raises(MdbError, match="too large"):
        show(s, "/", DATA, f"{1 << 30}n")
    out = io.StringIO()  # a failed read keeps what printed and the increment so far
    with pytest.raises(ReadError):
        display(s, "/", DATA + 0xf8, "3X", flags=ADDRSPEC, out=out, count_eval=to_number)
    assert out.getvalue() == "0x100f8:        0               0               \n"
    assert s.incr == 8


def test_writes_refused_read_only(s):
    with pytest.raises(WriteError, match="target is read-only"):
        show(s, "/", DATA, "W 0t42")
    assert s.mem.read(DATA, 4) == bytes.fromhex("feffffff")


def test_writes(s):
    s = make_session(writable=True)
    assert show(s, "/", DATA + 4, "W 0t42 ffff") == (
        "data+0x4:       0x12345678      =       0x2a\n"
        "data+0x8:       0x76543210      =       0xffff\n")
    assert s.mem.read(DATA + 4, 8) == bytes.fromhex("2a000000ffff0000")
    assert (s.dot, s.incr) == (DATA + 8, 4)
    assert show(s, "/", DATA, "v 1") == "data:           0xfe    =       0x1\n"
    assert show(s, "/", DATA, "w $[3]") == "data:           0xff01  =       0x3\n"
    assert show(s, "/", DATA, "Z 123456789abcdef01") == (
        "data:           0x2affff0003            =       0x23456789abcdef01\n")
    assert (s.incr, s.mem.read_u64(DATA)) == (8, 0x23456789abcdef01)
    with pytest.raises(MdbError, match="expected value to write following W"):
        show(s, "/", DATA, "W")
    with pytest.raises(MdbError, match="CTF"):
        show(s, "/", DATA, "z 1")


def test_searches(s):
    assert show(s, "/", DATA, "L 12345678") == "data+0x4\n"
    assert s.dot == DATA + 4
    assert show(s, "/", DATA, "l 5678") == "data+0x4\n"
    assert show(s, "/", DATA, "M 0 ffffffff00000000") == "0x10010\n"
    assert s.dot == DATA + 0x10
    assert show(s, "/", DATA + 1, "L 10123456") == "data+0x5\n"  # steps from dot, unaligned
    with pytest.raises(MdbError, match="no 4-byte value 0x55555555"):
        show(s, "/", DATA, "L 55555555")
    with pytest.raises(MdbError, match="no 4-byte value 0xe5894855"):  # only dot's mapping
        show(s, "/", DATA, "L e5894855")
    assert show(s, "/", CODE, "L e5894855") == "main\n"
    with pytest.raises(MdbError, match="only value and mask"):
        show(s, "/", DATA, "L 1 2 3")


def test_search_spans_blocks(s):
    big = bytearray(3 << 20)
    big[(3 << 20) - 8:] = (0xABCDEF).to_bytes(8, "little")
    s2 = Session(SyntheticTarget([(0x100000, bytes(big))]), out=io.StringIO(), err=io.StringIO())
    from mdbpy import memory
    old, memory.BLOCK = memory.BLOCK, 1 << 20
    try:
        assert search(s2, 0x100000, 8, 0xABCDEF, (1 << 64) - 1) == 0x100000 + (3 << 20) - 8
        assert search(s2, 0x100003, 4, 0xABCDEF, 0xFFFFFFFF) is None  # misaligned steps
    finally:
        memory.BLOCK = old


def test_formats_dcmd(s):
    out = io.StringIO()
    s.registry.dcmd("formats").func(Invocation(s, 0, 0, [], out))
    lines = out.getvalue().splitlines()
    assert lines[0] == "+ - increment dot by the count (variable size)"
    assert "B - hexadecimal int (1 byte)" in lines
    assert "J - hexadecimal long long (8 bytes)" in lines
    assert "N - newline" in lines
    assert "W - write default radix unsigned int (4 bytes)" in lines
    assert "L - match int (4 bytes)" in lines
    assert "i - disassembled instruction (variable size)" in lines
    assert len(lines) == 51


def dump(s, addr, *args, count=1, flags=ADDRSPEC) -> str:
    out = io.StringIO()
    s.registry.dcmd("dump").func(Invocation(s, addr, flags, list(args), out, count=count))
    return out.getvalue()


def test_dump(s):
    # aligned: the paragraph holding addr, its byte marked in the header
    assert dump(s, DATA + 4) == (
        "         0 1 2 3 \\/ 5 6 7  8 9 a b  c d e f  0123v56789abcdef\n"
        "10000:  feffffff 78563412 10325476 98badcfe  ....xV4..2Tv....\n")
    assert s.dot == DATA + 5
    assert dump(s, DATA + 0x40, "-l", "0t20", "-g", "1") == (
        "        \\/  1  2  3  4  5  6  7   8  9  a  b  c  d  e  f  v123456789abcdef\n"
        "10040:  68 69 09 22 78 5c 0a 01  ff 00 6e 65 78 74 00 00  hi.\"x\\....next..\n"
        "10050:  00 00 00 00 00 00 00 00  00 00 00 00 00 00 00 00  ................\n")
    assert s.dot == DATA + 0x54
    # the repeat count is the length
    assert dump(s, DATA + 4, count=0x14) == dump(s, DATA + 4, "-l", "14")
    assert dump(s, DATA + 2, "-t", "-q", "-l", "4") == (
        "         0 1\\/ 3  4 5 6 7  8 9 a b  c d e f\n"
        "10000:      ffff 7856                      \n")
    assert dump(s, DATA + 2, "-r", "-l", "4") == (
        "     0 1 2 3  4 5 6 7  8 9 a b  c d e f  0123456789abcdef\n"
        "0:  ffff7856 34121032 547698ba dcfe0000  ..xV4..2Tv......\n")
    assert dump(s, DATA, "-e", "-l", "0t16") == "10000:  fffffffe 12345678 76543210 fedcba98\n"
    assert dump(s, DATA + 0x60, "-s", "-u", "-l", "0t48") == (
        "         0 1 2 3  4 5 6 7  8 9 a b  c d e f  0123456789abcdef\n"
        "10060:  00000000 00000000 00000000 00000000  ................\n"
        "*\n"
        "10080:  00000000 00000000 00000000 00000000  ................\n")
    assert s.dot == DATA + 0x90


def test_dump_errors(s):
    out = io.StringIO()
    with pytest.raises(MdbError, match="failed to read data at 0x10100"):
        s.registry.dcmd("dump").func(Invocation(s, DATA + 0xf0, ADDRSPEC, ["-l", "0t32"], out))
    assert out.getvalue().splitlines()[1].startswith("100f0:  00000000")
    with pytest.raises(MdbError, match="physical"):
        dump(s, DATA, "-p")
    with pytest.raises(MdbError, match="-f and -p"):
        dump(s, DATA, "-f", "-p")
    with pytest.raises(MdbError, match="-w takes"):
        dump(s, DATA, "-w", "0t17")


def test_through_the_engine(s):
    from mdbpy.lang.engine import Engine

    e = Engine(s)
    assert e.run_string("data/4X") == 0
    assert e.run_string("+/X") == 0
    assert e.run_string("1+1=D") == 0
    assert e.run_string("data/L 76543210") == 0
    assert e.run_string("data/W 1") == 1
    assert s.out.getvalue() == (
        "data:\n"
        "data:           fffffffe        12345678        76543210        fedcba98\n"
        "0x10010:        3fc00000        \n"
        + PAD + "2               \n"
        "data+0x8\n")
    assert "target is read-only" in s.err.getvalue()
