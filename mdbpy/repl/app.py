"""The interactive loop: read a line with prompt_toolkit, run it with the engine, repeat.

What the user can rely on here, whatever a command does:
- Ctrl-C while a command runs cancels that command (`mdbpy: interrupted`) and the prompt comes
  back; Ctrl-C at the prompt clears the line.
- Ctrl-D on an empty line leaves, unless option `ignoreeof` is on (then it is ignored, as in
  mdb's termio_delchar); end of input always leaves.
- No exception leaves a traceback: MdbErrors print as one line, anything else as one line
  naming it an internal error. Only $q (QuitSession) and the CLI's signal exceptions end the loop.
- Long output is paged (option `pager`, see pager.py); q at the More prompt ends the line.

History persists in ~/.mdbpy_history, or in $MDBPY_HISTORY when set (tests point it elsewhere).
"""

from __future__ import annotations

import contextlib
import os
import sys

from mdbpy.errors import MdbError, QuitSession
from mdbpy.repl.pager import PagerQuit, terminal_pager

HISTORY_ENV = "MDBPY_HISTORY"
HISTORY_FILE = "~/.mdbpy_history"

# Token colours for the input line, in ANSI names so they follow the terminal's palette.
_STYLE = {
    "pygments.name.function": "ansicyan bold",
    "pygments.keyword": "ansimagenta bold",
    "pygments.literal.number": "ansiyellow",
    "pygments.literal.string": "ansigreen",
    "pygments.name.variable": "ansiblue",
    "pygments.name.attribute": "ansibrightblack",
    "pygments.name.builtin": "ansiyellow bold",
    "pygments.operator": "ansired",
    "pygments.punctuation": "ansired bold",
    "pygments.comment": "ansibrightblack italic",
}


def run_repl(engine) -> int:
    """Read and run lines until $q or end of input; returns QuitSession's status, else 1 if
    the last command failed and 0 if it succeeded."""
    session = engine.session
    prompt = _prompt_session(session)
    status = 0
    while True:
        _apply_color(prompt, use_color(session))
        try:
            line = prompt.prompt(session.prompt)
        except KeyboardInterrupt:
            continue
        except (EOFError, OSError):  # Ctrl-D, or the terminal has gone away (EIO)
            return status
        try:
            with _no_control_echo():
                status = run_command(engine, line)
        except QuitSession as q:
            return q.status


def run_command(engine, line: str) -> int:
    """Run one input line with the pager installed as session.out; returns its status.

    QuitSession passes through to the caller; every other failure is reported on one line.
    """
    session = engine.session
    pager = terminal_pager(session)
    saved = session.out
    if pager is not None:
        session.out = pager
    try:
        return engine.run_line(line)
    except KeyboardInterrupt:
        _report(session, "interrupted")
        return 1
    except PagerQuit as q:
        return q.status
    except QuitSession:
        raise
    except MdbError as e:
        _report(session, str(e))
        return 1
    except Exception as e:  # noqa: BLE001 - a command's bug must not end the session
        _report(session, f"internal error: {type(e).__name__}: {e}")
        return 1
    finally:
        if session.out is pager and pager is not None:
            session.out = saved
        _flush(saved)


def use_color(session) -> bool:
    """Colour unless NO_COLOR is set (https://no-color.org) or option `color` is off."""
    return not os.environ.get("NO_COLOR") and bool(session.options.get("color", True))


def history_path() -> str:
    return os.path.expanduser(os.environ.get(HISTORY_ENV) or HISTORY_FILE)


def _prompt_session(session):
    from prompt_toolkit import PromptSession
    from prompt_toolkit.enums import EditingMode
    from prompt_toolkit.styles import Style

    from mdbpy.repl.complete import MdbCompleter

    return PromptSession(history=_history(session), completer=MdbCompleter(session),
                         complete_while_typing=False, editing_mode=EditingMode.EMACS,
                         key_bindings=_key_bindings(session), style=Style.from_dict(_STYLE),
                         include_default_pygments_style=False)


def _history(session):
    """FileHistory at history_path(); in memory (with a warning) when it cannot be written."""
    from prompt_toolkit.history import FileHistory, InMemoryHistory

    path = history_path()
    try:
        with open(path, "ab"):
            pass
    except OSError as e:
        session.warn(f"history not saved: cannot write {path}: {e.strerror}")
        return InMemoryHistory()
    return FileHistory(path)


def _key_bindings(session):
    """Ctrl-D on an empty line does nothing while option `ignoreeof` is on."""
    from prompt_toolkit.application import get_app
    from prompt_toolkit.filters import Condition
    from prompt_toolkit.key_binding import KeyBindings

    kb = KeyBindings()

    @Condition
    def ignoring_eof() -> bool:
        return bool(session.options.get("ignoreeof")) and not get_app().current_buffer.text

    @kb.add("c-d", filter=ignoring_eof)
    def _ignore_eof(event) -> None:
        """Swallow the key: the line is empty and EOF is not a way out."""

    return kb


def _apply_color(prompt, color: bool) -> None:
    """Highlight the input line, or turn every colour off (options can change between lines,
    e.g. ::set +o color)."""
    from prompt_toolkit.lexers import PygmentsLexer
    from prompt_toolkit.output import ColorDepth

    from mdbpy.repl.lexer import MdbLexer

    prompt.lexer = PygmentsLexer(MdbLexer) if color else None
    prompt.color_depth = None if color else ColorDepth.MONOCHROME


@contextlib.contextmanager
def _no_control_echo():
    """While a command runs, the terminal does not echo ^C, so `mdbpy: interrupted` starts the
    row instead of following a stray `^C`."""
    import termios

    try:
        fd = sys.stdin.fileno()
        old = termios.tcgetattr(fd)
    except (OSError, ValueError, termios.error):
        yield
        return
    quiet = list(old)
    quiet[3] &= ~termios.ECHOCTL
    termios.tcsetattr(fd, termios.TCSANOW, quiet)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSANOW, old)


def _report(session, msg: str) -> None:
    _flush(session.out)
    session.err.write(f"mdbpy: {msg}\n")
    _flush(session.err)


def _flush(stream) -> None:
    try:
        stream.flush()
    except (OSError, ValueError):
        pass
