"""The interactive front end: the input lexer, completion, the pager, and a real terminal session.

Lexer, completer and pager are tested on their own over a Session on a SyntheticTarget; the
end-to-end tests run `python -m mdbpy` inside tmux (a real pseudo-terminal) and synchronize on
what the screen shows.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.document import Document
from pygments.token import (Comment, Keyword, Name, Number, Operator, Punctuation, String,
                            Whitespace)

from mdbpy.errors import MdbError, ParseError, QuitSession
from mdbpy.repl import app
from mdbpy.repl.complete import MAX_SYMBOLS, MdbCompleter
from mdbpy.repl.lexer import MdbLexer
from mdbpy.repl.pager import MORE_PROMPT, Pager, PagerQuit
from mdbpy.session import Session
from mdbpy.symbols.base import Symbol
from mdbpy.target.synthetic import SyntheticTarget

sys.path.insert(0, str(Path(__file__).resolve().parent))
from support import bundled_modules, mdbpy_cmd  # noqa: E402

# -- the lexer -------------------------------------------------------------------------------


def tokens(line: str) -> list[tuple]:
    return [(t, v) for t, v in MdbLexer().get_tokens(line) if t is not Whitespace
            and v.strip()]


LEXER_CASES = [
    ("0x1f 0t12 0o17 0i101 0t1.5 10",
     [(Number.Hex, "0x1f"), (Number.Integer, "0t12"), (Number.Oct, "0o17"),
      (Number.Bin, "0i101"), (Number.Float, "0t1.5"), (Number, "10")]),
    ("list_head::walk node | ::print -t",
     [(Name, "list_head"), (Name.Function, "::walk"), (Name, "node"), (Punctuation, "|"),
      (Name.Function, "::print"), (Name.Attribute, "-t")]),
    ("main/10X; $q",
     [(Name, "main"), (Operator, "/"), (Number.Integer, "10"), (Name.Builtin, "X"),
      (Punctuation, ";"), (Keyword, "$q")]),
    ('::echo "a b" // note',
     [(Name.Function, "::echo"), (String.Double, '"a b"'), (Comment.Single, "// note")]),
    ("<x+8>/l/y",
     [(Name.Variable, "<x"), (Operator, "+"), (Number, "8"), (Operator, ">"),
      (Name.Variable, "/l/y")]),
    ("::dcmds ! grep walk",
     [(Name.Function, "::dcmds"), (Operator, "!"), (String.Backtick, " grep walk")]),
    ("libc.so.6`malloc::dis", [(Name, "libc.so.6`malloc"), (Name.Function, "::dis")]),
    ("::echo $[ 1 << 3 ]; 8=K",
     [(Name.Function, "::echo"), (Punctuation, "$["), (Number, "1"), (Operator, "<<"),
      (Number, "3"), (Punctuation, "]"), (Punctuation, ";"), (Number, "8"), (Operator, "="),
      (Name.Builtin, "K")]),
    # `:c` after a macro name is the macro's argument, as the parser reads it
    ("$<< macro :c", [(Keyword, "$<<"), (Name, "macro"), (Name, ":c")]),
    # a statement the parser gives up on is coloured token by token from where it stopped
    ("$[ 1 << 3 ]=K",
     [(Punctuation, "$["), (Number, "1"), (Operator, "<<"), (Number, "3"),
      (Punctuation, "]"), (Operator, "="), (Name, "K")]),
]


@pytest.mark.parametrize("line,expected", LEXER_CASES)
def test_lexer_tokens(line, expected):
    assert tokens(line) == expected


def test_the_colours_are_the_parse():
    """One lexer: the dcmds and verbs the REPL colours are exactly the stages the engine's
    parser reads, on every line of the documentation's examples."""
    from mdbpy.lang.parser import parse_all
    from mdbpy.lang.spans import spans

    lines = set()
    for page in (Path(__file__).resolve().parents[1] / "docs").glob("*.md"):
        for block in re.findall(r"```mdb\n(.*?)```", page.read_text(), re.S):
            lines |= {ln for ln in block.splitlines() if ln.startswith("> ")}
    assert len(lines) > 50
    for line in sorted(lines):
        text = line[2:]
        try:
            stages = [st.name for s in parse_all(text) for st in s.stages if not st.is_format]
        except ParseError:
            continue
        got = spans(text)
        assert "".join(text[a:b] for a, b, _k in got) == text
        heard = [text[a:b].removeprefix("::") for a, b, k in got if k in ("dcmd", "verb")]
        assert heard == [n for n in stages if n != ">"], line


def test_lexer_covers_every_character_of_odd_input():
    line = 'foo/"unterminated ]]] ~~ 0x 0tz ``'
    assert "".join(v for _, v in MdbLexer().get_tokens(line)) == line + "\n"


# -- the completer ---------------------------------------------------------------------------

DMOD = '''
from mdbpy.dcmd import dcmd, walker

@dcmd("zzfirst", "the first test dcmd", aliases=("$Z",))
def zzfirst(inv):
    return 0

@dcmd("zzsecond", "the second test dcmd")
def zzsecond(inv):
    return 0

@dcmd("zzhidden", "needs something absent", enabled=lambda s: "not here")
def zzhidden(inv):
    return 0

@walker("zzlist", "walks the test list")
def zzlist(session, addr):
    yield from ()

@walker("zzother", "walks nothing")
def zzother(session, addr):
    yield from ()
'''


@pytest.fixture
def session(tmp_path):
    target = SyntheticTarget([(0x400000, bytes(0x1000), "r-xp", "/bin/a.out"),
                              (0x7f0000000000, bytes(0x1000), "r-xp", "/lib/libc.so.6")])
    s = Session(target)
    mod = tmp_path / "zztest.py"
    mod.write_text(DMOD)
    s.load_dmod(str(mod))
    s.symbols.add_symbols("a.out", [
        Symbol("main", 0x401000, 0x40), Symbol("list_head", 0x404000, 8, "object"),
        Symbol("list_tail", 0x404008, 8, "object"), Symbol("basic.c", 0, 0, "file"),
    ], is_exe=True)
    s.symbols.add_symbols("libc.so.6", [
        Symbol("malloc", 0x7f0000001000, 0x100), Symbol("malloc_usable_size", 0x7f0000001100,
                                                         0x20),
        Symbol("list_libc", 0x7f0000001200, 0x10),
    ] + [Symbol(f"sym{i:05d}", 0x7f0000002000 + i * 16, 16) for i in range(5000)])
    s.vars.update({"myvar": 1, "other": 2})
    return s


def completion_of(session, text: str):
    """What TAB offers with the cursor at the end of text."""
    doc = Document(text, len(text))
    return list(MdbCompleter(session).get_completions(
        doc, CompleteEvent(completion_requested=True)))


def complete(session, text: str) -> list[str]:
    return [c.text for c in completion_of(session, text)]


def test_complete_dcmd_names_and_hides_disabled(session):
    assert complete(session, "::zz") == ["zzfirst", "zzsecond"]
    assert complete(session, "list_head::zzs") == ["zzsecond"]
    c = completion_of(session, "::zzf")[0]
    assert (c.text, c.start_position, c.display_meta_text) == ("zzfirst", -3,
                                                                "the first test dcmd")


def test_complete_walker_names_after_walk(session):
    assert complete(session, "::walk zz") == ["zzlist", "zzother"]
    assert complete(session, "list_head::walk zzl") == ["zzlist"]


def test_complete_dollar_commands_from_registry(session):
    assert "$Z" in complete(session, "$")
    assert complete(session, "$Z") == ["$Z"]
    assert "$Z" not in complete(session, "::")  # `$` aliases are not `::` names


def test_complete_help_argument_offers_dcmds(session):
    assert complete(session, "::help zz") == ["zzfirst", "zzsecond"]


def test_complete_load_argument_offers_installed_modules(session):
    assert complete(session, "::load ") == bundled_modules()
    c = completion_of(session, "::load -s u")[0]
    assert (c.text, c.start_position, c.display_meta_text) == ("umem", -1, "mdbpy_commands.umem")
    assert complete(session, "::load ./u") == []  # a path is the user's to write


def test_complete_variables(session):
    assert complete(session, "<my") == ["myvar"]


def test_complete_symbols_across_objects(session):
    assert complete(session, "list_") == ["list_head", "list_libc", "list_tail"]
    assert complete(session, "mall") == ["malloc", "malloc_usable_size"]
    assert complete(session, "main+lis") == ["list_head", "list_libc", "list_tail"]
    assert complete(session, "::zzfirst lis") == ["list_head", "list_libc", "list_tail"]
    c = completion_of(session, "0x10+list_h")[0]
    assert (c.text, c.start_position) == ("list_head", -6)


def test_complete_symbols_need_two_characters_and_skip_files(session):
    assert complete(session, "m") == []
    assert complete(session, "basic") == []


def test_complete_object_qualified_symbols(session):
    assert complete(session, "libc.so.6`list") == ["libc.so.6`list_libc"]
    assert complete(session, "a.out`list") == ["a.out`list_head", "a.out`list_tail"]
    assert complete(session, "libc`mall") == ["libc`malloc", "libc`malloc_usable_size"]
    assert complete(session, "nosuch`ma") == []
    assert complete(session, "libc.s") == ["libc.so.6`"]


def test_complete_symbols_is_capped(session):
    got = complete(session, "sym")
    assert len(got) == MAX_SYMBOLS
    assert got[0] == "sym00000" and got[-1] == f"sym{MAX_SYMBOLS - 1:05d}"


def test_no_symbol_completion_in_formats_or_numbers(session):
    assert complete(session, "main/li") == []
    assert complete(session, "0xli") == []


# -- the pager -------------------------------------------------------------------------------


def paged(text: str, keys: str, rows: int = 5, cols: int = 80):
    out = io.StringIO()
    answers = iter(keys)
    pager = Pager(out, rows, cols, lambda: next(answers, ""))
    status = None
    try:
        pager.write(text)
    except PagerQuit as q:
        status = q.status
    return out.getvalue(), status


LINES = "".join(f"line{i}\n" for i in range(10))
ERASE = "\r" + " " * len(MORE_PROMPT) + "\r"


def test_pager_space_pages_and_return_gives_one_line():
    out, status = paged(LINES, " \r ")
    assert status is None
    assert out == ("line0\nline1\nline2\nline3\n" + MORE_PROMPT + ERASE
                   + "line4\nline5\nline6\nline7\n" + MORE_PROMPT + ERASE
                   + "line8\n" + MORE_PROMPT + ERASE + "line9\n")


def test_pager_q_stops_and_a_aborts():
    out, status = paged(LINES, "q")
    assert (out, status) == ("line0\nline1\nline2\nline3\n" + MORE_PROMPT + ERASE, 0)
    assert paged(LINES, "xa")[1] == 1  # unknown keys are ignored until a known one


def test_pager_c_continues_without_paging_and_short_output_is_not_paged():
    out, status = paged(LINES, "c")
    assert out == "line0\nline1\nline2\nline3\n" + MORE_PROMPT + ERASE + LINES[24:]
    assert paged("a\nb\nc\nd\n", "")[0] == "a\nb\nc\nd\n"


def test_pager_counts_wrapped_rows_and_ignores_colour_escapes():
    long = "x" * 25 + "\n"  # three rows at 10 columns
    out, status = paged(long + "\x1b[1mshort\x1b[0m\n" + "y\n", "q", rows=5, cols=10)
    assert out == long + "\x1b[1mshort\x1b[0m\n" + MORE_PROMPT + ERASE and status == 0


def test_pager_end_of_input_at_prompt_stops():
    assert paged(LINES, "")[1] == 0


def test_pager_partial_writes_make_one_row():
    out = io.StringIO()
    pager = Pager(out, 3, 80, lambda: "q")
    for part in ("ab", "cd\n", "ef", "\n"):
        pager.write(part)
    with pytest.raises(PagerQuit):
        pager.write("gh\n")
    assert out.getvalue() == "abcd\nef\n" + MORE_PROMPT + ERASE


# -- colour and history settings ---------------------------------------------------------------


def test_color_follows_no_color_and_option(session, monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert app.use_color(session)
    monkeypatch.setenv("NO_COLOR", "1")
    assert not app.use_color(session)
    monkeypatch.delenv("NO_COLOR")
    session.options["color"] = False
    assert not app.use_color(session)


def test_history_path_honours_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MDBPY_HISTORY", str(tmp_path / "h"))
    assert app.history_path() == str(tmp_path / "h")
    monkeypatch.delenv("MDBPY_HISTORY")
    assert app.history_path() == os.path.expanduser("~/.mdbpy_history")


# -- a real terminal (tmux) --------------------------------------------------------------------


class Tmux:
    """One command running in a detached tmux pane on a private server; the screen is read
    with capture-pane, so tests wait for what a user would see."""

    started = 0  # terminals made so far in this test process: each gets its own socket

    def __init__(self, tmp: Path, argv: list[str], env: dict[str, str], rows: int = 40,
                 cols: int = 120):
        # A private server whose socket lives (and is cleaned up) with the test's directory;
        # one socket per terminal: a test's second terminal must not meet its first one's
        # server still exiting after kill-server (new-session then fails)
        Tmux.started += 1
        self.server = ["tmux", "-S", str(tmp / f"tmux{Tmux.started}.sock"), "-f", "/dev/null"]
        envs = " ".join(f"{k}={_sh(v)}" for k, v in env.items())
        # The shell prints the exit status on the screen: tmux's own #{pane_dead_status} is
        # sometimes left empty when the pty closes before the child is reaped.
        cmd = (f"cd {_sh(str(tmp))} && env {envs} {' '.join(map(_sh, argv))}; "
               f"echo \"[exit $?]\"")
        subprocess.run(self.server + ["new-session", "-d", "-s", "t", "-x", str(cols), "-y",
                                      str(rows), cmd], check=True)
        subprocess.run(self.server + ["set-option", "-t", "t", "remain-on-exit", "on"],
                       check=True, capture_output=True)

    def keys(self, *keys: str) -> None:
        subprocess.run(self.server + ["send-keys", "-t", "t", *keys], check=True)

    def type(self, text: str) -> None:
        subprocess.run(self.server + ["send-keys", "-t", "t", "-l", text], check=True)

    def screen(self) -> list[str]:
        r = subprocess.run(self.server + ["capture-pane", "-p", "-t", "t"], check=True,
                           capture_output=True, text=True)
        return r.stdout.rstrip("\n").split("\n")

    def wait(self, check, what: str, timeout: float = 30.0) -> list[str]:
        """Poll the screen until check(lines) is true; fail showing the screen otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            lines = self.screen()
            if check(lines):
                return lines
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}; screen:\n" + "\n".join(lines))
            time.sleep(0.05)

    def wait_prompt(self) -> list[str]:
        """The last non-blank line is an empty prompt."""
        return self.wait(lambda ls: _last(ls) == ">", "an empty prompt")

    def exit_status(self, timeout: float = 30.0) -> int:
        def ended(lines):
            return [ln for ln in lines if ln.startswith("[exit ")]

        return int(ended(self.wait(ended, "mdbpy to exit", timeout))[-1][6:-1])

    def close(self) -> None:
        subprocess.run(self.server + ["kill-server"], capture_output=True)


def _sh(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"


def _tail(lines: list[str], n: int = 2) -> list[str]:
    """The last n non-blank lines."""
    return [ln.rstrip() for ln in lines if ln.strip()][-n:]


def _last(lines: list[str]) -> str:
    return "".join(_tail(lines, 1))


def repl_env(tmp: Path) -> dict[str, str]:
    return {"MDBPY_HISTORY": str(tmp / "history"), "HOME": str(tmp), "TERM": "xterm"}


def _needs(*modules: str) -> None:
    import importlib.util

    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed")
    for m in modules:
        if importlib.util.find_spec(m) is None:
            pytest.skip(f"{m} does not exist yet")


@pytest.fixture
def core_repl(tmp_path, request):
    """A function starting mdbpy (with extra arguments) on a gcore of the basic fixture in a
    40x120 terminal; it returns (Tmux, fixture info)."""
    _needs("mdbpy.lang.engine", "mdbpy.target.core")
    info, core = request.getfixturevalue("basic_gcore")
    started = []

    def start(*args):
        started.append(Tmux(tmp_path, mdbpy_cmd("-S", *args, core), repl_env(tmp_path)))
        return started[-1], info

    try:
        yield start
    finally:
        for term in started:
            term.close()


def test_terminal_session_end_to_end(core_repl, tmp_path):
    term, info = core_repl()
    term.wait_prompt()

    # a command and its output
    term.type("list_head/J")
    term.keys("Enter")
    value = f"{int(info['list_head'], 16):x}"
    term.wait(lambda ls: any(ln.startswith("list_head:") and value in ln for ln in ls),
              "the value of list_head")
    term.wait_prompt()

    # TAB completes a dcmd name; Ctrl-C at the prompt drops the line
    term.type("::dcm")
    term.keys("Tab")
    term.wait(lambda ls: _last(ls) == "> ::dcmds", "::dcm completed to ::dcmds")
    term.keys("C-c")
    term.wait_prompt()

    # Ctrl-C while a command runs cancels it, on a row of its own
    term.type("!touch started && sleep 60")
    term.keys("Enter")
    term.wait(lambda ls: (tmp_path / "started").exists(), "the shell command to start")
    term.keys("C-c")
    term.wait(lambda ls: _tail(ls) == ["mdbpy: interrupted", ">"], "the interrupt message")

    # long output stops at the More prompt; space pages on, q ends the command
    term.type("list_head,0t100/J")
    term.keys("Enter")
    lines = term.wait(lambda ls: _last(ls) == MORE_PROMPT.rstrip(), "the More prompt")
    assert len(lines) == 40 and lines[0].startswith("list_head:")  # 39 rows of output
    term.keys("Space")
    term.wait(lambda ls: _last(ls) == MORE_PROMPT.rstrip() and ls[0] != lines[0],
              "the second page")
    term.keys("q")
    term.wait_prompt()

    # Ctrl-C at the More prompt interrupts the command; the session goes on
    term.type("list_head,0t100/J")
    term.keys("Enter")
    term.wait(lambda ls: _last(ls) == MORE_PROMPT.rstrip(), "the More prompt")
    term.keys("C-c")
    term.wait(lambda ls: _tail(ls) == ["mdbpy: interrupted", ">"], "the interrupt message")

    # $q leaves with status 0 and the history holds what was typed
    term.type("$q")
    term.keys("Enter")
    assert term.exit_status() == 0
    history = (tmp_path / "history").read_text().splitlines()
    assert [ln for ln in history if ln.startswith("+")] == [
        "+list_head/J", "+!touch started && sleep 60", "+list_head,0t100/J", "+$q"]  # a repeated line is stored once


# -- one command line: containment of whatever the engine raises -------------------------------


class ScriptedEngine:
    """Stands in for the language engine: run_line raises or returns what the test scripted,
    so the REPL's handling of each outcome is checked exactly."""

    def __init__(self, session, outcome):
        self.session = session
        self.outcome = outcome

    def run_line(self, line: str) -> int:
        self.session.out.write(f"ran {line}\n")
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome


@pytest.mark.parametrize("outcome,status,err", [
    (0, 0, ""),
    (1, 1, ""),
    (KeyboardInterrupt(), 1, "mdbpy: interrupted\n"),
    (PagerQuit(0), 0, ""),
    (PagerQuit(1), 1, ""),
    (MdbError("no such thing"), 1, "mdbpy: no such thing\n"),
    (ZeroDivisionError("division by zero"), 1,
     "mdbpy: internal error: ZeroDivisionError: division by zero\n"),
])
def test_run_command_contains_every_outcome(session, outcome, status, err):
    session.out, session.err = io.StringIO(), io.StringIO()
    assert app.run_command(ScriptedEngine(session, outcome), "::x") == status
    assert (session.out.getvalue(), session.err.getvalue()) == ("ran ::x\n", err)


def test_run_command_lets_quit_through(session):
    session.out = io.StringIO()
    with pytest.raises(QuitSession) as q:
        app.run_command(ScriptedEngine(session, QuitSession(3)), "$q")
    assert q.value.status == 3


def test_terminal_eof_leaves_with_last_status_unless_ignoreeof(core_repl):
    term, info = core_repl("-o", "ignoreeof")
    term.wait_prompt()
    term.keys("C-d")  # ignored: the session goes on
    term.type("::nosuchdcmd")
    term.keys("Enter")
    term.wait(lambda ls: _tail(ls) == ["mdbpy: invalid command '::nosuchdcmd'", ">"],
              "the error")
    term.type("$q")
    term.keys("Enter")
    assert term.exit_status() == 0
    term.close()

    term, info = core_repl()
    term.wait_prompt()
    term.type("::nosuchdcmd")
    term.keys("Enter")
    term.wait(lambda ls: _tail(ls) == ["mdbpy: invalid command '::nosuchdcmd'", ">"],
              "the error")
    term.keys("C-d")
    assert term.exit_status() == 1  # the last command failed
