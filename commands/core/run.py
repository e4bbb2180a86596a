"""::run: start the executable being looked at and stop it at its exit or its fatal signal.

`mdbpy ./prog` opens the executable alone (a FileTarget); `::run ARGS` starts it with its own
standard streams, lets it run at full speed and puts the stopped process in the session's place
(mdbpy.target.spawn), so the next commands (::findleaks, $C, ::status) look at that moment. The
command line's `mdbpy -e CMDS -- PROG ARGS` is the same run without the first step.
"""

from __future__ import annotations

import sys

from mdbpy.dcmd import Invocation, Operand, dcmd
from mdbpy.errors import MdbError
from mdbpy.session import FOLLOW_FORK, setting


HELP = ("Start the executable mdbpy was given (mdbpy PROG) with these arguments and its own "
        "standard input, output and error. It runs at full speed until it exits (stopped inside "
        "exit_group, its heap intact) or receives a fatal signal (stopped before the signal is "
        "delivered and a core written); then the session looks at that moment. Threads are "
        "followed; -o follow_fork_mode=child stops in each forked child instead of the parent. "
        "When the session ends the program completes, and its exit status (128+signal for a "
        "signal) is mdbpy's. After ::kill, ::run starts the program again (docs/run.md).")


@dcmd("run", "start the program and stop it at its exit or fatal signal", aliases=(":r",),
      getopt=False, help=HELP, example="::run -n 5",
      operands=[Operand("arg", "the program's arguments (argv[1] on)", optional=True,
                        repeat=True)])
def run(inv: Invocation):
    from mdbpy.target.spawn import SpawnTarget

    s = inv.session
    argv0, path = _program(s.target)
    sys.stdout.flush()  # what mdbpy printed comes before the program's output
    sys.stderr.flush()
    started = SpawnTarget([argv0, *map(str, inv.operands)], path=path,
                          follow=setting(s.settings, FOLLOW_FORK),
                          writable=s.target.writable)
    s.program.retarget(started)
    s.thread = None
    inv.print(f"process {started.pid} {started.run.reason}")


def _program(target) -> tuple[str, str]:
    """(argv[0], the file) of what ::run starts: the executable mdbpy opened (that file, even
    when it was named as `prog` in the current directory), or again the program an earlier
    ::run or `-- PROG` started, once it has ended (::kill)."""
    if target.kind == "file":
        return target.path, target.exe_path()
    run = getattr(target, "run", None)
    if run is not None and run.status is not None:
        return run.argv0, run.path
    raise MdbError(_refusal(target))


def _refusal(target) -> str:
    """Why ::run cannot start anything here, and what to type instead."""
    if getattr(target, "run", None) is not None:
        return (f"process {target.pid} is stopped at its end; ::kill it first to start the "
                f"program again")
    if target.kind == "live":
        return (f"a process is already attached ({target.describe()}); ::run starts a new "
                f"one: quit, then mdbpy PROG and ::run ARGS, or mdbpy -e CMDS -- PROG ARGS")
    return (f"::run needs an executable, and the target is {target.describe()}: start "
            f"mdbpy PROG, then ::run ARGS")
