"""The command registry: dcmds and walkers are declared once, with their help, and everything
that lists or documents them (::dcmds, ::walkers, ::help, ::dmods, completion, docs/dcmds.md)
is generated from here.

A dmod (loadable module, as in mdb) is a Python module or package whose functions carry the
@dcmd / @walker decorators. The decorators only attach a description to the function; nothing is
registered at import time. Registry.load_module() collects the decorated functions of a module,
so there are no module-level singletons and two sessions never share state.

A dcmd is called as `func(inv)` with an Invocation and returns None/0 for success, 1 for failure
(mdb's DCMD_ERR), or raises MdbError / UsageError / CommandAbort. A walker is called as
`func(session, addr)` (addr None for a global walk) and yields addresses.
"""

from __future__ import annotations

import functools
import importlib
import importlib.machinery
import importlib.util
import pkgutil
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from mdbpy.errors import MdbError, UsageError

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

    from mdbpy.session import Session

# Invocation flags, as mdb's DCMD_* flags.
ADDRSPEC = 0x01  # an explicit address was given
LOOP = 0x02  # the dcmd is being called repeatedly (count or pipe)
LOOPFIRST = 0x04  # first call of a loop
PIPE = 0x08  # input addresses come from a pipe
PIPE_OUT = 0x10  # output goes into a pipe: print addresses only


NUM = "number"  # an option value read as mdb_strtoull does (current radix, 0x/0t/0o/0i)
STR = "string"  # an option value kept as the word given


@dataclass(frozen=True)
class Opt:
    """One option letter of a dcmd, declared once: the parser, the usage line, ::help's
    OPTIONS, completion and docs/reference.md all read it, so they cannot drift apart.

    A flag (type None) is False unless given; an option with a value (type NUM or STR) is
    `default` unless given. The value is inv.opts.<name>. `metavar` names the value in the
    usage line (default: name); `plus` marks a hand-parsed option that may also be written
    +x (::set +o, ::typeset +t)."""

    letter: str
    name: str
    type: str | None
    help: str
    default: Any = None
    metavar: str = ""
    plus: bool = False

    @property
    def term(self) -> str:
        """How the option is written in the usage line and ::help: `-o offset`, `+/-t`."""
        value = f" {self.metavar or self.name}" if self.type else ""
        return f"{'+/' if self.plus else ''}-{self.letter}{value}"


def Flag(letter: str, name: str, help: str, plus: bool = False) -> Opt:  # noqa: N802
    """An option without a value: inv.opts.<name> is True when given."""
    return Opt(letter, name, None, help, default=False, plus=plus)


@dataclass(frozen=True)
class Operand:
    """A word (or, with repeat, words) after the options, for the usage line and ::help;
    the dcmd reads inv.operands and checks them itself (a type may be two words, `struct x`,
    and each dcmd's messages say what is wrong)."""

    name: str
    help: str = ""
    optional: bool = False
    repeat: bool = False

    @property
    def term(self) -> str:
        text = self.name + (" ..." if self.repeat else "")
        return f"[{text}]" if self.optional else text


@dataclass
class Dcmd:
    name: str
    func: Callable
    descr: str
    help: str = ""
    example: str = ""
    module: str = ""
    aliases: tuple[str, ...] = ()
    # enabled(session) returns None when usable, else a one-line reason (e.g. "libumem not found")
    enabled: Callable[[Session], str | None] | None = None
    # pipe_all: the dcmd receives the whole address list at once (::head, ::whatis) in inv.pipe
    pipe_all: bool = False
    opts: tuple[Opt, ...] = ()
    operands: tuple[Operand, ...] = ()
    # mdb's usage prefix: "?" an address is optional, ":" one is required, "" none is taken
    addr: str = ""
    # False: the dcmd parses its words itself (::set's +o, ::head's -num); opts document them
    getopt: bool = True

    @property
    def usage(self) -> str:
        """The arguments as mdb's usage strings write them: `[-v] [-o offset] type member`."""
        flags = "".join(o.letter for o in self.opts if o.type is None and not o.plus)
        words = [f"[-{flags}]"] if flags else []
        words += [f"[{o.term}]" for o in self.opts if o.type is not None or o.plus]
        return " ".join(words + [a.term for a in self.operands])

    def synopsis(self) -> str:
        """`[ addr ] ::name usage` as ::help prints it (mdb's '?' / ':' usage prefixes)."""
        prefix = {"?": "[ addr ] ", ":": "addr "}.get(self.addr, "")
        name = self.name if self.name.startswith("$") else "::" + self.name
        return f"{prefix}{name} {self.usage}".rstrip()

    def options_help(self) -> list[tuple[str, str]]:
        """(term, help) of each option and of each operand that has help: ::help's OPTIONS."""
        return [(o.term, o.help) for o in self.opts] + [
            (a.name, a.help) for a in self.operands if a.help]

    def parse(self, args: list, radix: int) -> tuple[SimpleNamespace, list]:
        """(inv.opts, inv.operands) of these words; a dcmd without options (or that parses
        its words itself) takes every word as an operand, as mdb's dcmds that do not call
        mdb_getopts do (`::echo -n` prints -n)."""
        if not self.getopt or not self.opts:
            return SimpleNamespace(**{o.name: o.default for o in self.opts}), list(args)
        return parse_options(args, self.opts, radix)


@dataclass
class Walker:
    name: str
    func: Callable
    descr: str
    module: str = ""
    needs_addr: bool = False
    enabled: Callable[[Session], str | None] | None = None
    help: str = ""


def dcmd(name: str, descr: str, help: str = "", example: str = "", aliases: Iterable[str] = (),
         enabled=None, pipe_all: bool = False, opts: Iterable[Opt] = (),
         operands: Iterable[Operand] = (), addr: str = "", getopt: bool = True):
    """Declare a dcmd. `descr` is the one-line description; `help` the DESCRIPTION of ::help;
    `opts`, `operands` and `addr` its arguments (see Dcmd.usage). The function receives the
    Invocation with inv.opts and inv.operands parsed from the declaration before it runs,
    however it is called (the engine, a test, another dcmd handing on its inv)."""
    if not descr:
        raise ValueError(f"dcmd {name} needs a one-line description")

    def wrap(func):
        @functools.wraps(func)
        def parsed(inv):
            inv.opts, inv.operands = d.parse(inv.args, inv.session.radix)
            return func(inv)

        d = Dcmd(name, parsed, descr, help or func.__doc__ or "", example,
                 aliases=tuple(aliases), enabled=enabled, pipe_all=pipe_all, opts=tuple(opts),
                 operands=tuple(operands), addr=addr, getopt=getopt)
        parsed.__mdb_dcmd__ = d
        return parsed

    return wrap


def walker(name: str, descr: str, needs_addr: bool = False, enabled=None, help: str = ""):
    """Declare a walker: a generator function (session, addr | None) -> addresses."""
    if not descr:
        raise ValueError(f"walker {name} needs a one-line description")

    def wrap(func):
        func.__mdb_walker__ = Walker(name, func, descr, needs_addr=needs_addr, enabled=enabled,
                                     help=help or func.__doc__ or "")
        return func

    return wrap


@dataclass
class Dmod:
    name: str
    path: str
    dcmds: list[str] = field(default_factory=list)
    walkers: list[str] = field(default_factory=list)
    pymodule: Any = None
    # macro aliases (the module's MACRO_ALIASES): `$< name` runs the command when no macro
    # file of that name is found, as mdb's built-in aliases (`$M`) do
    macros: dict[str, str] = field(default_factory=dict)


@dataclass
class Invocation:
    """What a dcmd receives: mdb's (addr, flags, argc, argv) plus the session and output."""

    session: Session
    addr: int
    flags: int
    args: list
    out: Any  # a text stream: write() only
    pipe: list[int] | None = None  # the whole address list, for pipe_all dcmds
    name: str = ""
    count: int = 1  # the repeat count of `addr,count::name` (mdb's m_dcount; ::dump's length)
    # the arguments as the dcmd's declaration parses them (set by @dcmd before the call)
    opts: SimpleNamespace = field(default_factory=SimpleNamespace)
    operands: list = field(default_factory=list)

    @property
    def has_addr(self) -> bool:
        return bool(self.flags & ADDRSPEC)

    @property
    def piped_out(self) -> bool:
        return bool(self.flags & PIPE_OUT)

    @property
    def header(self) -> bool:
        """mdb's DCMD_HDRSPEC: print the column header on the first call of a loop only."""
        return not (self.flags & LOOP) or bool(self.flags & LOOPFIRST)

    def print(self, *parts, end: str = "\n", sep: str = " ") -> None:
        self.out.write(sep.join(str(p) for p in parts) + end)

    def no_operands(self) -> None:
        """A usage error naming the first operand, if any: for dcmds that take options only
        and leave stray words to this one message."""
        if self.operands:
            raise UsageError(f"unexpected argument '{self.operands[0]}'")


def to_number(word, radix: int = 16) -> int:
    """mdb_strtoull: 0x/0t/0o/0i prefixes, else the current radix; ints pass through."""
    if isinstance(word, int):
        return word
    s = word.strip().lower()
    neg = s.startswith("-")
    if neg:
        s = s[1:]
    base = radix
    if len(s) > 2 and s[0] == "0" and s[1] in "xtoi":
        base = {"x": 16, "t": 10, "o": 8, "i": 2}[s[1]]
        s = s[2:]
    try:
        v = int(s, base)
    except ValueError:
        raise UsageError(f"invalid number '{word}'") from None
    return (-v if neg else v) & ((1 << 64) - 1)


def parse_options(args: list, opts: Iterable[Opt], radix: int = 16) -> tuple[SimpleNamespace,
                                                                            list]:
    """mdb_getopts over dcmd arguments, for the declared options: letters may be combined
    (-dv), a value may be attached (-n5) or the next word, options and operands may be mixed,
    `--` ends the options, a word such as -5 is an operand unless a digit is an option, NUM
    values are read as mdb_strtoull does, and a repeated option keeps its last value.
    Returns (the values by option name, the operands)."""
    by_letter = {o.letter: o for o in opts}
    values = {o.name: o.default for o in by_letter.values()}
    rest: list = []
    words = list(args)
    k = 0
    while k < len(words):
        w = words[k]
        if not isinstance(w, str) or not w.startswith("-") or w == "-" or (
                len(w) > 1 and w[1].isdigit() and "0" not in by_letter
                and w[1] not in by_letter):
            rest.append(w)
            k += 1
            continue
        if w == "--":
            rest.extend(words[k + 1:])
            break
        j = 1
        while j < len(w):
            o = by_letter.get(w[j])
            if o is None:
                raise UsageError(f"illegal option -- {w[j]}")
            if o.type is not None:
                val = w[j + 1:]
                if not val:
                    k += 1
                    if k >= len(words):
                        raise UsageError(f"option requires an argument -- {o.letter}")
                    val = words[k]
                values[o.name] = to_number(val, radix) if o.type == NUM else val
                break
            values[o.name] = True
            j += 1
        k += 1
    return SimpleNamespace(**values), rest


class Registry:
    """All dcmds and walkers of the loaded dmods, by name."""

    def __init__(self):
        self.dcmds: dict[str, Dcmd] = {}
        self.walkers: dict[str, Walker] = {}
        self.dmods: dict[str, Dmod] = {}

    # -- lookup -----------------------------------------------------------------------------
    def dcmd(self, name: str) -> Dcmd:
        d = self.dcmds.get(name)
        if d is None and "`" in name:
            d = self.dcmds.get(name.rsplit("`", 1)[1])
        if d is None:
            shown = name if name.startswith(("$", ":")) else "::" + name
            raise MdbError(f"invalid command '{shown}'")
        return d

    def macro_alias(self, name: str) -> str | None:
        """The command a loaded module's macro alias `name` stands for, or None."""
        return next((dm.macros[name] for dm in self.dmods.values() if name in dm.macros), None)

    def walker(self, name: str) -> Walker:
        w = self.walkers.get(name)
        if w is None and "`" in name:
            w = self.walkers.get(name.rsplit("`", 1)[1])
        if w is None:
            raise MdbError(f"walker '{name}' not found (see ::walkers)")
        return w

    # -- registration -----------------------------------------------------------------------
    def add_dcmd(self, d: Dcmd, module: str) -> None:
        d.module = module
        for n in (d.name, *d.aliases):
            self.dcmds[n] = d
        self.dmods[module].dcmds.append(d.name)

    def add_walker(self, w: Walker, module: str) -> None:
        w.module = module
        self.walkers[w.name] = w
        self.dmods[module].walkers.append(w.name)

    def remove_walker(self, name: str) -> None:
        w = self.walkers.pop(name, None)
        if w is not None and w.module in self.dmods:
            self.dmods[w.module].walkers.remove(name)

    def load_module(self, name: str, pymodule) -> Dmod:
        """Collect the decorated dcmds and walkers of a module (and of a package's submodules)."""
        if name in self.dmods:
            raise MdbError(f"module '{name}' is already loaded")
        dm = Dmod(name, getattr(pymodule, "__file__", "") or "", pymodule=pymodule,
                  macros=dict(getattr(pymodule, "MACRO_ALIASES", {})))
        self.dmods[name] = dm
        for mod in _with_submodules(pymodule):
            for obj in vars(mod).values():
                d = getattr(obj, "__mdb_dcmd__", None)
                if isinstance(d, Dcmd) and getattr(obj, "__module__", None) == mod.__name__:
                    self.add_dcmd(d, name)
                w = getattr(obj, "__mdb_walker__", None)
                if isinstance(w, Walker) and getattr(obj, "__module__", None) == mod.__name__:
                    self.add_walker(w, name)
        return dm

    def unload_module(self, name: str) -> None:
        dm = self.dmods.pop(name, None)
        if dm is None:
            raise MdbError(f"module '{name}' is not loaded")
        for n in dm.dcmds:
            d = self.dcmds.get(n)
            if d is not None:
                for alias in (d.name, *d.aliases):
                    self.dcmds.pop(alias, None)
        for n in dm.walkers:
            self.walkers.pop(n, None)

    def visible_dcmds(self, session) -> Iterator[Dcmd]:
        seen = set()
        for n in sorted(self.dcmds):
            d = self.dcmds[n]
            if id(d) in seen:
                continue
            seen.add(id(d))
            if d.enabled is None or d.enabled(session) is None:
                yield d

    def visible_walkers(self, session) -> Iterator[Walker]:
        for n in sorted(self.walkers):
            w = self.walkers[n]
            if w.enabled is None or w.enabled(session) is None:
                yield w


def _with_submodules(pymodule) -> list:
    mods = [pymodule]
    if hasattr(pymodule, "__path__"):
        for info in sorted(pkgutil.iter_modules(pymodule.__path__), key=lambda i: i.name):
            if not info.name.startswith("_"):
                mods.extend(_with_submodules(
                    importlib.import_module(f"{pymodule.__name__}.{info.name}")))
    return mods


# -- finding modules --------------------------------------------------------------------------

GROUP = "mdbpy.modules"  # the entry-point group every module is declared in (pyproject.toml)
BUILTIN = "core"  # mdb's built-in module, which every session loads at start-up


@functools.cache
def installed() -> dict[str, EntryPoint]:
    """Every module an installed package declares in the entry-point group mdbpy.modules, by
    name: mdbpy's own (pyproject.toml) and third-party ones alike, so a new module edits no list
    here. The built-in module first, then by name: autoloading, ::help and docs/reference.md
    follow this order. On a name clash mdbpy's own declaration wins. Only the packages' metadata
    is read, nothing imported, once per process; sys.path decides what is installed, and the
    command line's __main__ has dropped the current directory from it, so a `*.dist-info`
    planted there declares nothing."""
    from importlib.metadata import entry_points

    found: dict[str, EntryPoint] = {}
    for ep in sorted(entry_points(group=GROUP),
                     key=lambda ep: (ep.name != BUILTIN, ep.name, not _own(ep))):
        found.setdefault(ep.name, ep)
    return found


def _own(ep: EntryPoint) -> bool:
    return ep.dist is not None and ep.dist.name == "mdbpy"


def is_bundled(spec: str) -> bool:
    """Whether `spec` names one of mdbpy's own modules: an exception there is mdbpy's bug, to
    be shown whole, where a third-party module's is one line."""
    if spec == BUILTIN:
        return True
    ep = installed().get(spec)
    return ep is not None and _own(ep)


def import_dmod(spec: str):
    """Import a dmod: an installed module by name (see installed(): 'umem' is
    mdbpy_commands.umem), or a Python file or package directory when `spec` is written as a path
    (it holds a '/', as ./x.py or /abs/x.py, or ends in .py). A bare name is never looked up in
    the current directory: a file `core` (the kernel's default core name) or a folder `umem`
    there must not run in place of the installed module of that name. Returns (name, python
    module); every failure is one line naming `spec` and why (a bundled module's bug excepted).
    """
    import os

    if os.sep in spec or spec.endswith(".py"):
        return _import_path(spec)
    if spec == BUILTIN:  # as pyproject.toml declares it, without the lookup: that would cost
        module = "mdbpy_commands.core"  # every start-up ~18 ms importing importlib.metadata
    elif spec in installed():
        module = installed()[spec].module
    else:
        raise MdbError(f"failed to load module '{spec}': no such module (installed: "
                       f"{', '.join(installed())}; a file is loaded by its path, e.g. "
                       f"./{spec}.py)")
    try:
        mod = importlib.import_module(module)
    except (Exception, SystemExit) as e:  # a broken plugin must not take the session down
        if is_bundled(spec):
            raise
        raise load_error(spec, e) from None
    return getattr(mod, "DMOD_NAME", spec), mod


def declared_registry(bundled_only: bool = False, warn=None) -> Registry:
    """Every installed module's dcmds and walkers in a bare Registry: their declarations, with
    no target and nothing detected or run (no on_load). What ::help knows of a module the
    target has not loaded, and (bundled_only) what docs/reference.md is made from. A module
    that fails to import is left out, and warn(message) is told."""
    reg = Registry()
    for spec in installed():
        if bundled_only and not is_bundled(spec):
            continue
        try:
            reg.load_module(*import_dmod(spec))
        except MdbError as e:
            if warn is not None:
                warn(str(e))
    return reg


def _import_path(spec: str):
    """A dmod file or package directory, imported under a private name (mdbpy_ext_<stem>) so it
    can never shadow a bundled or a site-packages module. The file must be a regular file
    (a FIFO would block the read) holding Python source, whatever its name ends in."""
    import os
    import stat

    path = os.path.abspath(spec)
    stem = os.path.splitext(os.path.basename(path.rstrip(os.sep)))[0]
    loc, subdirs = path, None
    if os.path.isdir(path):
        loc, subdirs = os.path.join(path, "__init__.py"), [path]
    try:
        fd = os.open(loc, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO must not block
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise load_error(spec, "not a regular file")
            if os.pread(fd, 4, 0) == b"\x7fELF":
                raise load_error(spec, "an ELF file, not a Python module")
        finally:
            os.close(fd)
    except OSError as e:
        missing = subdirs and isinstance(e, FileNotFoundError)
        raise load_error(spec, "a directory without __init__.py" if missing else e.strerror) \
            from None
    modname = f"mdbpy_ext_{stem}"
    loader = _SourceOnlyLoader(modname, loc)
    mod = importlib.util.module_from_spec(importlib.util.spec_from_file_location(
        modname, loc, loader=loader, submodule_search_locations=subdirs))
    sys.modules[modname] = mod
    try:
        loader.exec_module(mod)
    except (Exception, SystemExit) as e:  # a broken module must not take the session down
        sys.modules.pop(modname, None)
        raise load_error(spec, e) from None
    return getattr(mod, "DMOD_NAME", stem), mod


class _SourceOnlyLoader(importlib.machinery.SourceFileLoader):
    """Python's source loader, except that it never writes a .pyc beside the file: a module
    may be loaded from anywhere (as root, from /etc), and nothing is left there."""

    def set_data(self, path, data, *, _mode=0o666) -> None:
        pass


def load_error(spec: str, why) -> MdbError:
    """`failed to load module 'SPEC': WHY` on one line (see reason())."""
    return MdbError(f"failed to load module '{spec}': {reason(spec, why)}")


def reason(spec: str, why) -> str:
    """What went wrong with module `spec` as one phrase: `why` is a phrase or the exception the
    module raised (a syntax error says the file is not Python, and where)."""
    import os

    if isinstance(why, SyntaxError):
        where = f" at line {why.lineno}" if why.lineno else ""
        if why.filename and os.path.abspath(why.filename) != os.path.abspath(spec):
            where = f" in {why.filename}{where}"  # a module the file imports
        return f"not Python: {why.msg}{where}"
    if isinstance(why, MdbError):
        return str(why)
    if isinstance(why, BaseException):
        text = (str(why).strip().splitlines() or [""])[0]
        return f"{type(why).__name__}: {text}" if text else type(why).__name__
    return why
