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


@dataclass
class Dcmd:
    name: str
    func: Callable
    descr: str
    usage: str = ""
    help: str = ""
    example: str = ""
    module: str = ""
    aliases: tuple[str, ...] = ()
    # enabled(session) returns None when usable, else a one-line reason (e.g. "libumem not found")
    enabled: Callable[[Session], str | None] | None = None
    # pipe_all: the dcmd receives the whole address list at once (::head, ::whatis) in inv.pipe
    pipe_all: bool = False

    def synopsis(self) -> str:
        """`[ addr ] ::name usage` as ::help prints it (mdb's '?' / ':' usage prefixes)."""
        usage = self.usage
        prefix = ""
        if usage.startswith("?"):
            prefix, usage = "[ addr ] ", usage[1:]
        elif usage.startswith(":"):
            prefix, usage = "addr ", usage[1:]
        name = self.name if self.name.startswith("$") else "::" + self.name
        return f"{prefix}{name} {usage.strip()}".rstrip()


@dataclass
class Walker:
    name: str
    func: Callable
    descr: str
    module: str = ""
    needs_addr: bool = False
    enabled: Callable[[Session], str | None] | None = None
    help: str = ""


def dcmd(name: str, descr: str, usage: str = "", help: str = "", example: str = "",
         aliases: Iterable[str] = (), enabled=None, pipe_all: bool = False):
    """Declare a dcmd. `descr` is the one-line description; `help` the DESCRIPTION of ::help."""
    if not descr:
        raise ValueError(f"dcmd {name} needs a one-line description")

    def wrap(func):
        func.__mdb_dcmd__ = Dcmd(name, func, descr, usage, help or func.__doc__ or "", example,
                                 aliases=tuple(aliases), enabled=enabled, pipe_all=pipe_all)
        return func

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

    def getopt(self, spec: str, numeric: str = "") -> tuple[dict, list]:
        """mdb_getopts: see parse_options()."""
        return parse_options(self.args, spec, numeric, self.session.radix)

    def options(self, spec: str, numeric: str = "") -> dict:
        """getopt() for dcmds that take options only: a leftover word is a usage error."""
        opts, rest = self.getopt(spec, numeric)
        if rest:
            raise UsageError(f"unexpected argument '{rest[0]}'")
        return opts


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


def parse_options(args: list, spec: str, numeric: str = "", radix: int = 16) -> tuple[dict, list]:
    """getopt over dcmd arguments: `spec` is letters, a letter followed by ':' takes a value.

    Letters may be combined (-dv), a value may be attached (-n5) or the next word, `--` ends the
    options, and option values named in `numeric` are converted as mdb_strtoull does. Boolean
    options map to True; repeated valued options keep the last value. Returns (options, rest).
    """
    takes = {}
    i = 0
    while i < len(spec):
        c = spec[i]
        if c == " ":
            i += 1
            continue
        has_val = i + 1 < len(spec) and spec[i + 1] == ":"
        takes[c] = has_val
        i += 2 if has_val else 1
    opts: dict = {}
    rest: list = []
    words = list(args)
    k = 0
    while k < len(words):
        w = words[k]
        if not isinstance(w, str) or not w.startswith("-") or w == "-" or (
                len(w) > 1 and w[1].isdigit() and "0" not in takes and w[1] not in takes):
            rest.append(w)
            k += 1
            continue
        if w == "--":
            rest.extend(words[k + 1:])
            break
        j = 1
        while j < len(w):
            c = w[j]
            if c not in takes:
                raise UsageError(f"illegal option -- {c}")
            if takes[c]:
                val = w[j + 1:]
                if not val:
                    k += 1
                    if k >= len(words):
                        raise UsageError(f"option requires an argument -- {c}")
                    val = words[k]
                opts[c] = to_number(val, radix) if c in numeric else val
                break
            opts[c] = True
            j += 1
        k += 1
    return opts, rest


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
