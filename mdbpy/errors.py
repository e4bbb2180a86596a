"""The error family. Every failure a user can cause is an MdbError whose str() is one line.

The CLI and the command engine print `mdbpy: <message>` for these and never a traceback; any other
exception escaping a command is an internal error, reported on one line as such.
"""


class MdbError(Exception):
    """A user-facing failure with a one-line message."""


class UsageError(MdbError):
    """A command or the command line was used wrongly (exit status 2 on the command line)."""


class ParseError(MdbError):
    """The mdb language could not be parsed; the engine skips to the next `;` or newline."""


class TargetError(MdbError):
    """The target cannot be opened, attached, or has gone away."""


class ReadError(MdbError):
    """Memory at an address could not be read. `until`, when the reader knows it, is where the
    unreadable bytes that start at `addr` end (a core's segment that holds no bytes for the
    rest of its range): scans jump there instead of trying every page in between."""

    def __init__(self, addr: int, size: int, reason: str = "no mapping",
                 until: int | None = None):
        self.addr = addr
        self.size = size
        self.reason = reason
        self.until = until
        super().__init__(f"failed to read {size} bytes at 0x{addr:x}: {reason}")


class WriteError(MdbError):
    """Memory at an address could not be written (or the target is read-only)."""

    def __init__(self, addr: int, size: int, reason: str):
        self.addr = addr
        self.size = size
        self.reason = reason
        super().__init__(f"failed to write {size} bytes at 0x{addr:x}: {reason}")


class CommandAbort(MdbError):
    """A dcmd asks to stop the whole pipeline (mdb's DCMD_ABORT); the message may be empty."""


class QuitSession(Exception):
    """`$q` / `::quit`: leave the session (not an error; the CLI exits with the status given)."""

    def __init__(self, status: int = 0):
        self.status = status
        super().__init__("quit")
