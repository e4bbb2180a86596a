"""mdb expressions: the syntax tree, the precedence parser (mdb_grammar.y) and the evaluator.

Values are 64-bit unsigned. Binary operators, lowest to highest precedence, all left-associative:
`|`, `^`, `&`, `== !=`, `<< >>`, `+ -`, `* % #`, `%%`; every unary operator (`- ~ # * %` and the
sized reads `*/c/` ... `%/8/`) binds tighter than any of them. `%` is signed division, `#` rounds
up to a multiple, `%%` is the modulus.

Parsing is pure (it needs only the input radix, as mdb's lexer converts numbers as it reads
them); evaluation reads the session: dot, variables, symbols and memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

from mdbpy.errors import MdbError
from mdbpy.lang.lexer import MASK64, Token, scan_token, skip_blanks, syntax_error

if TYPE_CHECKING:
    from mdbpy.session import Session

BINARY_PRECEDENCE = {
    "|": 1, "^": 2, "&": 3, "==": 4, "!=": 4, "<<": 5, ">>": 5,
    "+": 6, "-": 6, "*": 7, "%": 7, "#": 7, "%%": 8,
}
SIGN = 1 << 63
# nested parentheses and unary operators are recursion: bound them (target of a hostile macro)
MAX_DEPTH = 200


@dataclass(frozen=True)
class Num:
    value: int


@dataclass(frozen=True)
class Sym:
    """A symbol; `number` is the value a hex-looking word has when no such symbol exists."""

    name: str
    number: int | None = None


@dataclass(frozen=True)
class Var:
    name: str


@dataclass(frozen=True)
class DotWord:
    """The primary words `.` (dot), `&` (last dot a dcmd ran with), `+` and `^`."""

    word: str


@dataclass(frozen=True)
class Unary:
    op: str  # '-', '~', '#'
    operand: Node


@dataclass(frozen=True)
class Deref:
    space: str  # 'mem' (virtual memory, `*`) or 'obj' (the object file, `%`)
    size: int
    operand: Node


@dataclass(frozen=True)
class Binary:
    op: str
    left: Node
    right: Node


Node = Union[Num, Sym, Var, DotWord, Unary, Deref, Binary]


class ExprParser:
    """Parses one expression from text[pos:], stopping at the first token that cannot continue
    it; `pos` is then where the statement parser carries on."""

    def __init__(self, text: str, pos: int, radix: int):
        self.text = text
        self.pos = pos
        self.radix = radix
        self.depth = 0

    def peek(self) -> Token:
        return scan_token(self.text, skip_blanks(self.text, self.pos), self.radix)

    def parse(self, min_prec: int = 1) -> Node:
        left = self.unary()
        while True:
            t = self.peek()
            prec = BINARY_PRECEDENCE.get(t.value) if t.kind == "op" else None
            if prec is None or prec < min_prec:
                return left
            self.pos = t.end
            right = self.parse(prec + 1)
            left = Binary(t.value, left, right)

    def unary(self) -> Node:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise syntax_error(self.text, self.pos, "expression nested too deeply")
        try:
            return self._unary()
        finally:
            self.depth -= 1

    def _unary(self) -> Node:
        t = self.peek()
        if t.kind == "end":
            raise syntax_error(self.text, t.start)
        self.pos = t.end
        if t.kind == "num":
            return Num(t.value)
        if t.kind == "sym":
            name, number = t.value
            return DotWord(".") if name == "." else Sym(name, number)
        if t.kind == "var":
            return Var(t.value)
        if t.kind == "deref":
            return Deref(t.value[0], t.value[1], self.unary())
        if t.value in ("-", "~", "#"):
            return Unary(t.value, self.unary())
        if t.value == "*":
            return Deref("mem", 8, self.unary())
        if t.value == "%":
            return Deref("obj", 8, self.unary())
        if t.value in ("&", "+", "^"):
            return DotWord(t.value)
        if t.value == "(":
            inner = self.parse()
            close = self.peek()
            if close.kind != "op" or close.value != ")":
                raise syntax_error(self.text, close.start)
            self.pos = close.end
            return inner
        raise syntax_error(self.text, t.start)


def parse_expression(text: str, radix: int = 16) -> Node:
    """The whole of `text` as one expression (pipe input lines, ::eval-free uses)."""
    p = ExprParser(text, 0, radix)
    node = p.parse()
    end = skip_blanks(text, p.pos)
    if text[end:].strip():
        raise syntax_error(text, end)
    return node


def _signed(v: int) -> int:
    return v - (1 << 64) if v & SIGN else v


def _div(a: int, b: int) -> int:
    """C's signed division (truncates toward zero)."""
    q = abs(a) // abs(b)
    return q if (a < 0) == (b < 0) else -q


class Evaluator:
    """Evaluates expression trees against a session."""

    def __init__(self, session: Session):
        self.session = session

    def eval(self, node: Node) -> int:
        return self._eval(node) & MASK64

    def _eval(self, node: Node) -> int:
        if isinstance(node, Num):
            return node.value
        if isinstance(node, Binary):
            return self._binary(node.op, self.eval(node.left), self.eval(node.right))
        if isinstance(node, Unary):
            v = self.eval(node.operand)
            return {"-": -v, "~": ~v, "#": int(v == 0)}[node.op]
        if isinstance(node, Deref):
            return self._read(node.space, self.eval(node.operand), node.size)
        if isinstance(node, DotWord):
            return self._dotword(node.word)
        if isinstance(node, Var):
            return self.variable(node.name)
        return self.symbol(node)

    @staticmethod
    def _binary(op: str, a: int, b: int) -> int:
        if op in ("%", "%%", "#") and b == 0:
            raise MdbError("attempted to divide by zero")
        if op == "%":
            if a == SIGN and b == MASK64:
                raise MdbError("divide overflow")
            return _div(_signed(a), _signed(b))
        if op == "#":
            return _div(_signed((a + b - 1) & MASK64), _signed(b)) * b
        return {
            "|": lambda: a | b, "^": lambda: a ^ b, "&": lambda: a & b,
            "==": lambda: int(a == b), "!=": lambda: int(a != b),
            "<<": lambda: a << b if b < 64 else 0, ">>": lambda: a >> b,
            "+": lambda: a + b, "-": lambda: a - b, "*": lambda: a * b, "%%": lambda: a % b,
        }[op]()

    def _read(self, space: str, addr: int, size: int) -> int:
        if space == "mem":
            data = self.session.mem.read(addr, size)
        else:
            reader = getattr(self.session.symbols, "read_file", None)
            if reader is None:
                raise MdbError(f"failed to read from object file at 0x{addr:x}: "
                               "not supported by this target")
            data = reader(addr, size)
        return int.from_bytes(data[:size], "little")

    def _dotword(self, word: str) -> int:
        s = self.session
        if word == ".":
            return s.dot
        if word == "&":
            return s.last_dot
        if word == "+":
            return dot_incr(s, "+")
        new = (s.dot - s.incr) & MASK64
        if new > s.dot:
            raise MdbError("'^' would cause '.' to underflow")
        return new

    def variable(self, name: str) -> int:
        s = self.session
        if name == ".":
            return s.dot
        if name in s.vars:
            return s.vars[name]
        regs = getattr(s, "register_vars", None)
        if callable(regs):
            values = regs()
            if name in values:
                return values[name]
        raise MdbError(f"variable '{name}' is not defined")

    def symbol(self, node: Sym) -> int:
        name, obj = node.name, None
        if "`" in name:
            obj, name = name.rsplit("`", 1)
        sym = self.session.symbols.lookup(name, obj or None)
        if sym is not None:
            return sym.addr
        if node.number is not None:
            return node.number
        raise MdbError(f"failed to dereference symbol: unknown symbol name '{node.name}'")


def dot_incr(session: Session, op: str) -> int:
    """dot + increment, refusing to cross the sign bit as mdb_dot_incr does."""
    new = (session.dot + session.incr) & MASK64
    if (session.dot ^ new) & SIGN:
        raise MdbError(f"'{op}' would cause '.' to overflow")
    return new
