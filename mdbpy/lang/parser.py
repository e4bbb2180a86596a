"""Statements of the mdb language (mdb_grammar.y): `[addr][,count] verb [args] [| verb ...]
[! shell]`, ended by `;` or a newline.

parse_statement() reads exactly one statement and says where it ended, so the engine can run
each command as soon as its terminator is read and, after a syntax error, resume at the next
`;` or newline. Dcmd names are not resolved here (the parser knows no registry); `$[expr]`
arguments stay expression trees until the engine evaluates them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mdbpy.lang import lexer
from mdbpy.lang.expr import ExprParser, Node
from mdbpy.lang.lexer import (CMD_CHARS, TERMINATORS, at_comment, comment_end, skip_blanks,
                              syntax_error)

FORMAT_VERBS = "/\\?@="
# after these verbs a write (v w W Z z) or search (l L M) letter switches to argument words
WRITE_SEARCH = "vwzWZlLM"


@dataclass
class Stage:
    """One pipeline stage. `name` is the dcmd's registry name ('walk', '$c', ':c', '$<', '>')
    or a format verb character when `fmt` is not None (then `fmt` is the raw format list).
    `args` holds words (str) and `$[expr]` trees until the engine evaluates them to ints."""

    name: str
    args: list = field(default_factory=list)
    fmt: str | None = None

    @property
    def is_format(self) -> bool:
        return self.fmt is not None


@dataclass
class Statement:
    """addr / count are expression trees (count is None without `,`); stages empty means a
    bare expression, an empty statement, or (with `shell` and no address) `!cmd`."""

    addr: Node | None = None
    count: Node | None = None
    stages: list[Stage] = field(default_factory=list)
    shell: str | None = None

    @property
    def is_empty(self) -> bool:
        return (self.addr is None and self.count is None and not self.stages
                and self.shell is None)


class StatementParser:
    """One statement from text[pos:]. `listen(start, end, kind)`, when given, hears each
    piece as it is taken: expression tokens (ExprParser's kinds), 'dcmd', 'verb', 'format'
    (a format list), 'pipe', 'end' (a terminator), 'comment', 'shell' (with its '!'),
    'option', 'word' (an argument), 'cast'/'variable' (`>` assignments), 'bracket'."""

    def __init__(self, text: str, pos: int, radix: int, listen=None):
        self.text = text
        self.pos = pos
        self.radix = radix
        self.listen = listen

    def _hear(self, start: int, end: int, kind: str) -> None:
        if self.listen is not None and end > start:
            self.listen(start, end, kind)

    # -- helpers ----------------------------------------------------------------------------
    def _blank(self) -> str:
        """Skip blanks; the character now at pos ('' at the end)."""
        self.pos = skip_blanks(self.text, self.pos)
        return self.text[self.pos:self.pos + 1]

    def _expression(self) -> Node:
        p = ExprParser(self.text, self.pos, self.radix, self.listen)
        node = p.parse()
        self.pos = p.pos
        return node

    def _at_end(self) -> bool:
        c = self._blank()
        return c == "" or c in TERMINATORS

    def _terminate(self) -> int:
        """Consume the terminator (or a comment, which ends the line); error on anything else."""
        c = self._blank()
        if c == "":
            return self.pos
        if c in TERMINATORS:
            self._hear(self.pos, self.pos + 1, "end")
            return self.pos + 1
        if at_comment(self.text, self.pos):
            end = comment_end(self.text, self.pos)
            self._hear(self.pos, end, "comment")
            return end
        raise syntax_error(self.text, self.pos)

    def _shell(self) -> str:
        start = self.pos
        self.pos = lexer.scan_shell(self.text, start)
        self._hear(start - 1, self.pos, "shell")
        cmd = self.text[start:self.pos].strip()
        if not cmd:
            raise syntax_error(self.text, start)
        return cmd

    # -- statement --------------------------------------------------------------------------
    def statement(self) -> tuple[Statement, int]:
        st = Statement()
        c = self._blank()
        if at_comment(self.text, self.pos):
            end = comment_end(self.text, self.pos)
            self._hear(self.pos, end, "comment")
            return st, end
        if c == "!" and not self.text.startswith("!=", self.pos):
            self.pos += 1
            st.shell = self._shell()
            return st, self._terminate()
        if c not in ("", ",") and c not in TERMINATORS and not self._at_verb():
            st.addr = self._expression()
        if self._blank() == ",":
            self._hear(self.pos, self.pos + 1, "op")
            self.pos += 1
            st.count = self._expression()
        if self._at_verb():
            st.stages.append(self._stage())
            while self._blank() == "|":
                self._hear(self.pos, self.pos + 1, "pipe")
                self.pos += 1
                self._blank()
                if not self._at_verb():
                    raise syntax_error(self.text, self.pos)
                st.stages.append(self._stage())
        if self._blank() == "!" and not self.text.startswith("!=", self.pos):
            if not st.stages and st.count is None:
                raise syntax_error(self.text, self.pos)
            self.pos += 1
            st.shell = self._shell()
        return st, self._terminate()

    def _at_verb(self) -> bool:
        t, i = self.text, self.pos
        c = t[i:i + 1]
        if c == "" or at_comment(t, i):
            return False
        if c in ":$":
            return t.startswith("::", i) or t.startswith(("$<", "$>"), i) or \
                t[i + 1:i + 2] in CMD_CHARS and t[i + 1:i + 2] != ""
        if c == ">":
            return not t.startswith(">>", i)
        if c == "=":
            return not t.startswith("==", i)
        return c in FORMAT_VERBS

    def _stage(self) -> Stage:
        t, i = self.text, self.pos
        if t.startswith("::", i):
            m = lexer.SYMBOL_RE.match(t, i + 2)
            if not m:
                raise syntax_error(t, i)
            self.pos = m.end()
            self._hear(i, self.pos, "dcmd")
            return Stage(m.group(), self._arguments())
        if t.startswith(("$<<", "$<", "$>"), i):
            name = "$<<" if t.startswith("$<<", i) else t[i:i + 2]
            self.pos = i + len(name)
            self._hear(i, self.pos, "verb")
            return Stage(name, self._arguments())
        if t[i] in ":$":
            self.pos = i + 2
            self._hear(i, self.pos, "verb")
            return Stage(t[i:i + 2], self._arguments())
        if t[i] == ">":
            self.pos = i + 1
            self._hear(i, i + 1, "op")
            cast = []
            if t[i + 1:i + 2] == "/" and t[i + 3:i + 4] == "/" and t[i + 2:i + 3].isalnum():
                cast = [t[i + 1:i + 4]]
                self.pos = i + 4
                self._hear(i + 1, i + 4, "variable")
            return Stage(">", cast + self._arguments("variable"))
        self.pos = i + 1
        self._hear(i, i + 1, "op")
        start = skip_blanks(t, self.pos)
        end = lexer.scan_raw(t, start)
        self.pos = end
        self._hear(start, end, "format")
        return Stage(t[i], fmt=t[start:end].strip())

    def _arguments(self, kind: str = "word") -> list:
        """The argument words (heard as `kind`, or 'option' for a -x) and $[expr]s."""
        args: list = []
        while True:
            c = self._blank()
            if c == "" or c in TERMINATORS or c in "|!" or at_comment(self.text, self.pos):
                return args
            if self.text.startswith("$[", self.pos):
                self._hear(self.pos, self.pos + 2, "bracket")
                self.pos += 2
                args.append(self._expression())
                if self._blank() != "]":
                    raise syntax_error(self.text, self.pos, "syntax error: $[ unmatched")
                self._hear(self.pos, self.pos + 1, "bracket")
                self.pos += 1
            else:
                start = self.pos
                word, self.pos = lexer.scan_word(self.text, self.pos)
                option = kind == "word" and len(word) > 1 and word[0] in "-+" \
                    and word[1].isalpha() and self.text[start] in "-+"
                self._hear(start, self.pos, "option" if option else kind)
                args.append(word)


def parse_statement(text: str, pos: int = 0, radix: int = 16,
                    listen=None) -> tuple[Statement, int]:
    """The statement starting at text[pos:] and the index just past its terminator.
    Raises ParseError (with `.pos`, where to resume the search for a terminator)."""
    return StatementParser(text, pos, radix, listen).statement()


def parse_all(text: str, radix: int = 16) -> list[Statement]:
    """Every statement of text (tests and tools; the engine parses one at a time)."""
    out = []
    pos = 0
    while pos < len(text):
        st, pos = parse_statement(text, pos, radix)
        out.append(st)
    return out
