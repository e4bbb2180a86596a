"""Character-level scanning of the mdb language (mdb_lex.l), shared by the parser.

mdb's lexer has states: the initial/expression state (numbers, symbols, operators), the argument
state (whitespace-separated words with quotes), the format-list state and the shell-command
state. Here each state is a small function over (text, position); the parser calls the one the
grammar expects, exactly as mdb's lexer switches state after a verb.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from mdbpy.errors import ParseError

BLANKS = " \t"
TERMINATORS = ";\n"
CMD_CHARS = frozenset("?%@^_`abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
CAST_SIZES = {"c": 1, "1": 1, "s": 2, "2": 2, "i": 4, "4": 4, "l": 8, "8": 8}

SYMBOL_RE = re.compile(r"[a-zA-Z_.][0-9a-zA-Z_.`]*")
_HEXRUN = re.compile(r"[0-9a-fA-F]+")
_PREFIXED = (
    (re.compile(r"0[tT]([0-9]+)\.([0-9]+)"), 0),  # decimal float, as IEEE double bits
    (re.compile(r"0[xX]([0-9a-fA-F]+)"), 16),
    (re.compile(r"0[tT]([0-9]+)"), 10),
    (re.compile(r"0[oO]([0-7]+)"), 8),
    (re.compile(r"0[iI]([01]+)"), 2),
)
VARNAME = re.compile(r"[a-zA-Z_.][0-9a-zA-Z_.`]*|[0-9]")  # what `<name` reads
_TWO_CHAR_OPS = ("==", "!=", "%%", "<<", ">>")
_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}
MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class Token:
    """One expression-state token. kind: num (value int), sym (value (name, number-or-None)),
    var (value name), deref (value (space, size)), op (value the operator text), end."""

    kind: str
    value: object
    start: int
    end: int


def syntax_error(text: str, pos: int, what: str = "syntax error",
                 resume: int | None = None) -> ParseError:
    """A ParseError naming the text where parsing stopped, as mdb's `near "..."`. Attributes:
    `what` and `near` (so the engine can add a line number), and `pos`, where the engine
    resumes its search for the next terminator (`resume` when the scan went further)."""
    near = ""
    i = pos
    while i < len(text) and text[i] not in BLANKS + TERMINATORS and len(near) < 24:
        near += text[i]
        i += 1
    if not near and pos < len(text) and text[pos] != "\n":
        near = text[pos]
    err = ParseError(f'{what} near "{near}"' if near else f"{what} at end of command")
    err.what, err.near = what, near
    err.pos = pos if resume is None else resume
    err.at = pos  # where parsing stopped (the REPL colours from there on by tokens alone)
    return err


def skip_blanks(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in BLANKS:
        pos += 1
    return pos


def skip_to_terminator(text: str, pos: int) -> int:
    """Where parsing resumes after a syntax error: just past the next `;` or newline."""
    while pos < len(text):
        if text[pos] in TERMINATORS:
            return pos + 1
        pos += 1
    return pos


def at_comment(text: str, pos: int) -> bool:
    return text.startswith("//", pos)


def comment_end(text: str, pos: int) -> int:
    """A `//` comment eats the rest of the line, newline included, and ends the statement."""
    nl = text.find("\n", pos)
    return len(text) if nl < 0 else nl + 1


def unescape(s: str) -> str:
    """C escape sequences (mdb's stresc2chr): \\n \\t ..., octal \\ooo, \\xHH; an unknown
    escape stands for the character itself."""
    if "\\" not in s:
        return s
    out = []
    i = 0
    while i < len(s):
        c = s[i]
        if c != "\\" or i + 1 >= len(s):
            out.append(c)
            i += 1
            continue
        e = s[i + 1]
        i += 2
        if e in _ESCAPES:
            out.append(_ESCAPES[e])
        elif e in "01234567":
            j = i
            while j < len(s) and j < i + 2 and s[j] in "01234567":
                j += 1
            out.append(chr(int(e + s[i:j], 8) & 0xFF))
            i = j
        elif e == "x" and i < len(s) and s[i] in "0123456789abcdefABCDEF":
            j = i
            while j < len(s) and j < i + 2 and s[j] in "0123456789abcdefABCDEF":
                j += 1
            out.append(chr(int(s[i:j], 16)))
            i = j
        else:
            out.append(e)
    return "".join(out)


def quoted_end(text: str, pos: int, q: str) -> int:
    """Index of the quote closing the one at pos (same line; `\\` escapes it in "..." and in
    character constants)."""
    i = pos + 1
    while i < len(text) and text[i] != "\n":
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] != "\n":
            i += 2
            continue
        if text[i] == q:
            return i
        i += 1
    raise syntax_error(text, pos, f"syntax error: {q} unmatched", resume=i)


# no 64-bit value needs more digits, and CPython refuses to convert decimal strings of 4300
MAX_DIGITS = 4000


def _to_number(digits: str, radix: int, text: str, pos: int) -> int:
    if len(digits) > MAX_DIGITS:
        raise syntax_error(text, pos, f"number with more than {MAX_DIGITS} digits")
    try:
        return int(digits, radix) & MASK64
    except ValueError:
        raise syntax_error(text, pos, f"invalid number '{digits}' in radix {radix}") from None


def scan_token(text: str, pos: int, radix: int) -> Token:
    """The expression-state token at pos (blanks already skipped)."""
    if pos >= len(text):
        return Token("end", None, pos, pos)
    c = text[pos]
    two = text[pos:pos + 2]
    if c in "*%" and text[pos + 1:pos + 2] == "/" and text[pos + 3:pos + 4] == "/" \
            and text[pos + 2:pos + 3].isalnum():
        cast = text[pos + 2]
        if cast not in CAST_SIZES:
            raise syntax_error(text, pos, f"invalid cast -- {text[pos:pos + 4]}")
        return Token("deref", ("mem" if c == "*" else "obj", CAST_SIZES[cast]), pos, pos + 4)
    if two in _TWO_CHAR_OPS:
        return Token("op", two, pos, pos + 2)
    if c == "<":
        m = VARNAME.match(text, pos + 1)
        if m:
            return Token("var", m.group(), pos, m.end())
    if c == "'":
        end = quoted_end(text, pos, "'")
        raw = unescape(text[pos + 1:end]).encode("latin-1", "replace")
        if len(raw) > 8:
            raise syntax_error(text, pos, "character constant may not exceed 8 bytes")
        return Token("num", int.from_bytes(raw, "big") if raw else 0, pos, end + 1)
    if c.isdigit():
        for rx, base in _PREFIXED:
            m = rx.match(text, pos)
            if m:
                if base == 0:
                    whole, frac = m.group(1), m.group(2)
                    value = struct.unpack("<Q", struct.pack("<d", float(f"{whole}.{frac}")))[0]
                else:
                    value = _to_number(m.group(1), base, text, pos)
                return Token("num", value & MASK64, pos, m.end())
        m = _HEXRUN.match(text, pos)
        return Token("num", _to_number(m.group(), radix, text, pos), pos, m.end())
    m = SYMBOL_RE.match(text, pos)
    if m:
        hexrun = _HEXRUN.match(text, pos)
        if hexrun and hexrun.end() >= m.end():
            # a hex-looking word is a symbol first, else a number in the current radix
            try:
                number = _to_number(hexrun.group(), radix, text, pos)
            except ParseError:
                number = None
            return Token("sym", (hexrun.group(), number), pos, hexrun.end())
        return Token("sym", (m.group(), None), pos, m.end())
    return Token("op", c, pos, pos + 1)


def scan_word(text: str, pos: int) -> tuple[str, int]:
    """One argument-state word: runs of plain characters and '...' / "..." parts, quotes
    removed, C escapes processed inside "...". Ends at a blank, `;`, newline, `!`, `|`, or
    `$[`."""
    out = []
    i = pos
    while i < len(text):
        c = text[i]
        if c in BLANKS or c in TERMINATORS or c in "!|" or text.startswith("$[", i):
            break
        if c == "'":
            end = text.find("'", i + 1)
            nl = text.find("\n", i + 1)
            if end < 0 or (0 <= nl < end):
                raise syntax_error(text, i, "syntax error: ' unmatched",
                                   resume=len(text) if nl < 0 else nl)
            out.append(text[i + 1:end])
            i = end + 1
        elif c == '"':
            end = quoted_end(text, i, '"')
            out.append(unescape(text[i + 1:end]))
            i = end + 1
        else:
            out.append(c)
            i += 1
    return "".join(out), i


def scan_raw(text: str, pos: int) -> int:
    """The end of a format list (or of a write/search verb's values): the next `;`, newline,
    `|`, `!` or `//`, not counting those inside quotes or `$[...]`."""
    i = pos
    while i < len(text):
        c = text[i]
        if c in TERMINATORS or c in "|!" or text.startswith("//", i):
            return i
        if c in "'\"":
            i = quoted_end(text, i, c) + 1
        elif text.startswith("$[", i):
            i = _bracket_end(text, i + 2) + 1
        else:
            i += 1
    return i


def _bracket_end(text: str, pos: int) -> int:
    """Index of the `]` closing a `$[` whose body starts at pos."""
    depth = 0
    i = pos
    while i < len(text):
        c = text[i]
        if c in TERMINATORS:
            break
        if c == "'":
            i = quoted_end(text, i, c) + 1
            continue
        if c == "[":
            depth += 1
        elif c == "]":
            if depth == 0:
                return i
            depth -= 1
        i += 1
    raise syntax_error(text, pos - 2, "syntax error: $[ unmatched", resume=i)


def scan_shell(text: str, pos: int) -> int:
    """The end of a shell command: everything up to the next `;` or newline."""
    i = pos
    while i < len(text) and text[i] not in TERMINATORS:
        i += 1
    return i

