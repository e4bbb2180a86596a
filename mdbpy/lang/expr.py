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
# nested parentheses and unary operators are recursion (three Python frames a level, on top of
# up to 32 nested macro files): bound them well below the interpreter's limit
MAX_DEPTH = 100


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
    it; `pos` is then where the statement parser carries on. `listen(start, end, kind)`, when
    given, hears every token taken (kind: the Token's), which is how the REPL colours a line
    exactly as it is parsed (spans.py)."""

    def __init__(self, text: str, pos: int, radix: int, listen=None):
        self.text = text
        self.pos = pos
        self.radix = radix
        self.depth = 0
        self.listen = listen

    def peek(self) -> Token:
        return scan_token(self.text, skip_blanks(self.text, self.pos), self.radix)

    def _take(self, t: Token) -> None:
        self.pos = t.end
        if self.listen is not None:
            self.listen(t.start, t.end, t.kind)

    def parse(self) -> Node:
        """Operator precedence with explicit stacks, so a long chain such as `1+1+...+1`
        costs no Python recursion; only parentheses and unary operators recurse (bounded by
        MAX_DEPTH)."""
        operands = [self.unary()]
        ops: list[tuple[int, str]] = []
        while True:
            t = self.peek()
            prec = BINARY_PRECEDENCE.get(t.value) if t.kind == "op" else None
            if prec is None:
                break
            self._take(t)
            while ops and ops[-1][0] >= prec:  # all operators are left-associative
                _reduce(ops, operands)
            ops.append((prec, t.value))
            operands.append(self.unary())
        while ops:
            _reduce(ops, operands)
        return operands[0]

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
        self._take(t)
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
            self._take(close)
            return inner
        raise syntax_error(self.text, t.start)


def _reduce(ops: list[tuple[int, str]], operands: list[Node]) -> None:
    """Replace the top two operands by the top operator applied to them."""
    right = operands.pop()
    operands[-1] = Binary(ops.pop()[1], operands[-1], right)


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
        """The value of a tree, evaluated left to right with an explicit stack: a tree may be
        thousands of operators deep (`1+1+...+1`) and must not meet the recursion limit."""
        todo: list[tuple[Node, bool]] = [(node, False)]
        values: list[int] = []
        while todo:
            n, operands_done = todo.pop()
            if isinstance(n, Binary):
                if operands_done:
                    right = values.pop()
                    values[-1] = self._binary(n.op, values[-1], right) & MASK64
                else:
                    todo += ((n, True), (n.right, False), (n.left, False))
            elif isinstance(n, (Unary, Deref)):
                if operands_done:
                    values[-1] = self._unary(n, values[-1]) & MASK64
                else:
                    todo += ((n, True), (n.operand, False))
            else:
                values.append(self._leaf(n) & MASK64)
        return values[0]

    def _unary(self, node: Unary | Deref, v: int) -> int:
        if isinstance(node, Deref):
            return self._read(node.space, v, node.size)
        return {"-": -v, "~": ~v, "#": int(v == 0)}[node.op]

    def _leaf(self, node: Node) -> int:
        if isinstance(node, Num):
            return node.value
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
        if name == "thread":  # mdb's read-only variable: the selected thread's id
            current = getattr(s, "current_thread", None)
            t = current() if callable(current) else None
            return t.tid if t is not None else 0
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
        if sym is not None and sym.type == "tls":  # its value is an offset in a TLS block
            from mdbpy.symbols.tls import thread_address

            return thread_address(self.session, self.session.symbols.object_named(sym.obj),
                                  sym.value, node.name)
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
