"""Session: one person's interaction with one target, the object every command receives.

It owns the Program (program.py: the target, its address space, symbols, modules, allocators,
settings and cache: what is known of the target apart from anyone typing at it) and holds
what belongs to the interaction: the language state (dot, the increment, radix, variables and
their tags), the debugger options, the output streams, the selected thread, the language
engine and the macro path. The Program's attributes read through the Session too
(session.mem is session.program.mem), so a command needs one object; the heap engines, the
allocator modules and the Python API's typed values are given the Program alone. Tests build
a Session over a SyntheticTarget and run the same commands a user types.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

from mdbpy.errors import MdbError, UsageError
from mdbpy.program import Program
from mdbpy.symbols.demangle import readable
from mdbpy.target.base import Target

# mdb's debugger options (::set -o / -o on the command line) that mdbpy understands.
DEFAULT_OPTIONS = {
    "nostop": False,  # live targets: inspect without stopping the process
    "pager": True,  # page long output on a terminal
    "repeatlast": False,  # an empty line repeats the last command
    "ignoreeof": False,
    "color": True,  # colour on a terminal (NO_COLOR and non-terminals turn it off)
    "json": False,  # JSON-capable dcmds print one JSON document (mdbpy.jsonout)
    "demangle": False,  # C++ symbols named demangled everywhere, as mdb's $G toggles
}

# Valued debugger options (-o name=value), kept in Session.settings. mdb's are limits
# (array_mem_limit=) and modes (follow_fork_mode=). walklimit=N caps how many addresses one
# walk prints (0, the default: no cap), so a walk over a huge or looping structure cannot flood
# a terminal or a pipeline; follow_fork_mode=parent|child chooses the process a program run by
# mdbpy (::run, `mdbpy -- PROG`) is stopped in when it forks (mdbpy.target.spawn).
WALKLIMIT = "walklimit"
FOLLOW_FORK = "follow_fork_mode"


@dataclass(frozen=True)
class Valued:
    """One valued debugger option, declared as DEFAULT_OPTIONS declares the flags: the
    command line's -o and ::set -o check and keep its values by this, and its readers take
    the default from here, so a new one is a row, not another branch."""

    default: str
    form: str  # how its values are written in the list of valued options: `N`
    rule: str  # what a bad value is told: `needs a decimal count`
    value: Callable[[str], str | None]  # the value as kept, or None when it is not one
    off: str = ""  # what +o name= is told to write instead (default: the default)


VALUED_OPTIONS = {
    WALKLIMIT: Valued("0", "N", "needs a decimal count",
                      lambda v: str(int(v)) if v.isascii() and v.isdigit() else None,
                      off="0 for no limit"),
    FOLLOW_FORK: Valued("parent", "parent|child", "is parent or child",
                        lambda v: v if v in ("parent", "child") else None),
}


def setting(settings: dict, name: str) -> str:
    """A valued option's value in these settings, its declared default when it is unset."""
    return settings.get(name, VALUED_OPTIONS[name].default)


def valued_option(opt: str, on: bool) -> tuple[str, str]:
    """(setting, value) of `-o name=value` (`+o` when not on), or a one-line error: for the
    command line's -o and ::set -o alike."""
    name, _, value = opt.partition("=")
    v = VALUED_OPTIONS.get(name)
    if v is None:
        known = ", ".join(f"{n}={o.form}" for n, o in VALUED_OPTIONS.items())
        raise MdbError(f"unknown option '{name}=' (valued options: {known})")
    if not on:
        raise UsageError(f"{name}= takes a value: use -o {name}={v.off or v.default}")
    kept = v.value(value)
    if kept is None:
        raise MdbError(f"{name}= {v.rule}, not '{value}'")
    return name, kept


# mdb's names for registers that Linux's user_regs_struct (X86_64_REGS) names otherwise
MDB_REG_ALIASES = (("rflags", "eflags"), ("fsbase", "fs_base"), ("gsbase", "gs_base"))


class _OfProgram:
    """A Session attribute that is its Program's (read through, never copied)."""

    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, obj, owner=None):
        return self if obj is None else getattr(obj.program, self.name)


class Session:
    target = _OfProgram()
    mem = _OfProgram()
    sysroot = _OfProgram()
    debug_dirs = _OfProgram()
    settings = _OfProgram()
    cache = _OfProgram()
    registry = _OfProgram()
    symbols = _OfProgram()
    load_dmod = _OfProgram()
    autoload = _OfProgram()
    find_dcmd = _OfProgram()
    find_walker = _OfProgram()
    allocators = _OfProgram()
    invalidate = _OfProgram()
    warn = _OfProgram()
    close = _OfProgram()

    def __init__(self, target: Target, *, sysroot: str | None = None,
                 debug_dirs: list[str] | None = None, options: dict | None = None,
                 settings: dict | None = None, out=None, err=None, load_builtin: bool = True):
        self.options = dict(DEFAULT_OPTIONS)
        self.options.update(options or {})
        self.out = out if out is not None else sys.stdout
        self.err = err if err is not None else sys.stderr
        # Where the commands being run come from, when it is not the user's input (e.g.
        # "~/.mdbpyrc:3"): warnings name it so an error in a start-up file can be found.
        self.warn_context: str | None = None
        self.program = Program(target, sysroot=sysroot, debug_dirs=debug_dirs,
                               settings=settings, io=self)
        # language state (mdb: dot, the increment, '&', the output radix, variables)
        self.dot = 0
        self.incr = 0
        self.last_dot = 0
        self.radix = 16
        self.vars: dict[str, int] = {}
        self.prompt = "> "
        self.macro_path: list[str] = ["."]
        self.thread: int | None = None  # the current thread's tid (None: the first thread)
        # Set by the language engine so dcmds such as ::eval can run mdb commands.
        self.evaluate = None
        # The language engine itself (mdbpy.lang.engine.Engine), for $< / $<< macro files.
        self.engine = None
        # ::typeset -t tags variables; ::vars -t lists only the tagged ones.
        self.var_tags: set[str] = set()
        if load_builtin:
            self.load_dmod("core")

    def format_addr(self, addr: int, ret: bool = False) -> str:
        """mdb's %a (Program.format_addr), with a C++ symbol demangled as the frames name it
        when demangling is on ($G): the one place every symbolic address is spelled."""
        text = self.program.format_addr(addr, ret)
        return readable(text) if self.options["demangle"] else text

    # -- threads and registers ---------------------------------------------------------------
    def current_thread(self):
        """The selected Thread (the first one when none is selected), or None without threads."""
        threads = self.target.threads()
        for t in threads:
            if t.tid == self.thread:
                return t
        return threads[0] if threads else None

    def register_vars(self) -> dict[str, int]:
        """The current thread's registers, readable in expressions as `<rip`, `<rsp`, ...;
        also under the names mdb's $r prints (`<rflags`, `<fsbase`, `<gsbase`)."""
        t = self.current_thread()
        regs = dict(t.regs) if t is not None else {}
        for mdb_name, name in MDB_REG_ALIASES:
            if name in regs:
                regs[mdb_name] = regs[name]
        return regs
