"""The format verbs: addr/fmt (virtual memory), addr?fmt (object file), value=fmt (the value
itself), and the physical-memory verbs \\ and @, which these targets cannot serve.

Every format character of mdb's table (mdb_fmt.c, LP64) is here with its size, its printf
conversion and the value it leaves in variable `0`; writes (/v /w /W /Z) and searches
(/l /L /M) are the special first characters mdb gives them (mdb_cmds.c print_common).

Output goes through _Line, a model of the few rules of mdb's output buffer (mdb_io.c) that
decide where format output breaks: the 16-column margin that continuation lines are indented
to, tab stops, padding that turns into a newline at the right edge, and auto-wrap at the output
width that is on only while a format character prints. Modelling the rules, rather than
hard-coding shapes, is what makes `addr/8X`, `=D` and `addr/3i` break exactly as mdb does.

Deliberate differences from mdb: each display() call ends its own line (mdb keeps one line
across the iterations of `addr,cnt/X`); a failed read stops the list with an error instead of
warning and carrying on; signed octal puts the sign first (`-017`, where mdb prints `0-17`);
repeat counts of printing formats are capped at MAX_REPEAT so a typo cannot print for hours.
"""

from __future__ import annotations

import os
import re
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

from mdbpy.dcmd import LOOP, LOOPFIRST, PIPE_OUT
from mdbpy.disasm import disassemble, read_available
from mdbpy.errors import MdbError, ParseError, ReadError
from mdbpy.output import c_escape, radix_str, symbolic

MASK = (1 << 64) - 1
MARGIN = 16  # mdb's MDB_IOB_DEFMARGIN: labels are padded to it, wrapped lines indented to it
COLUMNS = 80  # mdb's MDB_IOB_DEFCOLS, used when the output is not a terminal
TABSTOP = 8
MAX_REPEAT = 1 << 20  # most repetitions of one printing format character
STRING_LIMIT = 1 << 20  # longest string `s` / `S` will read looking for its NUL
READ_AHEAD = 4096  # bytes read at once from virtual memory while formatting
WRITE_SIZES = {"v": 1, "w": 2, "W": 4, "Z": 8}
SEARCH_SIZES = {"l": 2, "L": 4, "M": 8}
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_UNESCAPES = {"n": "\n", "t": "\t", "a": "\a", "b": "\b", "f": "\f", "r": "\r", "v": "\v",
              '"': '"', "\\": "\\"}


# -- the output line ---------------------------------------------------------------------------

class _Line:
    """The current output line with mdb's margin, tab and wrap rules (see the module doc)."""

    def __init__(self, out, cols: int):
        self.out = out
        self.cols = cols
        self.margin = MARGIN if MARGIN < cols else 0
        self.buf: list[str] = []
        self.n = 0  # characters on the current line
        self.indent = False  # continuation lines start at the margin
        self.autowrap = False

    def _add(self, s: str) -> None:
        self.buf.append(s)
        self.n += len(s)

    def nl(self) -> None:
        self.out.write("".join(self.buf) + "\n")
        self.buf, self.n = [], 0
        self._indent()

    def _indent(self) -> None:
        if self.indent and self.n == 0 and self.margin:
            self._add(" " * self.margin)

    def set_indent(self, on: bool) -> None:
        """Turning indentation off drops a line that holds nothing but the margin."""
        if on:
            self.indent = True
            self._indent()
            return
        if self.n and self.n == self.margin and "".join(self.buf).isspace():
            self.buf, self.n = [], 0
        self.indent = False

    def wrap_now(self, width: int) -> bool:
        return (self.autowrap and self.n != 0 and width + self.n > self.cols
                and not (self.indent and self.n == self.margin))

    def _room(self) -> int:
        if not self.autowrap:
            return 1 << 62
        if self.cols < self.n:
            self.nl()
        return self.cols - self.n

    def _put(self, s: str) -> None:
        while s:
            room = self._room()
            m = min(len(s), room)
            self._add(s[:m])
            s = s[m:]
            if m == room and s:
                self.nl()

    def puts(self, s: str) -> None:
        """Text as mdb_iob_puts: embedded tabs and newlines obey the tab and margin rules."""
        for part in re.split(r"([\t\n])", s):
            if part == "\t":
                self.tab()
            elif part == "\n":
                self.nl()
            elif part:
                self._put(part)

    def tab(self, stop: int = TABSTOP) -> None:
        stop = min(stop, self.cols - 1)
        if stop:
            n = (self.n + stop) // stop * stop
            if n < self.cols:
                self._put(" " * (n - self.n))
            else:
                self.nl()

    def ws(self, k: int) -> None:
        """k spaces, or a newline when they would reach the right edge (mdb_iob_ws)."""
        if not self.autowrap or self.n + k < self.cols:
            self._put(" " * k)
        else:
            self.nl()

    def field(self, s: str, width: int = 0) -> None:
        """One left-justified printf conversion `%-<width>s`: wrap first if it does not fit."""
        w = max(width, len(s))
        if "\n" in s:
            w = min(w, s.index("\n"))
        if self.wrap_now(w):
            self.nl()
        self.puts(s)
        if len(s) < w:
            self.ws(w - len(s))

    def text(self, s: str) -> None:
        """Literal text of a printf format."""
        if s and self.wrap_now(len(s)) and s[0] != "\n":
            self.nl()
        self.puts(s)

    def tab_to(self, width: int) -> None:
        """%<width>T: move to the next multiple of width unless already on one."""
        if self.n % width:
            self.tab(width)

    def finish(self) -> None:
        """End of the command: the pending margin goes, a non-empty line gets its newline."""
        self.set_indent(False)
        if self.n:
            self.nl()


def _columns(out) -> int:
    try:
        if out.isatty():
            return max(os.get_terminal_size(out.fileno()).columns, MARGIN + 4)
    except (AttributeError, OSError, ValueError):
        pass
    return COLUMNS


# -- byte sources ------------------------------------------------------------------------------

class _Source:
    """Where a verb reads: read(addr, n) gives exactly n bytes or raises ReadError."""

    def read(self, addr: int, n: int) -> bytes:
        raise NotImplementedError

    def cstring(self, addr: int) -> bytes:
        """The bytes at addr up to (not including) a NUL, at most STRING_LIMIT of them; a
        string that runs into unreadable memory ends there."""
        out = bytearray()
        while len(out) < STRING_LIMIT:
            cur = addr + len(out)
            chunk = read_available(self.read, cur, min(STRING_LIMIT - len(out), 256 - (cur & 255)))
            if not chunk:
                if not out:
                    raise ReadError(cur, 1)
                break
            nul = chunk.find(b"\0")
            if nul >= 0:
                return bytes(out + chunk[:nul])
            out += chunk
        return bytes(out)


class _Virtual(_Source):
    """Virtual memory, read a page ahead so `addr/1000X` is not a thousand target reads."""

    def __init__(self, session):
        self.mem = session.mem
        self.base = 0
        self.data = b""

    def read(self, addr: int, n: int) -> bytes:
        off = addr - self.base
        if 0 <= off and off + n <= len(self.data):
            return self.data[off:off + n]
        m = self.mem.mapping_at(addr)
        if m is not None and n <= READ_AHEAD:
            try:
                self.data = self.mem.read(addr, min(READ_AHEAD, m.end - addr))
                self.base = addr
                if n <= len(self.data):
                    return self.data[:n]
            except ReadError:
                self.data = b""
        return self.mem.read(addr, n)


class _ObjectFile(_Source):
    """The object file behind an address (the `?` verb)."""

    def __init__(self, session):
        self.symbols = session.symbols

    def read(self, addr: int, n: int) -> bytes:
        return self.symbols.read_file(addr, n)


class _Value(_Source):
    """`=`: the value as an 8-byte little-endian immediate; every read sees its low bytes,
    whatever the address (mdb_value.c), and nothing lies beyond its 8 bytes."""

    def __init__(self, value: int):
        self.bytes = (value & MASK).to_bytes(8, "little")

    def read(self, addr: int, n: int) -> bytes:
        return self.bytes[:n]

    def cstring(self, addr: int) -> bytes:
        return self.bytes.split(b"\0", 1)[0]


# -- conversions -------------------------------------------------------------------------------

def _signed(v: int, size: int) -> int:
    bits = size * 8
    return v - (1 << bits) if v >> (bits - 1) else v


def _octal(v: int, alt: bool) -> str:
    """%o / %#o (the alternate form adds a leading 0 to non-zero values); signed values keep
    their sign in front."""
    body = f"{abs(v):o}"
    return ("-" if v < 0 else "") + ("0" + body if alt and v else body)


def _show_base(v: int) -> str:
    """%#x: the 0x prefix only above 9, as mdb's numtostr does."""
    return f"0x{v:x}" if v > 9 else str(v)


def _signed_radix(session, v: int) -> str:
    return ("-" + radix_str(-v, session.radix)) if v < 0 else radix_str(v, session.radix)


def _time(session, secs: int) -> str:
    """%Y: ctime rearranged as `YYYY Mon DD HH:MM:SS` in local time; a time ctime cannot
    show prints as a signed number in the output radix."""
    try:
        tm = time.localtime(secs)
    except (OverflowError, OSError, ValueError):
        tm = None
    if tm is None or not 0 <= tm.tm_year <= 9999:
        return _signed_radix(session, secs)
    return (f"{tm.tm_year} {_MONTHS[tm.tm_mon - 1]} {tm.tm_mday:2d} "
            f"{tm.tm_hour:02d}:{tm.tm_min:02d}:{tm.tm_sec:02d}")


def _swap16(v: int) -> int:
    return ((v << 8) | (v >> 8)) & 0xFFFF


def _swap32(v: int) -> int:
    return int.from_bytes(v.to_bytes(4, "little"), "big")


def _jazzed(x: int) -> list[str]:
    """fmt_jazzed: the binary digits, then a line of arms, then one elbow line per set bit
    from the lowest up, each naming the bit and its mask."""
    lines = [f"{x:b}"]
    header = True
    while x:
        high = x.bit_length() - 1
        b, arms = high, []
        while x & ((1 << b) - 1):
            arms.append("|" if x & (1 << b) else " ")
            b -= 1
        if header:
            header = False
            lines.append("".join(arms) + "|")
            continue
        pad = " " if b < 10 <= high else ""
        lines.append("".join(arms) + "+" + "-" * (b + 2)
                     + f" bit {b} {pad}mask 0x{1 << b:0{high // 4 + 1}x}")
        x &= ~(1 << b)
    return lines


# -- the format characters ---------------------------------------------------------------------

class _Run:
    """State of one format list as it runs: where it reads (`at`), the increment `^` uses."""

    def __init__(self, session, src: _Source, line: _Line, incr: int):
        self.session = session
        self.src = src
        self.line = line
        self.incr = incr
        self.at = 0

    def take(self, size: int) -> int:
        data = self.src.read(self.at, size)
        if len(data) < size:
            raise ReadError(self.at, size, "past the end of the value")
        self.at = (self.at + size) & MASK
        return int.from_bytes(data, "little")

    def store(self, value: int) -> None:
        """Variable `0`: the last value a format character printed."""
        self.session.vars["0"] = value & MASK


@dataclass(frozen=True)
class FormatChar:
    """One row of mdb's format table: what the character consumes, prints and means."""

    char: str
    size: int | None  # bytes per repetition; 0 variable; None: does not move dot
    help: str
    run: Callable[[_Run, int], None] | None  # None: only meaningful first (write / search)
    role: str = ""  # 'write' or 'match' for the characters that start a write or a search
    autowrap: bool = True

    def describe(self) -> str:
        """The ::formats line: `c - description (N bytes)`."""
        size = {None: "", 0: " (variable size)", 1: " (1 byte)"}.get(
            self.size, f" ({self.size} bytes)")
        role = f"{self.role} " if self.role else ""
        return f"{self.char} - {role}{self.help}{size}"


def _repeat(count: int) -> range:
    if count > MAX_REPEAT:
        raise MdbError(f"repeat count {count} is too large (at most {MAX_REPEAT})")
    return range(count)


def _number(size: int, width, conv: Callable, stored: Callable | None = lambda raw: raw):
    """A printf-style format: read `size` bytes, print conv(run, raw) in a left-justified
    field of `width` (an int, or a function of the raw value), store stored(raw) in `0`."""

    def run(r: _Run, count: int) -> None:
        for _ in _repeat(count):
            raw = r.take(size)
            r.line.field(conv(r, raw), width(raw) if callable(width) else width)
            if stored is not None:
                r.store(stored(raw))

    return run


def _hex64_width(raw: int) -> int:
    """J, K, Z: %-16llx, widened to 17 when the top nibble is set (mdb's fmt_hex64)."""
    return 17 if raw >> 60 else 16


def _fmt_chars(r: _Run, count: int) -> None:
    """C: count bytes read at once, printed with C escapes."""
    data = r.src.read(r.at, len(_repeat(count)))
    r.line.field(c_escape(data))
    r.at = (r.at + len(data)) & MASK


def _without_indent(fn):
    """Run a format with the margin indentation off, as mdb does for labels and strings."""

    def run(r: _Run, count: int) -> None:
        r.line.set_indent(False)
        try:
            fn(r, count)
        finally:
            r.line.set_indent(True)

    return run


@_without_indent
def _fmt_dot(r: _Run, count: int) -> None:
    for _ in _repeat(count):
        r.line.field(symbolic(r.session, r.at) + ":", MARGIN)
        r.line.tab_to(MARGIN)
    r.store(r.at)


def _strings(escape: bool):
    @_without_indent
    def run(r: _Run, count: int) -> None:
        for i in _repeat(count):
            data = r.src.cstring(r.at)
            r.line.puts(c_escape(data) if escape else data.decode("utf-8", "backslashreplace"))
            r.at = (r.at + len(data) + 1) & MASK
            if i + 1 < count:
                r.line.puts("\\0")

    return run


def _instructions(r: _Run, count: int) -> list:
    insns = disassemble(r.session, r.at, len(_repeat(count)), read=r.src.read)
    if not insns and count:
        raise ReadError(r.at, 1, "cannot read an instruction")
    return insns


def _fmt_insn(r: _Run, count: int) -> None:
    for insn in _instructions(r, count):
        r.line.field(insn.text)
        r.line.text("\n")
        r.at = (insn.address + insn.size) & MASK


@_without_indent
def _fmt_addr_insn(r: _Run, count: int) -> None:
    """I: `addr insnword: instruction`, the word being the 4 bytes at addr."""
    for insn in _instructions(r, count):
        word = int.from_bytes(r.src.read(insn.address, 4), "little")
        r.line.field(f"{insn.address:x}")
        r.line.text(" ")
        r.line.field(f"{word:x}")
        r.line.text(": ")
        r.line.field(insn.text)
        r.line.text("\n")
        r.at = (insn.address + insn.size) & MASK


def _fmt_jazzed(r: _Run, count: int) -> None:
    for _ in _repeat(count):
        raw = r.take(8)
        r.store(raw)
        for text in _jazzed(raw):
            r.line.field(text)
            r.line.text("\n")


def _fmt_newline(r: _Run, count: int) -> None:
    for _ in _repeat(count):
        r.line.nl()


def _fmt_tab(r: _Run, count: int) -> None:
    r.line.tab(count)


def _fmt_space(r: _Run, count: int) -> None:
    r.line.ws(min(count, r.line.cols))


def _fmt_plus(r: _Run, count: int) -> None:
    r.at = (r.at + count) & MASK


def _fmt_minus(r: _Run, count: int) -> None:
    r.at = (r.at - count) & MASK


def _fmt_caret(r: _Run, count: int) -> None:
    r.at = (r.at - r.incr * count) & MASK


def _hex(r, v):
    return f"{v:x}"


def _unsigned(r, v):
    return str(v)


def _alt_octal(r, v):
    return _octal(v, True)


def _signed_octal(size: int, alt: bool):
    return lambda r, v: _octal(_signed(v, size), alt)


def _decimal(size: int):
    return lambda r, v: str(_signed(v, size))


def _radix(r, v):
    return radix_str(v, r.session.radix)


def _pointer(r, v):
    return symbolic(r.session, v)


def _char(r, v):
    return chr(v) if v else ""


def _float(r, v):
    return f"{struct.unpack('<f', v.to_bytes(4, 'little'))[0]:+.7e}"


def _double(r, v):
    return f"{struct.unpack('<d', v.to_bytes(8, 'little'))[0]:+.16e}"


def _hex64(help_: str, role: str = "") -> FormatChar:
    return FormatChar("", 8, help_, _number(8, _hex64_width, _hex), role)


def _table() -> dict[str, FormatChar]:
    """mdb's fmttab for LP64 (z, the CTF-sized write, is left out: there is no CTF)."""
    entries = {
        "+": FormatChar("", 0, "increment dot by the count", _fmt_plus),
        "-": FormatChar("", 0, "decrement dot by the count", _fmt_minus),
        "B": FormatChar("", 1, "hexadecimal int", _number(1, 8, _hex)),
        "C": FormatChar("", 1, "character using C character notation", _fmt_chars),
        "D": FormatChar("", 4, "decimal signed int", _number(4, 16, _decimal(4))),
        "E": FormatChar("", 8, "decimal unsigned long long", _number(8, 21, _unsigned)),
        "F": FormatChar("", 8, "double", _number(8, 0, _double)),
        "G": FormatChar("", 8, "octal unsigned long long",
                        _number(8, 23, lambda r, v: _octal(v, False))),
        "H": FormatChar("", 4, "swap bytes and shorts",
                        _number(4, 16, lambda r, v: f"{_swap32(v):x}", _swap32)),
        "I": FormatChar("", 0, "address and disassembled instruction", _fmt_addr_insn),
        "J": _hex64("hexadecimal long long"),
        "K": _hex64("hexadecimal uintptr_t"),
        "L": FormatChar("", 4, "int", None, "match"),
        "M": FormatChar("", 8, "long long", None, "match"),
        "N": FormatChar("", None, "newline", _fmt_newline),
        "O": FormatChar("", 4, "octal unsigned int", _number(4, 16, _alt_octal)),
        "P": FormatChar("", 8, "symbol", _number(8, 19, _pointer)),
        "Q": FormatChar("", 4, "octal signed int", _number(4, 16, _signed_octal(4, True))),
        "R": FormatChar("", 8, "binary unsigned long long",
                        _number(8, lambda raw: 65 if raw >> 63 else 64, lambda r, v: f"{v:b}")),
        "S": FormatChar("", 0, "string using C string notation", _strings(True)),
        "T": FormatChar("", None, "horizontal tab", _fmt_tab),
        "U": FormatChar("", 4, "decimal unsigned int", _number(4, 16, _unsigned)),
        "V": FormatChar("", 1, "decimal unsigned int", _number(1, 8, _unsigned)),
        "W": FormatChar("", 4, "default radix unsigned int", _number(4, 16, _radix), "write"),
        "X": FormatChar("", 4, "hexadecimal int", _number(4, 16, _hex)),
        "Y": FormatChar("", 4, "decoded time32_t",
                        _number(4, 24, lambda r, v: _time(r.session, _signed(v, 4)),
                                lambda raw: _signed(raw, 4))),
        "Z": _hex64("hexadecimal long long", "write"),
        "^": FormatChar("", 0, "decrement dot by increment * count", _fmt_caret),
        "a": FormatChar("", None, "dot as symbol+offset", _fmt_dot),
        "b": FormatChar("", 1, "octal unsigned int", _number(1, 8, _alt_octal)),
        "c": FormatChar("", 1, "character", _number(1, 0, _char)),
        "d": FormatChar("", 2, "decimal signed short", _number(2, 8, _decimal(2))),
        "e": FormatChar("", 8, "decimal signed long long", _number(8, 21, _decimal(8))),
        "f": FormatChar("", 4, "float", _number(4, 0, _float, None)),
        "g": FormatChar("", 8, "octal signed long long", _number(8, 24, _signed_octal(8, False))),
        "h": FormatChar("", 2, "swap bytes",
                        _number(2, 8, lambda r, v: f"{_swap16(v):x}", _swap16)),
        "i": FormatChar("", 0, "disassembled instruction", _fmt_insn),
        "j": FormatChar("", 8, "jazzed-up binary unsigned long long", _fmt_jazzed,
                        autowrap=False),
        "l": FormatChar("", 2, "short", None, "match"),
        "n": FormatChar("", None, "newline", _fmt_newline),
        "o": FormatChar("", 2, "octal unsigned short", _number(2, 8, _alt_octal)),
        "p": FormatChar("", 8, "symbol", _number(8, 19, _pointer)),
        "q": FormatChar("", 2, "octal signed short", _number(2, 8, _signed_octal(2, True))),
        "r": FormatChar("", None, "whitespace", _fmt_space),
        "s": FormatChar("", 0, "raw string", _strings(False)),
        "t": FormatChar("", None, "horizontal tab", _fmt_tab),
        "u": FormatChar("", 2, "decimal unsigned short", _number(2, 8, _unsigned)),
        "v": FormatChar("", 1, "decimal signed int", _number(1, 8, _decimal(1)), "write"),
        "w": FormatChar("", 2, "default radix unsigned short", _number(2, 8, _radix), "write"),
        "x": FormatChar("", 2, "hexadecimal short", _number(2, 8, _hex)),
        "y": FormatChar("", 8, "decoded time64_t",
                        _number(8, 24, lambda r, v: _time(r.session, _signed(v, 8)))),
    }
    return {c: FormatChar(c, f.size, f.help, f.run, f.role, f.autowrap)
            for c, f in sorted(entries.items())}


FORMATS = _table()


def format_table() -> list[str]:
    """The lines of ::formats, in character order."""
    return [f.describe() for f in FORMATS.values()]


# -- format lists ------------------------------------------------------------------------------

def _close_bracket(text: str, start: int) -> int:
    """Index of the `]` closing a `$[` whose body starts at `start`."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "[":
            depth += 1
        elif text[i] == "]":
            if depth == 0:
                return i
            depth -= 1
    raise ParseError("syntax error: $[ unmatched")


def _unescape(s: str) -> str:
    """stresc2chr: C escapes in a quoted string (\\ooo octal, the usual letters)."""
    out, i = [], 0
    while i < len(s):
        c = s[i]
        if c != "\\" or i + 1 == len(s):
            out.append(c)
            i += 1
            continue
        e = s[i + 1]
        m = re.match(r"[0-7]{1,3}", s[i + 1:])
        if m:
            out.append(chr(int(m.group(), 8) & 0xFF))
            i += 1 + m.end()
            continue
        out.append(_UNESCAPES.get(e, "\\" + e))
        i += 2
    return "".join(out)


def parse_format_list(text: str, count_eval: Callable[[str], int]) -> list[tuple[str, object]]:
    """Tokens of a format list: ('count', n) for a decimal run or `$[expr]`, ('str', s) for a
    quoted literal, ('char', c) for a format character. Unknown characters are errors here,
    before anything prints."""
    items: list[tuple[str, object]] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c in " \t\n":
            i += 1
        elif text.startswith("//", i):
            break
        elif c == '"':
            m = re.compile(r'"((?:[^"\\\n]|\\.)*)"').match(text, i)
            if not m:
                raise ParseError('syntax error: " unmatched')
            items.append(("str", _unescape(m.group(1))))
            i = m.end()
        elif text.startswith("$[", i):
            j = _close_bracket(text, i + 2)
            items.append(("count", count_eval(text[i + 2:j]) & MASK))
            i = j + 1
        elif c.isdigit():
            m = re.compile(r"[0-9]+").match(text, i)
            if m.end() - i > 20:  # past 64 bits (and past what int() converts, at 4300)
                raise MdbError(f"repeat count {m.group()[:20]}... is too large")
            items.append(("count", int(m.group())))
            i = m.end()
        else:
            f = FORMATS.get(c)
            if f is None or f.run is None:
                raise MdbError(f"invalid format character -- '{c}'")
            items.append(("char", c))
            i += 1
    return items


_WORD = re.compile(r"""(?:'[^']*'|"[^"]*"|[^\s'"])+""")


def _value_words(text: str, count_eval: Callable[[str], int]) -> list[int]:
    """The values after a write or search character: words (quoted parts kept together) and
    `$[expr]`, each evaluated as an expression."""
    values, i = [], 0
    while i < len(text):
        if text[i].isspace():
            i += 1
        elif text.startswith("$[", i):
            j = _close_bracket(text, i + 2)
            values.append(count_eval(text[i + 2:j]) & MASK)
            i = j + 1
        else:
            m = _WORD.match(text, i)
            if not m:
                raise ParseError(f"syntax error: unmatched quote in '{text[i:]}'")
            values.append(count_eval(m.group()) & MASK)
            i = m.end()
    return values


# -- the verbs ---------------------------------------------------------------------------------

DEFAULT_LIST = [("char", "X"), ("char", "^"), ("str", "= "), ("char", "i")]


def display(session, verb: str, addr: int, fmt: str, *, flags: int, out,
            count_eval: Callable[[str], int]) -> None:
    """Run one format verb at addr (the value, for `=`): `fmt` is the raw text after the verb,
    `flags` the invocation flags, `count_eval` evaluates `$[expr]` counts and the values of
    writes and searches. Sets dot, the increment and variable `0` as mdb does; failures raise
    MdbError after the output so far has been written."""
    addr &= MASK
    if verb in ("\\", "@"):
        raise MdbError(f"'{verb}' reads physical memory, which this target does not have")
    if verb not in ("/", "?", "="):
        raise MdbError(f"unknown format verb '{verb}'")
    head = fmt.lstrip()[:1]
    if verb != "=" and head and head in "vwzWZ":
        return _write(session, verb, addr, head, fmt.lstrip()[1:], out, count_eval)
    if verb != "=" and head and head in SEARCH_SIZES:
        return _search(session, verb, addr, head, fmt.lstrip()[1:], out, count_eval)
    items = parse_format_list(fmt, count_eval)
    line = _Line(out, _columns(out))
    if verb == "=":
        return _print_value(session, addr, items, line)
    src = _Virtual(session) if verb == "/" else _ObjectFile(session)
    return _print_memory(session, src, addr, items, flags, line)


def _apply(run: _Run, char: str, count: int) -> None:
    """One format character, with auto-wrap on while it prints (unless it opts out)."""
    f = FORMATS[char]
    run.line.autowrap = f.autowrap
    try:
        if run.line.wrap_now(0):
            run.line.nl()
        f.run(run, count)
    finally:
        run.line.autowrap = False


def _each(items, line: _Line, step: Callable[[str, int], None]) -> None:
    """Walk a format list: counts prefix the next character, literals print as they are."""
    line.set_indent(True)
    count = 1
    for kind, v in items:
        if kind == "count":
            count = v
            continue
        if kind == "str":
            line.puts(v)
        else:
            step(v, count)
        count = 1


def _label(session, addr: int, items, line: _Line) -> None:
    """The symbol line (when addr is exactly a symbol) and the `addr:` label; the lists `ai`
    and `ia` (adb's disassembly idiom) get the label alone, on its own line for `ai`."""
    lead = "".join(v for k, v in items[:2]) if [k for k, _ in items[:2]] == ["char"] * 2 else ""
    if lead not in ("ai", "ia"):
        hit = session.symbols.lookup_addr(addr)
        if hit is not None and hit[1] == 0:
            line.field(symbolic(session, addr) + ":")
            line.nl()
    line.field(symbolic(session, addr) + ":", MARGIN)
    if lead == "ai":
        line.nl()
    elif lead != "ia":
        line.tab_to(MARGIN)


def _print_memory(session, src: _Source, addr: int, items, flags: int, line: _Line) -> None:
    if (not flags & LOOP or flags & LOOPFIRST) and not flags & PIPE_OUT:
        _label(session, addr, items, line)
    run = _Run(session, src, line, session.incr)
    run.at = addr
    session.dot = addr

    def step(char: str, count: int) -> None:
        before = run.at
        try:
            _apply(run, char, count)
        finally:
            run.incr = (run.at - before) & MASK

    try:
        _each(items or DEFAULT_LIST, line, step)
    finally:
        session.incr = (run.at - addr) & MASK
        line.finish()


def _print_value(session, value: int, items, line: _Line) -> None:
    """`=`: every character formats the value itself; only `+` and `-` move the new dot."""
    if not items:
        raise MdbError("expected one or more format characters following '='")
    run = _Run(session, _Value(value), line, session.incr)
    dot = value

    def step(char: str, count: int) -> None:
        nonlocal dot
        run.at = dot
        _apply(run, char, count)
        if char in "+-":
            dot = run.at

    try:
        _each(items, line, step)
    finally:
        line.finish()
        session.dot = dot
        session.incr = 0


def _write(session, verb: str, addr: int, char: str, text: str, out, count_eval) -> None:
    """/v /w /W /Z: store each value in turn (1, 2, 4, 8 bytes, truncated to that size) and
    read it back, printing `addr: old = new` as mdb's default write_readback option does."""
    if char == "z":
        raise MdbError("no CTF data found at this address (write with /v /w /W or /Z)")
    if verb == "?":
        raise MdbError("writing to the object file is not supported")
    values = _value_words(text, count_eval)
    if not values:
        raise MdbError(f"expected value to write following {char}")
    size = WRITE_SIZES[char]
    line = _Line(out, _columns(out))
    cur = addr
    try:
        for value in values:
            session.dot = cur
            old = session.mem.read_uint(cur, size)
            session.mem.write(cur, (value & ((1 << 8 * size) - 1)).to_bytes(size, "little"))
            session.invalidate()
            new = session.mem.read_uint(cur, size)
            line.field(symbolic(session, cur) + ":", MARGIN)
            line.tab_to(MARGIN)
            line.field(_show_base(old), {1: 8, 2: 8, 4: 16, 8: 24}[size])
            line.text("=")
            line.tab_to(8)
            line.text(f"0x{new:x}\n")
            session.incr = size
            cur = (cur + size) & MASK
    finally:
        line.finish()


def search(session, start: int, size: int, value: int, mask: int) -> int | None:
    """The first address from start, in steps of size bytes, whose value x has
    (x & mask) == value; None when the mapping holding start (or its readable part) ends
    first. Scans whole blocks with numpy."""
    import numpy as np

    m = session.mem.mapping_at(start)
    if m is None:
        raise ReadError(start, size)
    dtype = np.dtype(f"<u{size}")
    want, bits = dtype.type(value), dtype.type(mask)
    carry, expect = b"", start
    for base, data in session.mem.blocks(start, m.end):
        if base != expect:
            break  # an unreadable page: mdb's search stops where a read fails
        expect = base + len(data)
        buf = carry + data if carry else data
        usable = len(buf) - len(buf) % size
        words = np.frombuffer(buf, dtype=dtype, count=usable // size)
        hits = np.flatnonzero((words & bits) == want)
        if hits.size:
            return base - len(carry) + int(hits[0]) * size
        carry = buf[usable:]
    return None


def _search(session, verb: str, addr: int, char: str, text: str, out, count_eval) -> None:
    """/l /L /M value [mask]: print the first match as a symbolic address and move dot to it."""
    if verb == "?":
        raise MdbError("searching the object file is not supported")
    values = _value_words(text, count_eval)
    if not values:
        raise MdbError(f"expected value following {char}")
    if len(values) > 2:
        raise MdbError(f"only value and mask may follow {char}")
    size = SEARCH_SIZES[char]
    full = (1 << 8 * size) - 1
    value = values[0] & full
    mask = values[1] & full if len(values) == 2 else full
    found = search(session, addr, size, value, mask)
    if found is None:
        raise MdbError(f"no {size}-byte value 0x{value:x} (mask 0x{mask:x}) "
                       f"from 0x{addr:x} to the end of its mapping")
    out.write(symbolic(session, found) + "\n")
    session.dot = found
