"""The command line: argv -> target -> Session -> batch or REPL, and the exit status.

Exit status: 0; 1 when the last command failed or the target could not be opened; 2 for bad
usage. Whatever happens (end of input, $q, Ctrl-C, SIGTERM, SIGHUP, an internal error) the target
is closed on the way out, which resumes and detaches a live process.
"""

from __future__ import annotations

import os
import signal
import sys

from mdbpy import __version__
from mdbpy.errors import MdbError, QuitSession, UsageError

USAGE = """\
usage: mdbpy [-wS] [-o opt[,opt...]] [+o opt] [-R|--sysroot DIR] [-e cmds] [-f file]
             [-P prompt] [-I path] [-p pid | object [core] | core | --demo]"""

HELP = USAGE + """

Inspect a live process (-p PID) or a core file with the mdb command language.

targets:
  -p PID            attach to a running process; it is stopped while mdbpy looks at it and
                    resumed and detached on exit (see -o nostop)
  core              an ELF core file (from gcore, the kernel, or ::gcore); the executable is
                    found from the core's file notes
  object core       an executable and its core file
  --demo            build the bundled simulated program (a heap with planted bugs)
                    and open its core

options:
  -e CMDS           run CMDS (mdb syntax, ';' or newlines between commands) and exit
  -f FILE           run the commands in FILE and exit
  -w                open the target for writing (/v /w /W /Z writes); read-only otherwise
  -o OPT[,OPT]      turn debugger options on (nostop, pager, repeatlast, ignoreeof, color)
  +o OPT            turn a debugger option off
  -R, --sysroot DIR find a core's mapped files under DIR (a core from another machine)
  -I PATH           macro file search path for $< and $<< (colon-separated)
  -P PROMPT         the interactive prompt (default "> ")
  -S                do not read ~/.mdbpyrc
  -V, --version     print the version and exit
  -h, --help        print this help and exit

With no -e or -f, commands are read from standard input: interactively with line editing,
history and completion on a terminal, as a batch with no prompt otherwise. Exit status is 0, 1
when the last command failed, 2 for bad usage."""


class Args:
    def __init__(self):
        self.pid: int | None = None
        self.commands: str | None = None
        self.command_file: str | None = None
        self.writable = False
        self.options: dict[str, bool] = {}
        self.sysroot: str | None = None
        self.macro_path: list[str] = []
        self.prompt: str | None = None
        self.no_rc = False
        self.demo = False
        self.positional: list[str] = []


def parse_args(argv: list[str]) -> Args:
    a = Args()
    i = 0

    def value(opt: str) -> str:
        nonlocal i
        i += 1
        if i >= len(argv):
            raise UsageError(f"option {opt} requires an argument")
        return argv[i]

    while i < len(argv):
        w = argv[i]
        if w in ("-h", "--help"):
            raise SystemExit(_print(HELP, 0))
        if w in ("-V", "--version"):
            raise SystemExit(_print(f"mdbpy {__version__}", 0))
        if w == "-p":
            v = value(w)
            if not v.isdigit():
                raise UsageError(f"invalid process id '{v}'")
            a.pid = int(v)
        elif w == "-e":
            a.commands = value(w)
        elif w == "-f":
            a.command_file = value(w)
        elif w == "-w":
            a.writable = True
        elif w == "-S":
            a.no_rc = True
        elif w == "--demo":
            a.demo = True
        elif w in ("-R", "--sysroot"):
            a.sysroot = value(w)
        elif w.startswith("--sysroot="):
            a.sysroot = w.split("=", 1)[1]
        elif w == "-I":
            a.macro_path = value(w).split(":")
        elif w == "-P":
            a.prompt = value(w)
        elif w in ("-o", "+o"):
            on = w == "-o"
            from mdbpy.session import DEFAULT_OPTIONS

            for opt in value(w).split(","):
                if opt not in DEFAULT_OPTIONS:
                    raise UsageError(f"unknown option '{opt}' (known: "
                                     f"{', '.join(sorted(DEFAULT_OPTIONS))})")
                a.options[opt] = on
        elif w == "--":
            a.positional.extend(argv[i + 1:])
            break
        elif w.startswith("-") and len(w) > 1:
            raise UsageError(f"unknown option '{w}'")
        else:
            a.positional.append(w)
        i += 1
    if a.pid is not None and a.positional:
        raise UsageError("-p cannot be combined with object or core file arguments")
    if len(a.positional) > 2:
        raise UsageError("too many arguments")
    if a.demo and (a.pid is not None or a.positional):
        raise UsageError("--demo takes no target")
    if a.pid is None and not a.positional and not a.demo:
        raise UsageError("no target: give -p PID, a core file, or --demo")
    if a.commands is not None and a.command_file is not None:
        raise UsageError("-e and -f cannot be combined")
    return a


def _print(text: str, status: int) -> int:
    sys.stdout.write(text + "\n")
    return status


def open_target(a: Args):
    """The Target named by the arguments (or a MdbError saying why not)."""
    if a.pid is not None:
        from mdbpy.target.live import LiveTarget

        return LiveTarget(a.pid, stop=not a.options.get("nostop", False), writable=a.writable)
    if a.demo:
        from mdbpy.sim.demo import open_demo_target

        return open_demo_target()
    from mdbpy.target.core import open_file_target

    exe, core = (a.positional + [None])[:2] if len(a.positional) == 2 else (None, None)
    if len(a.positional) == 1:
        return open_file_target(a.positional[0], sysroot=a.sysroot, writable=a.writable)
    return open_file_target(core, exe=exe, sysroot=a.sysroot, writable=a.writable)


class _Terminate(BaseException):
    """Raised from the SIGTERM/SIGHUP handler so every `finally` runs on the way out."""

    def __init__(self, signum: int):
        self.signum = signum


def _on_signal(signum, frame):
    raise _Terminate(signum)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = parse_args(argv)
    except UsageError as e:
        sys.stderr.write(f"mdbpy: {e}\n{USAGE}\n")
        return 2
    except SystemExit as e:
        return int(e.code or 0)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    target = None
    try:
        try:
            target = open_target(args)
        except MdbError as e:
            sys.stderr.write(f"mdbpy: {e}\n")
            return 1
        return _run(args, target)
    except _Terminate as t:
        sys.stderr.write(f"mdbpy: terminated by {signal.Signals(t.signum).name}\n")
        return 128 + t.signum
    except KeyboardInterrupt:
        sys.stderr.write("mdbpy: interrupted\n")
        return 130
    except Exception as e:  # the last line of defence: one line, never a traceback
        sys.stderr.write(f"mdbpy: internal error: {type(e).__name__}: {e}\n")
        if os.environ.get("MDBPY_DEBUG"):
            import traceback

            traceback.print_exc()
        return 1
    finally:
        if target is not None:
            # Nothing may stop the resume: block the signals that would interrupt it.
            old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGHUP,
                                                            signal.SIGINT})
            try:
                target.close()
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _run(args: Args, target) -> int:
    from mdbpy.lang.engine import Engine
    from mdbpy.session import Session

    session = Session(target, sysroot=args.sysroot, options=args.options)
    for warning in getattr(target, "warnings", ()):  # e.g. a core's missing or mismatched files
        session.warn(warning)
    if args.macro_path:
        session.macro_path = args.macro_path
    if args.prompt is not None:
        session.prompt = args.prompt
    engine = Engine(session)
    try:
        if not args.no_rc:
            _run_rc(engine)
        if args.commands is not None:
            return engine.run_string(args.commands)
        if args.command_file is not None:
            try:
                f = open(args.command_file)
            except OSError as e:
                raise UsageError(f"cannot open {args.command_file}: {e.strerror}") from None
            with f:
                return engine.run_stream(f)
        if sys.stdin.isatty():
            from mdbpy.repl.app import run_repl

            return run_repl(engine)
        return engine.run_stream(sys.stdin)
    except QuitSession as q:
        return q.status


def _run_rc(engine) -> None:
    """~/.mdbpyrc: read only from the user's own home, as mdb reads ~/.mdbrc."""
    home = os.path.expanduser("~")
    rc = os.path.join(home, ".mdbpyrc")
    try:
        st = os.stat(rc)
    except OSError:
        return
    if st.st_uid != os.getuid():
        engine.session.warn(f"ignoring {rc}: not owned by you")
        return
    with open(rc) as f:
        engine.run_stream(f)
