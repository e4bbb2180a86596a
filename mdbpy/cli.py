"""The command line: argv -> target -> Session -> batch or REPL, and the exit status.

Exit status: 0; 1 when the last command failed or the target could not be opened; 2 for bad
usage; for a program mdbpy ran (`-- PROG`, ::run), the program's (run_status). Whatever happens
(end of input, $q, Ctrl-C, SIGTERM, SIGHUP, an internal error) the target is closed on the way
out, which resumes and detaches a live process, or ends a program mdbpy started.
"""

from __future__ import annotations

import io
import os
import signal
import stat
import sys
from dataclasses import dataclass
from typing import Callable

from mdbpy.errors import MdbError, QuitSession, UsageError

RC_NAME = ".mdbpyrc"  # in the user's home; mdb's is ~/.mdbrc
RC_MAX_BYTES = 1 << 20

BATCH_USAGE = ("usage: mdbpy batch [-j N | --dask ADDRESS] [--timeout S] [--memory MiB] "
               "[-R DIR]\n                   [-e cmds | -f file] [-o out.jsonl] "
               "[--aggregate agg.json] core|glob|@listfile...")
# the batch line is `mdbpy batch`'s own usage, written once (it had drifted: no --dask)
USAGE = """\
usage: mdbpy [-wS] [-o opt[,opt...]] [+o opt] [-R|--sysroot DIR] [-e cmds] [-f file]
             [-P prompt] [-I path] [-p pid | object [core] | core | --demo]
       mdbpy [options] [--exit-code N] -- program [args...]
       mdbpy diff [--json] [--svg FILE | --png FILE] [-a axis] [-n top] A B
       """ + BATCH_USAGE.removeprefix("usage: ")


class Args:
    """What the command line asked for; filled in by the actions of OPTIONS."""

    def __init__(self):
        self.pid: int | None = None
        self.commands: str | None = None
        self.command_file: str | None = None
        self.writable = False
        self.options: dict[str, bool] = {}
        self.settings: dict[str, str] = {}  # valued options (-o walklimit=N)
        self.sysroot: str | None = None
        self.macro_path: list[str] = []
        self.prompt: str | None = None
        self.no_rc = False
        self.demo = False
        self.positional: list[str] = []
        self.program: list[str] = []  # after --: a program to run and its arguments
        self.leak_status: int | None = None  # --exit-code: the status when leaks were found
        self.every: float | None = None  # --every: seconds between snapshots of -p PID
        self.count = 0  # --count: how many
        self.snapshot_dir: str | None = None  # --snapshots: where they go


@dataclass(frozen=True)
class Option:
    """One command-line option: its spellings, the name of its value (None for a flag), the
    --help group it is listed in, its help text, and what it does to Args. The parser and
    --help are both made from OPTIONS, so the help cannot miss an option the parser knows."""

    flags: tuple[str, ...]
    metavar: str | None
    group: str
    help: str
    apply: Callable[[Args, str], None]


def _pid(a: Args, v: str) -> None:
    if not v.isdigit():
        raise UsageError(f"invalid process id '{v}'")
    a.pid = int(v)


def _debugger_options(on: bool) -> Callable[[Args, str], None]:
    def apply(a: Args, v: str) -> None:
        from mdbpy.session import DEFAULT_OPTIONS, valued_option

        for opt in v.split(","):
            if "=" in opt:
                try:
                    name, value = valued_option(opt, on)
                except MdbError as e:
                    raise UsageError(str(e)) from None
                a.settings[name] = value
                continue
            if opt not in DEFAULT_OPTIONS:
                raise UsageError(f"unknown option '{opt}' (known: "
                                 f"{', '.join(sorted(DEFAULT_OPTIONS))})")
            a.options[opt] = on
    return apply


def _set_option(name: str) -> Callable[[Args, str], None]:
    """The action of a flag that is a shorthand for `-o name`."""
    return lambda a, v: a.options.__setitem__(name, True)


def _number(attr: str, kind: type, least) -> Callable[[Args, str], None]:
    """The action storing a number of at least `least` in Args.attr."""
    def apply(a: Args, v: str) -> None:
        try:
            value = kind(v)
        except ValueError:
            value = None
        if value is None or not value >= least:
            raise UsageError(f"invalid number '{v}' (at least {least})")
        setattr(a, attr, value)
    return apply


def _help(a: Args, v: str) -> None:
    raise SystemExit(_print(help_text(), 0))


def _version(a: Args, v: str) -> None:
    raise SystemExit(_print(f"mdbpy {package_version()}", 0))


def _set(attr: str, value=None) -> Callable[[Args, str], None]:
    """The action storing the option's value (or a constant, for a flag) in Args.attr."""
    return lambda a, v: setattr(a, attr, v if value is None else value)


TARGETS, COMMANDS, ACCESS, SESSION, INFO = ("targets", "commands", "target access",
                                            "session", "information")
OPTIONS = (
    Option(("-p",), "PID", TARGETS,
           "attach to a running process; it is stopped while mdbpy looks at it and resumed "
           "and detached on exit (see -o nostop)", _pid),
    Option(("--demo",), None, TARGETS,
           "build the bundled simulated program (a heap with planted bugs) and open its core",
           _set("demo", True)),
    Option(("--exit-code",), "N", COMMANDS,
           "with -- PROG: exit with status N when the last ::findleaks found leaks, instead "
           "of the program's exit status (as valgrind's --error-exitcode)",
           _number("leak_status", int, 0)),
    Option(("-e",), "CMDS", COMMANDS,
           "run CMDS (mdb syntax, ';' or newlines between commands) and exit",
           _set("commands")),
    Option(("-f",), "FILE", COMMANDS, "run the commands in FILE (a batch file) and exit",
           _set("command_file")),
    Option(("--every",), "SECONDS", COMMANDS,
           "with -p and --count: take a heap snapshot every SECONDS, COUNT times (the process "
           "runs between them), then show the trend (docs/snapshots.md)",
           _number("every", float, 0.0)),
    Option(("--count",), "N", COMMANDS, "how many snapshots --every takes",
           _number("count", int, 1)),
    Option(("--snapshots",), "DIR", COMMANDS,
           "where --every writes its snapshots (default: a new directory in $TMPDIR)",
           _set("snapshot_dir")),
    Option(("-w",), None, ACCESS,
           "open the target for writing (/v /w /W /Z writes); read-only otherwise",
           _set("writable", True)),
    Option(("-R", "--sysroot"), "DIR", ACCESS,
           "find a core's mapped files under DIR (a core from another machine)",
           _set("sysroot")),
    Option(("-o",), "OPT[,OPT]", SESSION,
           "turn debugger options on (nostop, pager, repeatlast, ignoreeof, color, ...: the "
           "list is ::set's); -o walklimit=N caps every walk at N addresses; "
           "-o follow_fork_mode=child stops a program run with -- in its forked child "
           "instead of the parent (the default)",
           _debugger_options(True)),
    Option(("+o",), "OPT[,OPT]", SESSION, "turn debugger options off",
           _debugger_options(False)),
    Option(("--json",), None, SESSION,
           "the heap dcmds print JSON documents instead of tables (as ::set -o json)",
           _set_option("json")),
    Option(("-I",), "PATH", SESSION, "macro file search path for $< and $<< (colon-separated)",
           lambda a, v: setattr(a, "macro_path", v.split(":"))),
    Option(("-P",), "PROMPT", SESSION, 'the interactive prompt (default "> ")',
           _set("prompt")),
    Option(("-S",), None, SESSION, f"do not read ~/{RC_NAME} (the commands run at start)",
           _set("no_rc", True)),
    Option(("-V", "--version"), None, INFO, "print the version and exit", _version),
    Option(("-h", "--help"), None, INFO, "print this help and exit", _help),
)
_BY_FLAG = {f: o for o in OPTIONS for f in o.flags}

HELP_INTRO = """\
Inspect a live process or a core file with the mdb command language. Three ways to start:

  mdbpy [options] -p PID            a running process
  mdbpy [options] [object] core     a core file (gcore, the kernel, ::gcore), with its
                                    executable when the core's file notes cannot name it
  mdbpy [options] -- PROG [ARGS]    run a program, stopped at its exit or fatal signal
                                    (its exit status is mdbpy's; docs/run.md)

and `mdbpy diff A B` reports what the heap grew by from A to B, each a snapshot
(::heap_snapshot) or a core (docs/snapshots.md); `mdbpy batch` runs commands over many
cores in parallel, as JSON Lines and an aggregate (docs/batch.md).
"""

HELP_END = f"""\
Commands come from -e, -f, or standard input: interactively with line editing, history and
completion on a terminal, as a batch with no prompt otherwise. ~/{RC_NAME} runs first (mdb's
~/.mdbrc; skipped with -S). Colour is used only on a terminal, with option color on and
NO_COLOR unset. Exit status is 0, 1 when the last command failed or the target could not be
opened, 2 for bad usage; with -- PROG, the program's (128+signal when a signal killed it).

examples:
  mdbpy --demo                                  the demo heap: try ::findleaks, ::heap_verify
  mdbpy -p 1234 -e '::status; $c'               look at a process once and let it run on
  mdbpy -p 1234 -e '::findleaks -d' --json      leaks as JSON, for a script
  mdbpy ./prog core.1234                        a core and its executable
  mdbpy -e ::findleaks --exit-code 9 -- ./prog  leaks at the program's exit, for CI
  mdbpy -R /srv/otherhost core.1234             a core taken on another machine
  mdbpy -f checks.mdb core.1234                 a batch file of mdb commands
  mdbpy diff before.npz core.1234 --svg g.svg   what grew since a snapshot, and its plot
  mdbpy batch -j 8 -e ::findleaks 'cores/*'     a fleet of cores, one JSON record each
  echo '::walk thread' | mdbpy core.1234        commands on standard input
  python -m mdbpy ...                           the same as the mdbpy command

Inside: ::dcmds, ::walkers and ::help NAME. Docs: docs/getting-started.md."""


def help_text() -> str:
    """--help: the usage, the two ways to start, every option of OPTIONS by group, examples."""
    parts = [USAGE, "", HELP_INTRO]
    for group in (TARGETS, COMMANDS, ACCESS, SESSION, INFO):
        parts.append(f"{group}:")
        if group == TARGETS:
            parts.append(_help_entry("object core", "an executable and its core file"))
            parts.append(_help_entry("core", "a core file; the executable is found from its "
                                             "file notes"))
            parts.append(_help_entry("PROG [ARGS]", "after --: run PROG (a path, or a name "
                                     "in $PATH) and stop it at its exit or fatal signal; "
                                     "every word after -- is the program's (docs/run.md)"))
        for o in OPTIONS:
            if o.group == group:
                name = ", ".join(o.flags) + (f" {o.metavar}" if o.metavar else "")
                parts.append(_help_entry(name, o.help))
        parts.append("")
    parts.append(HELP_END)
    return "\n".join(parts)


def _help_entry(name: str, text: str) -> str:
    import textwrap

    lines = textwrap.wrap(text, 96 - 22)
    head = f"  {name:<19} " if len(name) <= 19 else f"  {name}\n" + " " * 22
    return head + ("\n" + " " * 22).join(lines)


def package_version() -> str:
    """The installed distribution's version (what pip sees); the source tree's when mdbpy runs
    uninstalled."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mdbpy")
    except PackageNotFoundError:
        from mdbpy import __version__

        return __version__


def parse_args(argv: list[str]) -> Args:
    """getopt rules as mdb's: flags combine (-wS), a value may be attached (-p1234) or the
    next word, long options take `--opt VALUE` or `--opt=VALUE`, `--` ends the options and
    starts the program to run and its arguments."""
    a = Args()
    words = iter(argv)
    for w in words:
        if w == "--":
            a.program = list(words)
            if not a.program:
                raise UsageError("-- must be followed by the program to run")
            break
        if w.startswith("--"):
            name, eq, attached = w.partition("=")
            _take(a, name, attached if eq else None, words)
        elif w == "+o":
            _take(a, w, None, words)
        elif w.startswith("-") and len(w) > 1:
            for i in range(1, len(w)):
                opt = _BY_FLAG.get("-" + w[i])
                if opt is not None and opt.metavar is not None:
                    _take(a, "-" + w[i], w[i + 1:] or None, words)
                    break
                _take(a, "-" + w[i], None, words)
        else:
            a.positional.append(w)
    if a.program and (a.pid is not None or a.positional or a.demo):
        raise UsageError("a program to run (-- PROG) takes no other target: drop -p, --demo "
                         "or the object and core files")
    if a.leak_status is not None and not a.program:
        raise UsageError("--exit-code goes with a program to run (-- PROG)")
    if a.leak_status is not None and a.leak_status > 255:
        raise UsageError(f"--exit-code {a.leak_status}: an exit status is 0 to 255")
    if a.pid is not None and a.positional:
        raise UsageError("-p cannot be combined with object or core file arguments")
    if len(a.positional) > 2:
        raise UsageError("too many arguments")
    if a.demo and (a.pid is not None or a.positional):
        raise UsageError("--demo takes no target")
    if a.pid is None and not a.positional and not a.demo and not a.program:
        raise UsageError("no target: give -p PID, a core file, -- PROG, or --demo")
    if a.commands is not None and a.command_file is not None:
        raise UsageError("-e and -f cannot be combined")
    if (a.every is None) != (not a.count) or (a.every is not None and a.pid is None):
        raise UsageError("--every and --count go together, with -p PID")
    return a


def _take(a: Args, flag: str, attached: str | None, words) -> None:
    """Apply one option; its value is `attached` or the next word."""
    opt = _BY_FLAG.get(flag)
    if opt is None:
        raise UsageError(f"unknown option '{flag}'")
    if opt.metavar is None:
        if attached is not None:
            raise UsageError(f"option {flag} takes no argument")
        opt.apply(a, "")
        return
    value = attached if attached is not None else next(words, None)
    if value is None:
        raise UsageError(f"option {flag} requires an argument")
    opt.apply(a, value)


def _print(text: str, status: int) -> int:
    sys.stdout.write(text + "\n")
    return status


def open_target(a: Args):
    """The Target named by the arguments (or a MdbError saying why not)."""
    if a.pid is not None:
        from mdbpy.target.live import LiveTarget

        return LiveTarget(a.pid, stop=not a.options.get("nostop", False), writable=a.writable)
    if a.program:
        from mdbpy.session import FOLLOW_FORK, setting
        from mdbpy.target.spawn import SpawnTarget

        return SpawnTarget(a.program, follow=setting(a.settings, FOLLOW_FORK),
                           writable=a.writable)
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


def _stopped(e: BaseException, what: str = "") -> int:
    """The one line and the shell's exit status of a run stopped by a signal: 128 + its
    number after SIGTERM/SIGHUP (_Terminate), 130 after Ctrl-C."""
    if isinstance(e, _Terminate):
        sys.stderr.write(f"mdbpy: {what}terminated by {signal.Signals(e.signum).name}\n")
        return 128 + e.signum
    sys.stderr.write(f"mdbpy: {what}interrupted\n")
    return 130


def main(argv: list[str] | None = None) -> int:
    """The exit status of the command line. Output into a closed pipe (`mdbpy ... | head -1`)
    ends mdbpy quietly with status 0, as it ends cat or grep: the reader has all it wanted.
    The target is closed first, as on every other way out."""
    _reopen_closed_streams()
    try:
        return _main(sys.argv[1:] if argv is None else argv)
    except BrokenPipeError:
        _discard_output()
        return 0


def _reopen_closed_streams() -> None:
    """A standard stream the shell closed (`<&-`, `>&-`) is None in Python: read it as empty
    input, write it to /dev/null, so the exit status still says how the commands went."""
    for name, mode in (("stdin", "r"), ("stdout", "w"), ("stderr", "w")):
        if getattr(sys, name) is None:
            setattr(sys, name, open(os.devnull, mode))


def _discard_output() -> None:
    """Point standard output and error at /dev/null, so that the interpreter's own flush at
    exit does not find the closed pipe again and print a traceback for it."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for stream in (sys.stdout, sys.stderr):
            try:
                os.dup2(devnull, stream.fileno())
            except (AttributeError, OSError, ValueError):  # replaced or closed streams
                pass
    finally:
        os.close(devnull)


def open_batch(path: str):
    """The -f file, opened as bytes (the engine decodes every input path by one rule), or a
    UsageError: checked before the target is opened, so a typo costs no attach or demo build."""
    try:
        return open(path, "rb")
    except OSError as e:
        raise UsageError(f"cannot open {path}: {e.strerror}") from None


def _main(argv: list[str]) -> int:
    if argv[:1] == ["diff"]:  # a file named diff is ./diff
        return diff_main(argv[1:])
    if argv[:1] == ["batch"]:
        return batch_main(argv[1:])
    try:
        args = parse_args(argv)
    except UsageError as e:
        sys.stderr.write(f"mdbpy: {e}\n{USAGE}\n")
        return 2
    except SystemExit as e:
        return int(e.code or 0)
    try:
        batch = open_batch(args.command_file) if args.command_file is not None else None
    except UsageError as e:  # the options were right: the usage would not help
        sys.stderr.write(f"mdbpy: {e}\n")
        return 2

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    target = session = None
    try:
        if args.every is not None:
            return _series(args)
        try:
            target = open_target(args)
        except MdbError as e:
            sys.stderr.write(f"mdbpy: {e}\n")
            ended = getattr(e, "status", None)  # a program that ended without a stop
            if ended is None:
                return 1
            from mdbpy.target.spawn import exit_code

            return exit_code(ended)
        session = open_session(args, target)
        return _run(args, session, batch)
    except (_Terminate, KeyboardInterrupt) as e:
        return _stopped(e)
    except BrokenPipeError:
        raise  # for main(), after the target is closed
    except Exception as e:  # the last line of defence: one line, never a traceback
        sys.stderr.write(f"mdbpy: internal error: {type(e).__name__}: {e}\n")
        if os.environ.get("MDBPY_DEBUG"):
            import traceback

            traceback.print_exc()
        return 1
    finally:
        if batch is not None:
            batch.close()
        if target is not None:  # nothing may stop the resume (signals blocked meanwhile)
            from mdbpy.api import close_target

            # ::run may have put a started program in the place of the target opened here
            close_target(session.target if session is not None else target)


def _series(args: Args) -> int:
    """-p PID --every SECONDS --count N: N snapshots of the process, attached for each one
    only while it is taken (the process runs between them), saved in the --snapshots
    directory, then their trend (mdbpy.heap.diff.trend_lines)."""
    import tempfile
    import time

    from mdbpy.api import close_target
    from mdbpy.heap import snapshot
    from mdbpy.heap.diff import trend_lines
    from mdbpy.session import Session

    snaps = []
    try:
        where = args.snapshot_dir or tempfile.mkdtemp(prefix=f"mdbpy-{args.pid}-")
        os.makedirs(where, exist_ok=True)
        for k in range(args.count):
            if k:
                time.sleep(args.every)
            target = open_target(args)
            try:
                session = Session(target, options=args.options, settings=args.settings,
                                  out=io.StringIO())
                snap = snapshot.take(session)
            finally:
                close_target(target)
            path = os.path.join(where, f"snapshot-{k:03d}.npz")
            snap.save(path)
            sys.stdout.write(f"{path}: {snap.describe()}\n")
            sys.stdout.flush()
            snaps.append(snap)
    except MdbError as e:
        sys.stderr.write(f"mdbpy: {e}\n")
        return 1
    except OSError as e:
        sys.stderr.write(f"mdbpy: {args.snapshot_dir}: {e.strerror}\n")
        return 1
    sys.stdout.write("\n" + "\n".join(trend_lines(snaps)) + "\n")
    return 0


def open_session(args: Args, target):
    """The Session over the opened target, with the command line's settings."""
    from mdbpy.session import Session

    session = Session(target, sysroot=args.sysroot, options=args.options,
                      settings=args.settings)
    for warning in getattr(target, "warnings", ()):  # e.g. a core's missing or mismatched files
        session.warn(warning)
    if args.macro_path:
        session.macro_path = args.macro_path
    if args.prompt is not None:
        session.prompt = args.prompt
    return session


def _run(args: Args, session, batch) -> int:
    from mdbpy.lang.engine import Engine

    engine = Engine(session)
    try:
        if not args.no_rc:
            _run_rc(engine)
        if args.commands is not None:
            status = engine.run_string(args.commands)
        elif batch is not None:
            status = engine.run_stream(batch)
        elif sys.stdin.isatty():
            from mdbpy.repl.app import run_repl

            status = run_repl(engine)
        else:
            status = engine.run_stream(sys.stdin.buffer)  # bytes: decoded as -f and $< are
    except QuitSession as q:
        status = q.status
    return run_status(args, session, status)


def run_status(args: Args, session, status: int) -> int:
    """The exit status once the commands are done. For a program mdbpy started (-- PROG, or
    ::run), the program completes first and its status is mdbpy's: the exit code, or 128 +
    the signal that killed it, as a shell reports it; when that is 0, the commands' status.
    With --exit-code N, N instead when the last ::findleaks found leaks (the valgrind
    --error-exitcode convention, for CI). Any other target: the commands' status."""
    finish = getattr(session.target, "finish", None)  # only a started program has one
    if finish is None:
        return status
    from mdbpy.heap.model import LEAKS_KEY
    from mdbpy.target.spawn import exit_code

    leaks = session.cache.get(LEAKS_KEY)
    program = exit_code(finish())
    if args.leak_status is not None and leaks is not None and leaks[0].groups:
        return args.leak_status
    return program or status


def _run_rc(engine) -> None:
    """Run ~/.mdbpyrc, one command per line, as mdb runs ~/.mdbrc. An error is one line naming
    the file and line, and the next line runs; nothing here ends the session except $q."""
    from mdbpy.lang.engine import as_text

    session = engine.session
    path = rc_path()
    data = read_rc(path, session.warn)
    if data is None:
        return
    try:
        for lineno, raw in enumerate(data.splitlines(), 1):
            session.warn_context = f"{path}:{lineno}"
            try:
                line = as_text(raw)  # the rule of every input path
            except MdbError as e:
                session.warn(f"{e}; ignored")
                continue
            engine.run_stream(io.StringIO(line + "\n"))
    finally:
        session.warn_context = None


def rc_path() -> str:
    """~/.mdbpyrc of the user running mdbpy: $HOME as every Unix tool takes it, else the real
    uid's passwd entry. Never the current directory or a core's directory: a file there may be
    someone else's, and its commands (`!` runs a shell) would run as this user."""
    home = os.environ.get("HOME", "")
    if not os.path.isabs(home):
        import pwd

        home = pwd.getpwuid(os.getuid()).pw_dir
    return os.path.join(home, RC_NAME)


def read_rc(path: str, warn) -> bytes | None:
    """The rc file's bytes, or None when there is none or it is not safe to run: it must be a
    regular file (a FIFO would hang the start), owned by the real uid (root with another
    user's HOME must not run that user's commands), not world-writable, and at most 1 MiB.
    Checked on the open descriptor, so the file checked is the file read (a symbolic link, as
    dotfile managers make, is followed and its target checked)."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return None
    except OSError as e:
        warn(f"ignoring {path}: {e.strerror}")
        return None
    st = os.fstat(fd)
    why = None
    if not stat.S_ISREG(st.st_mode):  # checked before fdopen, which refuses a directory
        why = "not a regular file"
    elif st.st_uid != os.getuid():
        why = f"owned by uid {st.st_uid}, not by you (uid {os.getuid()})"
    elif st.st_mode & stat.S_IWOTH:
        why = "writable by everyone (chmod o-w to use it)"
    elif st.st_size > RC_MAX_BYTES:
        why = f"larger than {RC_MAX_BYTES} bytes"
    if why is not None:
        os.close(fd)
        warn(f"ignoring {path}: {why}")
        return None
    with os.fdopen(fd, "rb") as f:
        return f.read(RC_MAX_BYTES)


# -- mdbpy diff A B ---------------------------------------------------------------------------
DIFF_USAGE = ("usage: mdbpy diff [--json] [--svg FILE | --png FILE] [-a axis] [-n top] "
              "[-o FILE] A B\n  A, B: heap snapshots (::heap_snapshot) or core files")
DIFF_LONG = {"--svg": "-o", "--png": "-o", "--axis": "-a", "--top": "-n"}


def diff_main(argv: list[str]) -> int:
    """`mdbpy diff A B`: what grew from A to B, each a snapshot or a core (opened as `mdbpy
    core` opens one, its executable named by the core). The options are ::heapdiff's
    (DIFF_OPTS), the long ones spelled here as their letters; --json as the global option."""
    from types import SimpleNamespace

    from mdbpy.heap.diff import compare
    from mdbpy.jsonout import emit
    from mdbpy_commands.core.snapshot import diff_output, diff_settings, parse_diff_words

    as_json = "--json" in argv
    words = []
    for w in (w for w in argv if w != "--json"):
        name, eq, value = w.partition("=")
        words += [DIFF_LONG[name], value] if eq and name in DIFF_LONG else [DIFF_LONG.get(w, w)]
    try:
        opts, paths = parse_diff_words(words)
        axes, top, plot = diff_settings(opts)
        if len(paths) != 2:
            raise UsageError("diff takes two snapshots or cores")
    except UsageError as e:
        sys.stderr.write(f"mdbpy: {e}\n{DIFF_USAGE}\n")
        return 2
    try:
        d = compare(*(snapshot_of(p) for p in paths))
        lines, doc = diff_output(d, axes, top, plot, as_json)
    except MdbError as e:
        sys.stderr.write(f"mdbpy: {e}\n")
        return 1
    if doc:
        emit(SimpleNamespace(out=sys.stdout), "heapdiff", **doc)
    for line in lines:
        sys.stdout.write(line + "\n")
    return 0


def snapshot_of(path: str):
    """The snapshot in `path`, or taken of the core file `path` (a file that starts as an ELF
    file does): its target is closed before the next is opened."""
    from mdbpy.heap import snapshot

    try:
        with open(path, "rb") as f:
            elf = f.read(4) == b"\x7fELF"
    except OSError as e:
        raise MdbError(f"cannot open {path}: {e.strerror}") from None
    if not elf:
        return snapshot.load(path)
    from mdbpy.session import Session
    from mdbpy.target.core import open_file_target

    session = Session(open_file_target(path), out=io.StringIO())
    try:
        for warning in getattr(session.target, "warnings", ()):
            session.warn(warning)
        snap = snapshot.take(session)
        snap.path = path
        return snap
    finally:
        session.close()


# -- mdbpy batch CORE... ----------------------------------------------------------------------
BATCH_VALUED = {"-j": "jobs", "--jobs": "jobs", "--timeout": "timeout", "--memory": "memory",
                "-e": "commands", "-f": "command_file", "-o": "output", "-R": "sysroot",
                "--sysroot": "sysroot", "--aggregate": "aggregate", "--dask": "dask"}


def parse_batch_args(argv: list[str]) -> tuple[dict, list[str]]:
    """`mdbpy batch`'s options (each takes a value: `-j4`, `-j 4`, `--timeout=S`, `--timeout
    S`; `--` ends them) and the inputs; a UsageError for anything else."""
    opts: dict[str, str] = {}
    inputs: list[str] = []
    words = iter(argv)
    for w in words:
        if w == "--":
            inputs.extend(words)
            break
        name, eq, value = w.partition("=") if w.startswith("--") else (w, "", "")
        if not eq and w[:1] == "-" and w[:2] != "--" and len(w) > 2:
            name, eq, value = w[:2], "=", w[2:]
        if name not in BATCH_VALUED:
            if w.startswith("-") and w != "-":
                raise UsageError(f"unknown option '{name}'")
            inputs.append(w)
            continue
        if not eq:
            value = next(words, None)
            if value is None:
                raise UsageError(f"option {name} requires an argument")
        opts[BATCH_VALUED[name]] = value
    if ("commands" in opts) == ("command_file" in opts):
        raise UsageError("give the commands with -e or -f (one of them)")
    if "dask" in opts and "jobs" in opts:
        raise UsageError("-j sizes the local pool; with --dask the cluster decides")
    if not inputs:
        raise UsageError("no cores given")
    return opts, inputs


def _batch_number(opts: dict, name: str, kind: type, least):
    """The option's number (checked as the main options' numbers are), or None if not given."""
    from types import SimpleNamespace

    if name not in opts:
        return None
    holder = SimpleNamespace()
    _number(name, kind, least)(holder, opts[name])
    return getattr(holder, name)


def batch_main(argv: list[str]) -> int:
    """`mdbpy batch`: the commands over every core, each in its own process (mdbpy.batch),
    on the local pool or a Dask cluster. Status 0 when the batch ran, whatever its cores did;
    2 for bad usage; 1 when the output could not be written; 130 or 128 + the signal when
    interrupted (Ctrl-C, SIGTERM, SIGHUP), the running children killed first."""
    import json

    from mdbpy import batch

    try:
        opts, inputs = parse_batch_args(argv)
        jobs_n = _batch_number(opts, "jobs", int, 1) or os.cpu_count() or 1
        timeout = _batch_number(opts, "timeout", float, 0.001)
        memory = _batch_number(opts, "memory", int, 16)
        script_file = opts.get("command_file")
        if script_file is not None:
            open_batch(script_file).close()  # a typo is a usage error before any core runs
            script_file = os.path.abspath(script_file)
        cores = batch.expand_inputs(inputs)
    except UsageError as e:
        sys.stderr.write(f"mdbpy: {e}\n{BATCH_USAGE}\n")
        return 2
    jobs = [batch.Job(core, opts.get("commands"), script_file, timeout, memory,
                      opts.get("sysroot")) for core in cores]
    try:
        out = open(opts["output"], "w") if "output" in opts else sys.stdout
        try:
            def sink(rec):
                out.write(json.dumps(rec, separators=(",", ":")) + "\n")
                out.flush()
            for sig in (signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, _on_signal)
            records = (batch.run_dask(jobs, opts["dask"], sink) if "dask" in opts
                       else batch.run(jobs, jobs_n, sink))
            agg = batch.aggregate(records)
        finally:
            if out is not sys.stdout:
                out.close()
        if "aggregate" in opts:
            with open(opts["aggregate"], "w") as f:
                json.dump(agg, f, indent=1)
                f.write("\n")
    except OSError as e:
        sys.stderr.write(f"mdbpy: {e.filename}: {e.strerror}\n")
        return 1
    except UsageError as e:  # --dask: no dask.distributed, or no scheduler there
        sys.stderr.write(f"mdbpy: {e}\n")
        return 2
    except (_Terminate, KeyboardInterrupt) as e:
        return _stopped(e, "batch ")
    sys.stderr.write(f"mdbpy: {batch.summary(agg)}\n")
    return 0
