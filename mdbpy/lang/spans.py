"""A line of mdb input cut into classified spans, by the language's own parser: what the REPL
colours as the user types (repl/lexer.py) is exactly what the engine will parse.

Each statement is parsed with a listener (parser.StatementParser, expr.ExprParser) that hears
every piece as it is taken; the pieces are refined here where colour wants more than grammar
(a number's radix prefix, a format list's counts, letters and strings). A half-typed or wrong
statement is parsed as far as it goes; the rest of it, up to where the engine would resume, is
classified token by token with the same lexer (lexer.scan_token), since a line being typed is
wrong most of the time. Every character ends up in one span, so the spans rebuild the line.
"""

from __future__ import annotations

import re

from mdbpy.errors import ParseError
from mdbpy.lang import lexer
from mdbpy.lang.parser import parse_statement

# the kinds of span (beyond the parser's: see StatementParser)
NUMBER_KINDS = ((re.compile(r"0[xX][0-9a-fA-F]+\Z"), "hex"), (re.compile(r"0[tT][0-9]+\.[0-9]+\Z"),
                "float"), (re.compile(r"0[tT][0-9]+\Z"), "decimal"),
                (re.compile(r"0[oO][0-7]+\Z"), "octal"), (re.compile(r"0[iI][01]+\Z"), "binary"),
                (re.compile(r"[0-9][0-9a-fA-F]*\Z"), "number"))
_FORMAT_PIECE = re.compile(r'"(?:\\.|[^"\\])*"?|\$\[[^\]]*\]?|[0-9]+|\S')
_VERB = re.compile(r"::[A-Za-z_$][\w$`.]*|::|\$<<|\$<|\$>|[$:][?%@A-Z^_`a-z]")


def spans(text: str, radix: int = 16) -> list[tuple[int, int, str]]:
    """(start, end, kind) covering every character of text, in order."""
    heard: list[tuple[int, int, str]] = []
    pos = 0
    while pos < len(text):
        mark = len(heard)
        try:
            _st, end = parse_statement(text, pos, radix,
                                       lambda a, b, k: heard.append((a, b, k)))
        except ParseError as e:
            at = getattr(e, "at", pos)
            end = max(lexer.skip_to_terminator(text, getattr(e, "pos", at)), pos + 1)
            heard[mark:] = [h for h in heard[mark:] if h[1] <= at]  # before the error
            heard += _lexical(text, at, end)
        pos = max(end, pos + 1)
    return _cover(text, [piece for a, b, k in heard for piece in _refine(text, a, b, k)])


def _refine(text: str, a: int, b: int, kind: str):
    """A heard piece in the classes colour wants."""
    piece = text[a:b]
    if kind == "num":
        yield a, b, _number_kind(piece)
    elif kind == "sym":
        yield a, b, "name"
    elif kind == "var":
        yield a, b, "variable"
    elif kind in ("op", "deref"):
        yield a, b, "punct" if piece in ";|" else "op"
    elif kind == "comment":
        yield a, b - (piece.endswith("\n")), "comment"  # the newline is no comment's
    elif kind == "shell":
        yield a, a + 1, "op"
        yield a + 1, b, "shell"
    elif kind == "format":
        for m in _FORMAT_PIECE.finditer(piece):
            s = m.group()
            k = "string" if s[0] == '"' else "bracket" if s.startswith("$[") else \
                "count" if s.isdigit() else "format"
            yield a + m.start(), a + m.end(), k
    elif kind == "word":
        k = _number_kind(piece)
        yield a, b, "string" if piece[:1] in "\"'" else k if k != "text" else "name"
    else:
        yield a, b, kind


def _number_kind(s: str) -> str:
    return next((k for rx, k in NUMBER_KINDS if rx.match(s)), "text")


def _lexical(text: str, pos: int, end: int) -> list[tuple[int, int, str]]:
    """[pos, end) of a statement the parser gave up on, token by token as the lexer reads
    them (in the heard kinds)."""
    out = []
    while pos < end:
        pos = lexer.skip_blanks(text, pos)
        if pos >= end:
            break
        c = text[pos]
        if c == "\n":
            pos += 1
            continue
        if lexer.at_comment(text, pos):
            stop = min(lexer.comment_end(text, pos), end)
            out.append((pos, stop, "comment"))
            pos = stop
            continue
        m = _VERB.match(text, pos)
        if m and m.end() <= end:
            out.append((pos, m.end(), "dcmd" if m.group().startswith("::") else "verb"))
            pos = m.end()
            continue
        if c == "!" and not text.startswith("!=", pos):
            stop = min(lexer.scan_shell(text, pos + 1), end)
            out.append((pos, stop, "shell"))
            pos = stop
            continue
        if c in "\"'" or text.startswith("$[", pos) or c in "];|":
            stop = _quoted(text, pos, end) if c in "\"'" else pos + (2 if c == "$" else 1)
            out.append((pos, stop, "string" if c in "\"'" else "bracket" if c in "$]" else
                        "pipe" if c == "|" else "end"))
            pos = stop
            continue
        try:
            t = lexer.scan_token(text, pos, 16)
            stop, kind = min(max(t.end, pos + 1), end), t.kind
        except ParseError:
            stop, kind = pos + 1, "text"
        out.append((pos, stop, kind))
        pos = stop
    return out


def _quoted(text: str, pos: int, end: int) -> int:
    """The end of the quoted string at pos, or of the line when it is not closed."""
    try:
        return min(lexer.quoted_end(text, pos, text[pos]) + 1, end)
    except ParseError:
        nl = text.find("\n", pos)
        return min(end, len(text) if nl < 0 else nl)


def _cover(text: str, pieces: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    """The pieces in order, the characters between them as 'space' or 'text'."""
    out = []
    pos = 0
    for a, b, k in sorted(pieces):
        if a < pos or a == b:
            continue  # a piece heard twice (a retried parse), or an empty one
        if a > pos:
            gap = text[pos:a]
            out.append((pos, a, "space" if gap.isspace() else "text"))
        out.append((a, b, k))
        pos = b
    if pos < len(text):
        gap = text[pos:]
        out.append((pos, len(text), "space" if gap.isspace() else "text"))
    return out
