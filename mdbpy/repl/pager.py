"""mdb's output pager: a stream that stops before the screen scrolls and asks how to go on.

The REPL installs a Pager as session.out while one command line runs. Before writing the line
that would push the first line of a page off the screen it prints mdb's prompt,
`>> More [<space>, <cr>, q, n, c, a] ? `, reads one key and acts as mdb_io.c's iob_pager does:

    space      the next page
    <cr>, n    the next line only
    c          the rest of this command line without paging
    q          stop this command line's output (PagerQuit, status 0)
    a          abort this command line (PagerQuit, status 1)

Screen rows are counted after wrapping at the terminal width, and colour escapes take no
columns, so a page is a page also for long or coloured lines.
"""

from __future__ import annotations

import os
import re
import sys

MORE_PROMPT = ">> More [<space>, <cr>, q, n, c, a] ? "
_ERASE = "\r" + " " * len(MORE_PROMPT) + "\r"
_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_LINES = re.compile(r"[^\n]*\n|[^\n]+")


class PagerQuit(BaseException):
    """The user answered q or a at the More prompt: the command line stops here.

    A BaseException, like KeyboardInterrupt, so that the engine's per-command error handling
    lets it through to the REPL instead of reporting it as a failure of one dcmd.
    """

    def __init__(self, status: int):
        self.status = status
        super().__init__("pager quit")


class Pager:
    """A text stream over `out` that pages every `rows - 1` screen rows.

    read_key() returns the user's answer as a one-character string ('' at end of input, taken
    as q, as mdb does when the read fails).
    """

    def __init__(self, out, rows: int, cols: int, read_key):
        self.out = out
        self.rows = max(rows, 2)
        self.cols = max(cols, 1)
        self.read_key = read_key
        self.paging = True
        self._budget = self.rows - 1  # rows that may be written before the next prompt
        self._used = 0  # complete rows written since the last prompt
        self._col = 0  # visible columns of the unfinished row

    # -- the stream interface ---------------------------------------------------------------
    def write(self, text: str) -> int:
        for piece in _LINES.findall(text):
            if self.paging and self._col == 0 and self._used >= self._budget:
                self._more()
            self.out.write(piece)
            self._account(piece)
        return len(text)

    def flush(self) -> None:
        self.out.flush()

    def isatty(self) -> bool:
        return self.out.isatty()

    def fileno(self) -> int:
        return self.out.fileno()

    # -- paging -----------------------------------------------------------------------------
    def _account(self, piece: str) -> None:
        """Add the screen rows that `piece` fills (a row wraps at self.cols)."""
        body = piece.rstrip("\r\n")
        width = self._col + len(_ESCAPES.sub("", body))
        if piece.endswith("\n"):
            self._used += max(1, -(-width // self.cols))
            self._col = 0
        else:
            self._used += width // self.cols
            self._col = width % self.cols

    def _more(self) -> None:
        self.out.write(MORE_PROMPT)
        self.out.flush()
        try:
            self._answer()
        finally:  # also on PagerQuit and Ctrl-C: the next output starts on a clean row
            self.out.write(_ERASE)
        self._used = 0

    def _answer(self) -> None:
        """Read keys until one means something; unknown keys are ignored, as mdb does."""
        while True:
            key = self.read_key()
            if key in (" ", "c", "C"):
                self._budget = self.rows - 1
                self.paging = key == " "
                return
            if key in ("\r", "\n", "n", "N"):
                self._budget = 1
                return
            if key in ("", "q", "Q", "\x03", "\x1c"):
                raise PagerQuit(0)
            if key in ("a", "A"):
                raise PagerQuit(1)


def read_tty_key(fd: int) -> str:
    """One keypress from the terminal on fd, read in cbreak mode (no echo, no line buffering;
    Ctrl-C still raises KeyboardInterrupt). Returns '' at end of input."""
    import termios
    import tty

    old = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd, termios.TCSANOW)
        data = os.read(fd, 1)
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, old)
    return data.decode("latin-1")


def terminal_pager(session) -> Pager | None:
    """A Pager for the session's output when paging applies: option `pager` on, and both the
    output and stdin are a terminal. None otherwise."""
    out = session.out
    if not session.options.get("pager", True):
        return None
    try:
        if not (out.isatty() and sys.stdin.isatty()):
            return None
        size = os.get_terminal_size(out.fileno())
    except (AttributeError, OSError, ValueError):
        return None
    stdin_fd = sys.stdin.fileno()
    return Pager(out, size.lines, size.columns, lambda: read_tty_key(stdin_fd))
