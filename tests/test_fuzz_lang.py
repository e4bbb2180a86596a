"""Fuzzing the mdb language (lexer, statement parser, expression evaluator, engine, formats):
command lines built from the language's tokens, random character soup, and mutations of valid
commands, run through a Session on a synthetic target. Each line either works or prints
one-line `mdbpy:` errors; nothing escapes but `::quit`, and a shell escape never runs
anything but a command the input itself spelled out (the shell is replaced by a recorder)."""

from __future__ import annotations

import io
from pathlib import Path

from fuzz_support import assert_one_line_errors, fuzz_settings, watchdog
from hypothesis import given
from hypothesis import strategies as st

from mdbpy.errors import CommandAbort, QuitSession
from mdbpy.lang.engine import Engine
from mdbpy.lang.formats import FORMATS
from mdbpy.session import Session
from mdbpy.symbols.base import Symbol
from mdbpy.target.base import X86_64_REGS, Thread
from mdbpy.target.synthetic import SyntheticTarget

MACROS = Path(__file__).resolve().parent / "macros"
OUTPUT_LIMIT = 1 << 16  # characters of output one example may print before it is cut off
# commands that act outside the session (files, modules, the process): not for random input
UNSAFE_DCMDS = ("load", "unload", "gcore", "kill", ":k", "release", ":R")


class BoundedOutput(io.StringIO):
    """The session's output: a command that prints more than OUTPUT_LIMIT is aborted, as a
    user would stop it, so a random `=` with a repeat count cannot fill the memory."""

    def write(self, s: str) -> int:
        if self.tell() + len(s) > OUTPUT_LIMIT:
            raise CommandAbort("output limit reached")
        return super().write(s)


class Harness:
    """A fresh session per example (no state leaks between inputs): a linked list, a string
    and a stack in memory, one thread whose registers point into them, symbols in two
    objects, the test macros, and a shell that records instead of running."""

    def __init__(self):
        mem = bytearray(0x1000)
        for off, nxt in ((0x00, 0x1020), (0x20, 0x1040), (0x40, 0)):
            mem[off:off + 16] = nxt.to_bytes(8, "little") + (off + 1).to_bytes(8, "little")
        mem[0x80:0x86] = b"hello\0"
        regs = {r: 0x1000 + 8 * i for i, r in enumerate(X86_64_REGS)}
        regs.update(rip=0x1010, rsp=0x8100, rbp=0x8100)
        target = SyntheticTarget([(0x1000, bytes(mem), "rwxp", "/bin/prog"),
                                  (0x8000, bytes(0x1000), "rw-p", "[stack]")],
                                 threads=[Thread(77, regs=regs), Thread(78, regs=regs)],
                                 writable=True)
        self.out, self.err = BoundedOutput(), io.StringIO()
        self.session = Session(target, out=self.out, err=self.err)
        self.session.macro_path = [str(MACROS)]
        for name in UNSAFE_DCMDS:
            self.session.registry.dcmds.pop(name, None)
        self.session.symbols.add_symbols("prog", [
            Symbol("main", 0x1000, 0x10), Symbol("list", 0x1000, 0x60, "object"),
            Symbol("hello", 0x1080, 6, "object"), Symbol("add", 0x1090, 8)], is_exe=True)
        self.session.symbols.add_symbols("libc.so.6", [Symbol("dup", 0x1100, 8)])
        self.engine = Engine(self.session)
        self.shell: list[str] = []
        self.engine._shell = self._record_shell

    def _record_shell(self, command: str, stdin_text: str | None) -> int:
        self.shell.append(command)
        return 0


def check_commands(example: tuple[str, bool]) -> None:
    """Run the text as `-e` input (or as a stream, where bare expressions repeat the last
    command): only one-line errors, no escaping exception, shell commands only as typed."""
    text, as_stream = example
    h = Harness()
    try:
        with watchdog():
            if as_stream:
                h.engine.run_stream(io.StringIO(text))
            else:
                h.engine.run_string(text)
    except QuitSession:
        pass
    finally:
        h.session.close()
    assert_one_line_errors(h.err.getvalue())
    for command in h.shell:
        assert command in text, f"shell ran {command!r}, which the input does not contain"


# -- the language's tokens --------------------------------------------------------------------
NUMBERS = st.one_of(
    st.integers(0, (1 << 64) - 1).map(lambda v: f"{v:x}"),
    st.integers(0, 1 << 72).map(lambda v: f"0x{v:x}"),
    st.integers(0, 10 ** 25).map(lambda v: f"0t{v}"),
    st.integers(0, 1 << 66).map(lambda v: f"0o{v:o}"),
    st.integers(0, 1 << 66).map(lambda v: f"0i{v:b}"),
    st.tuples(st.integers(0, 10 ** 30), st.integers(0, 999)).map(lambda t: f"0t{t[0]}.{t[1]}"),
    st.sampled_from(["0", "1000", "1080", "8100", "0t" + "9" * 5000, "f" * 40, "0x", "0t",
                     "0o9", "'a'", "'abcdefgh'", "'abcdefghi'", "'\\n'", "'\\x4'", "''", "'",
                     "0t1.", "1e5"]),
)
ATOMS = st.one_of(
    NUMBERS,
    st.sampled_from(["main", "list", "hello", "add", "dup", "nosuch", "prog`main",
                     "libc.so.6`dup", "nosuch`main", "`main", "main`", ".", "&", "+", "^",
                     "<rip", "<rsp", "<rflags", "<9", "<.", "<x", "<nosuch", "<", "<b",
                     "<hits"]),
)
UNARY = ["-", "~", "#", "*", "%", "*/c/", "*/s/", "*/i/", "*/l/", "*/8/", "%/4/", "*/q/"]
BINARY = ["|", "^", "&", "==", "!=", "<<", ">>", "+", "-", "*", "%", "#", "%%"]
EXPR = st.recursive(ATOMS, lambda e: st.one_of(
    st.tuples(st.sampled_from(UNARY), e).map("".join),
    st.tuples(e, st.sampled_from(BINARY), e, st.sampled_from(["", " "])).map(
        lambda t: t[3].join(t[:3])),
    e.map(lambda x: f"({x})"),
    e.map(lambda x: f"({x}"),
    e.map(lambda x: f"{x})"),
), max_leaves=10)
DEEP = st.tuples(st.integers(1, 5000), st.sampled_from(
    ["({})", "-{}", "~{}", "*{}", "1+{}", "{}+1", "1*({})", "$[{}]"])).map(
    lambda t: _nest(t[1], t[0]))


def _nest(pattern: str, depth: int) -> str:
    left, right = pattern.split("{}")
    return left * depth + "1" + right * depth


FORMAT_LIST = st.lists(st.one_of(
    st.sampled_from(sorted(FORMATS)),
    st.integers(0, 40).map(str),
    st.sampled_from(['"lit"', '"\\n\\t"', '"', "99999999", "1" * 30, "$[", "//x"]),
    EXPR.map(lambda x: f"$[{x}]"),
), max_size=6).map("".join)
FORMAT_STAGE = st.one_of(
    st.tuples(st.sampled_from(["/", "\\", "?", "=", "@"]), FORMAT_LIST).map("".join),
    st.tuples(st.sampled_from(["/", "?"]), st.sampled_from("vwWZzlLM"),
              st.lists(st.one_of(EXPR, EXPR.map(lambda x: f"$[{x}]")), max_size=3)).map(
        lambda t: f"{t[0]}{t[1]} " + " ".join(t[2])),
)
WORDS = st.one_of(
    st.sampled_from(["-v", "-n", "-a", "-l", "-f", "-t", "-o", "-x", "5", "0", "list", "thread",
                     "nosuch", "main", "x", '"a quoted word"', "'single'", '"unclosed',
                     "'unclosed", "simple.mdb", "loop.mdb", "count.mdb", "broken.mdb",
                     "abort.mdb", "replace.mdb", "outer.mdb", "nosuch.mdb", "+o", "pager",
                     "repeatlast", "-I", "/nonexistent", "*", "$["]),
    EXPR.map(lambda x: f"$[{x}]"),
)
DCMDS = ["walk", "walk", "list", "echo", "eval", "map", "grep", "head", "vars", "unset",
         "typeset", "dcmds", "walkers", "help", "dmods", "set", "formats", "dump", "dis",
         "stack", "stacks", "regs", "threads", "thread", "nm", "mappings", "objects", "status",
         "whereis", "whatis", "findleaks", "heap_stats", "heap_verify", "layout", "quit",
         "nosuch", "heapmap", "whyalive"]
DCMD_STAGE = st.one_of(
    st.tuples(st.sampled_from(DCMDS), st.lists(WORDS, max_size=3)).map(
        lambda t: "::" + " ".join([t[0], *t[1]])),
    st.tuples(st.sampled_from(["$c", "$C", "$r", "$m", "$v", "$d", "$q", "$<", "$<<", ">",
                               ">/c/", ">/l/", ">/q/", "$?", ":z"]),
              st.lists(WORDS, max_size=2)).map(lambda t: " ".join([t[0], *t[1]])),
)
STAGE = st.one_of(FORMAT_STAGE, DCMD_STAGE)
COUNT = st.one_of(st.integers(0, 12).map(str), st.sampled_from(["", "0t3", "(2)", "<9"]))
STATEMENT = st.tuples(
    st.one_of(st.just(""), EXPR, DEEP),
    st.one_of(st.just(""), COUNT.map(lambda c: "," + c)),
    st.lists(STAGE, max_size=3).map(" | ".join),
    st.sampled_from(["", "", " ! cat", " !", "!true", " // comment"]),
).map("".join)
LINES = st.lists(STATEMENT, min_size=1, max_size=4).flatmap(
    lambda sts: st.lists(st.sampled_from([";", "\n", " ; "]), min_size=len(sts),
                         max_size=len(sts)).map(lambda seps: "".join(
                             s + sep for s, sep in zip(sts, seps))))

# character soup over everything the lexer treats specially
SOUP = st.text(alphabet=st.sampled_from(list("0123456789abcdefxtoiABX.,;:$<>/\\?=@!|*%#&^~+-"
                                            "()[]'\"` \t\nvwWZlLMcCrmqd_")), max_size=60)

# valid commands, mutated by inserting, deleting or repeating pieces
CORPUS = ["main/X", "list::walk list", "1000,3/J", "::walk list | ::echo $[.]", "hello/s",
          "<rsp/K", "1+2*3=D", "::eval 1000/X", "$c", "::regs", "::mappings", "::status",
          "0t10>x; <x=E", "::vars -n", "list::list 0 | ::map .+8 | /J", "main::dis -n 3",
          "::nm -x", "::walk thread", "$<< simple.mdb", "1000::dump", "::threads",
          "::typeset -t x", "0x1000,4::echo", "::set -o repeatlast", "1080/v 41 42",
          "1000?l 1020", "::walk list x | ::eval <x=J", "$d", "::help walk", "hello=s"]


@st.composite
def mutated(draw) -> str:
    text = draw(st.lists(st.sampled_from(CORPUS), min_size=1, max_size=3).map("; ".join))
    for _ in range(draw(st.integers(1, 6))):
        i = draw(st.integers(0, len(text)))
        j = draw(st.integers(i, min(len(text), i + 8)))
        piece = draw(st.one_of(st.just(""), SOUP, st.just(text[i:j] * 3)))
        text = text[:i] + piece + text[j:]
    return text


MODES = st.booleans()


def targets() -> dict:
    """name -> (strategy, check), for bench/fuzz.py."""
    return {"lang-grammar": (st.tuples(LINES, MODES), check_commands),
            "lang-soup": (st.tuples(SOUP, MODES), check_commands),
            "lang-mutated": (st.tuples(mutated(), MODES), check_commands),
            "lang-deep": (st.tuples(DEEP.map(lambda e: e + "=J"), MODES), check_commands)}


@fuzz_settings(200)
@given(st.tuples(LINES, MODES))
def test_token_grammar(example):
    check_commands(example)


@fuzz_settings(300)
@given(st.tuples(SOUP, MODES))
def test_character_soup(example):
    check_commands(example)


@fuzz_settings(150)
@given(st.tuples(mutated(), MODES))
def test_mutated_commands(example):
    check_commands(example)


@fuzz_settings(200)
@given(st.one_of(LINES, SOUP, mutated()))
def test_the_repl_colours_any_line(text):
    """The highlighter (the parser, listened to: mdbpy/lang/spans.py) never fails on a line
    being typed, and its spans rebuild the line, in order, without overlap."""
    from mdbpy.lang.spans import spans

    got = spans(text)
    assert "".join(text[a:b] for a, b, _k in got) == text
    assert all(a < b for a, b, _k in got)
    assert all(p[1] == q[0] for p, q in zip(got, got[1:]))


@fuzz_settings(40)
@given(st.tuples(DEEP.map(lambda e: e + "=J"), st.just(False)))
def test_deep_nesting_is_an_error_not_a_crash(example):
    check_commands(example)


def test_nesting_limits_and_long_chains():
    """Deep parentheses are one syntax error; a long left-associative chain, which needs no
    nesting, evaluates (it once overflowed the recursion limit)."""
    h = Harness()
    h.engine.run_string(_nest("({})", 5000) + "=J")
    assert h.err.getvalue() == 'mdbpy: expression nested too deeply near "((((((((((((((((((((((((' \
                               '"\n'
    h.engine.run_string("1" + "+1" * 5000 + "=E")
    assert h.out.getvalue().split() == ["5001"]
    h.engine.run_string("0t" + "9" * 5000 + "=E")
    assert h.err.getvalue().splitlines()[-1].startswith(
        "mdbpy: number with more than 4000 digits near")


def test_shell_escapes_only_what_was_typed():
    h = Harness()
    h.engine.run_string("!echo one; list::walk list ! sort; ::echo hi !wc -l")
    assert h.shell == ["echo one", "sort", "wc -l"]
