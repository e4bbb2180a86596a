"""The scenario language: a simulated program's life as a list of statements, one per line.

A scenario is what a C program did to its heap, told without C: which threads ran which
functions, what they allocated, where they stored the pointers, what they freed, and which bytes
they wrote. There are no loops or conditions, so a scenario is its own execution trace and the
simulator can lay out the program's code (one call site per statement) before running it.

    program NAME              the simulated program's name (its file and `::status`)
    pid N | cpus N | seed N   process id, CPUs in the tracks, seed of the timestamp steps
    cache NAME SIZE           a named cache of SIZE-byte objects (kmem_cache_create)
    global NAME [SIZE]        a zeroed global of SIZE bytes (default 8: one pointer)
    thread NAME [cpu N]       switch to thread NAME, creating it on first use
    call FUNC | ret           enter FUNC in the current thread / return from it
    NAME = kmalloc SIZE       allocate from the kmalloc size class; kzalloc zeroes the object;
    NAME = alloc CACHE        `alloc` takes a cache by name. The pointer is kept in the
                              current frame's stack slot NAME (a C local variable)
    free NAME                 kfree the object NAME was bound to
    store DEST = SRC          write a pointer: SRC is NAME[+-OFF] (the pointer an object name
                              or a global holds, plus OFF), &GLOBAL[+-OFF] (a global's
                              address), null, or a number
    write DEST "text"         write bytes (Python byte-string escapes) ...
    write DEST u64 N          ... or an integer (u8, u16, u32, u64, little-endian)
    memset DEST BYTE COUNT    fill COUNT bytes
    damage COUNT [seed N] [KIND ...]
                              when the scenario ends, COUNT random damages (of the given
                              kinds, default all: see mdbpy.sim.damage) to the heap's
                              metadata and slots, recorded in the truth

DEST is NAME[+-OFF] (inside the object NAME is bound to, or the global NAME) or `local NAME`
(a stack slot of the current frame). `#` starts a comment. Bugs are written as what the
program did: a write past an object's end, a store that drops the last reference, a second
`free`. Every error is a one-line ScenarioError naming the line.
"""

from __future__ import annotations

import ast
import re
import warnings
from typing import NamedTuple

from mdbpy.errors import MdbError
from mdbpy.sim.machine import STACK_SIZE

MAX_SIZE = 1 << 20  # largest object, global or memset a scenario may ask for
# what a whole scenario may ask for: its memory (globals, allocations, thread stacks, counted
# as asked, frees not subtracted), its statements and its threads (thread ids are pid + k)
MAX_MEMORY = 256 << 20
MAX_STATEMENTS = 1 << 20
MAX_THREADS = 4096
MAX_TID = (1 << 31) - 1
INT_KINDS = {"u8": 1, "u16": 2, "u32": 4, "u64": 8}
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[^\s"]+|"')
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_CACHE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*\Z")
_REF = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?:([+-])(\w+))?\Z")


class ScenarioError(MdbError):
    """A scenario that cannot be parsed or run; the message names the line."""

    def __init__(self, line: int, msg: str):
        self.line = line
        super().__init__(f"scenario line {line}: {msg}")


class Ref(NamedTuple):
    """A place or a value: the object or global `name` plus `offset`, a stack slot (`local`),
    or a global's own address (`address`: `&NAME` as a source)."""

    name: str
    offset: int = 0
    local: bool = False
    address: bool = False


class Stmt(NamedTuple):
    line: int
    op: str
    args: tuple = ()


def parse(text: str) -> list[Stmt]:
    """The statements of a scenario, or a ScenarioError at the first bad line (including the
    line where the scenario asks for more than its budget: see _Budget)."""
    out = []
    budget = _Budget()
    for n, raw in enumerate(text.splitlines(), 1):
        words = _tokens(raw, n)
        if words:
            out.append(Stmt(n, *_statement(words, n)))
            budget.charge(out[-1])
    return out


class _Budget:
    """What the statements so far ask the simulator to build, so that a scenario asking for
    2**40 bytes or a million threads is refused at the line that crosses a limit instead of
    being attempted."""

    def __init__(self):
        self.statements = 0
        self.memory = 0
        self.pid = 0
        self.threads = {"main"}
        self.caches: dict[str, int] = {}

    def charge(self, st: Stmt) -> None:
        self.statements += 1
        if self.statements > MAX_STATEMENTS:
            raise ScenarioError(st.line, f"more than {MAX_STATEMENTS} statements")
        if st.op == "pid":
            self.pid = st.args[0]
        elif st.op == "cache":
            self.caches.setdefault(*st.args)
        elif st.op == "global":
            self._memory(st.line, st.args[1])
        elif st.op == "alloc":
            _name, how, arg = st.args
            self._memory(st.line, self.caches.get(arg, 0) if how == "cache" else arg)
        elif st.op == "thread" and st.args[0] not in self.threads:
            self.threads.add(st.args[0])
            if len(self.threads) > MAX_THREADS:
                raise ScenarioError(st.line, f"more than {MAX_THREADS} threads")
            self._memory(st.line, STACK_SIZE)
        self._tids(st.line)

    def _memory(self, line: int, size: int) -> None:
        self.memory += size
        if self.memory > MAX_MEMORY:
            raise ScenarioError(line, f"the scenario asks for more than {MAX_MEMORY >> 20} MiB "
                                      f"of memory")

    def _tids(self, line: int) -> None:
        if self.pid and self.pid + len(self.threads) - 1 > MAX_TID:
            raise ScenarioError(line, f"pid {self.pid} leaves no thread id for "
                                      f"{len(self.threads)} threads (ids end at {MAX_TID})")


def _tokens(line: str, n: int) -> list[str]:
    words = []
    for tok in _TOKEN.findall(line):
        if tok.startswith("#"):
            break
        if tok == '"':
            raise ScenarioError(n, "unterminated string")
        words.append(tok)
    return words


def _number(tok: str, n: int, what: str, lo: int = 0, hi: int = (1 << 64) - 1) -> int:
    try:
        v = int(tok, 0)
    except ValueError:
        raise ScenarioError(n, f"{what}: expected a number, got '{tok}'") from None
    if not lo <= v <= hi:
        raise ScenarioError(n, f"{what} {v} is out of range [{lo}, {hi}]")
    return v


def _ident(tok: str, n: int, what: str, pattern=_IDENT) -> str:
    if not pattern.match(tok):
        raise ScenarioError(n, f"bad {what} '{tok}'")
    return tok


def _ref(tok: str, n: int) -> Ref:
    m = _REF.match(tok)
    if not m:
        raise ScenarioError(n, f"bad reference '{tok}' (expected NAME, NAME+OFF or NAME-OFF)")
    off = _number(m.group(3), n, "offset", hi=MAX_SIZE) if m.group(3) else 0
    return Ref(m.group(1), -off if m.group(2) == "-" else off)


def _dest(words: list[str], n: int) -> tuple[Ref, list[str]]:
    """A DEST at the front of words, and the words after it."""
    if not words:
        raise ScenarioError(n, "missing destination")
    if words[0] == "local":
        if len(words) < 2:
            raise ScenarioError(n, "`local` needs a slot name")
        return Ref(_ident(words[1], n, "slot name"), 0, True), words[2:]
    return _ref(words[0], n), words[1:]


def _arity(words: list[str], n: int, counts, usage: str) -> None:
    if len(words) not in counts:
        raise ScenarioError(n, f"usage: {usage}")


def _statement(w: list[str], n: int) -> tuple[str, tuple]:
    op = w[0]
    if len(w) >= 2 and w[1] == "=":
        return _alloc(w, n)
    if op in ("pid", "cpus", "seed"):
        _arity(w, n, (2,), f"{op} N")
        hi = {"pid": (1 << 31) - 1, "cpus": 1024, "seed": (1 << 64) - 1}[op]
        return op, (_number(w[1], n, op, 1 if op != "seed" else 0, hi),)
    if op == "program":
        _arity(w, n, (2,), "program NAME")
        return op, (_ident(w[1], n, "program name", _CACHE),)
    if op == "cache":
        _arity(w, n, (3,), "cache NAME SIZE")
        return op, (_ident(w[1], n, "cache name", _CACHE),
                    _number(w[2], n, "object size", 1, 8192))
    if op == "global":
        _arity(w, n, (2, 3), "global NAME [SIZE]")
        size = _number(w[2], n, "global size", 1, MAX_SIZE) if len(w) == 3 else 8
        return op, (_ident(w[1], n, "global name"), size)
    if op == "thread":
        if len(w) == 2:
            return op, (_ident(w[1], n, "thread name"), None)
        _arity(w, n, (4,), "thread NAME [cpu N]")
        if w[2] != "cpu":
            raise ScenarioError(n, "usage: thread NAME [cpu N]")
        return op, (_ident(w[1], n, "thread name"), _number(w[3], n, "cpu", 0, 1023))
    if op == "call":
        _arity(w, n, (2,), "call FUNC")
        return op, (_ident(w[1], n, "function name"),)
    if op == "ret":
        _arity(w, n, (1,), "ret")
        return op, ()
    if op == "free":
        _arity(w, n, (2,), "free NAME")
        return op, (_ident(w[1], n, "object name"),)
    if op == "store":
        dest, rest = _dest(w[1:], n)
        if len(rest) != 2 or rest[0] != "=":
            raise ScenarioError(n, "usage: store DEST = SRC")
        return op, (dest, _source(rest[1], n))
    if op == "write":
        dest, rest = _dest(w[1:], n)
        return op, (dest, _data(rest, n))
    if op == "memset":
        dest, rest = _dest(w[1:], n)
        _arity(rest, n, (2,), "memset DEST BYTE COUNT")
        return op, (dest, _number(rest[0], n, "byte", 0, 255),
                    _number(rest[1], n, "count", 1, MAX_SIZE))
    if op == "damage":
        return op, _damage(w, n)
    raise ScenarioError(n, f"unknown statement '{op}'")


def _damage(w: list[str], n: int) -> tuple:
    """(count, seed or None, kinds): the kinds are checked when the statement runs."""
    if len(w) < 2:
        raise ScenarioError(n, "usage: damage COUNT [seed N] [KIND ...]")
    count = _number(w[1], n, "damage count", 1, 1000)
    rest, seed = w[2:], None
    if rest[:1] == ["seed"]:
        if len(rest) < 2:
            raise ScenarioError(n, "usage: damage COUNT [seed N] [KIND ...]")
        seed, rest = _number(rest[1], n, "seed"), rest[2:]
    return count, seed, tuple(_ident(k, n, "damage kind") for k in rest)


def _alloc(w: list[str], n: int) -> tuple[str, tuple]:
    name = _ident(w[0], n, "object name")
    _arity(w, n, (4,), f"{name} = kmalloc SIZE | kzalloc SIZE | alloc CACHE")
    how = w[2]
    if how in ("kmalloc", "kzalloc"):
        return "alloc", (name, how, _number(w[3], n, "allocation size", 1, 8192))
    if how == "alloc":
        return "alloc", (name, "cache", _ident(w[3], n, "cache name", _CACHE))
    raise ScenarioError(n, f"unknown allocator '{how}' (kmalloc, kzalloc or alloc)")


def _source(tok: str, n: int) -> Ref | int:
    if tok == "null":
        return 0
    if tok[:1].isdigit():
        return _number(tok, n, "value")
    if tok.startswith("&"):
        return _ref(tok[1:], n)._replace(address=True)
    return _ref(tok, n)


def _data(rest: list[str], n: int) -> bytes:
    if len(rest) == 1 and rest[0].startswith('"'):
        try:
            with warnings.catch_warnings():  # an unknown escape such as \q is an error here
                warnings.simplefilter("error")
                data = ast.literal_eval("b" + rest[0])
        except (SyntaxError, ValueError, Warning):
            raise ScenarioError(n, f"bad string {rest[0]} (bytes only: use \\x escapes)") from None
        if not data:
            raise ScenarioError(n, "empty string")
        return data
    if len(rest) == 2 and rest[0] in INT_KINDS:
        size = INT_KINDS[rest[0]]
        return _number(rest[1], n, rest[0], 0, (1 << (8 * size)) - 1).to_bytes(size, "little")
    raise ScenarioError(n, 'usage: write DEST "text" | write DEST u8|u16|u32|u64 N')
