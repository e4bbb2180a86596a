"""Session: the one object every command receives.

It holds the target and its address space, the symbol table (built on first use), the loaded
dmods and their registry, the language state (dot, radix, variables), the settings, and a
per-session cache that allocator modules key by what they computed. Tests build a Session over a
SyntheticTarget and run the same commands a user types.
"""

from __future__ import annotations

import sys
from typing import Any

from mdbpy.dcmd import Registry, import_dmod, installed, is_bundled, load_error, reason
from mdbpy.errors import MdbError, UsageError
from mdbpy.memory import AddressSpace
from mdbpy.target.base import Target

# mdb's debugger options (::set -o / -o on the command line) that mdbpy understands.
DEFAULT_OPTIONS = {
    "nostop": False,  # live targets: inspect without stopping the process
    "pager": True,  # page long output on a terminal
    "repeatlast": False,  # an empty line repeats the last command
    "ignoreeof": False,
    "color": True,  # colour on a terminal (NO_COLOR and non-terminals turn it off)
    "json": False,  # JSON-capable dcmds print one JSON document (mdbpy.jsonout)
}

# Valued debugger options (-o name=value): mdb's are limits (array_mem_limit=); mdbpy's one,
# walklimit=N, caps how many addresses one walk prints (0, the default: no cap), so a walk over
# a huge or looping structure cannot flood a terminal or a pipeline. Kept in Session.settings.
WALKLIMIT = "walklimit"


def valued_option(opt: str, on: bool) -> tuple[str, str]:
    """(setting, value) of `-o name=value` (`+o` when not on), or a one-line error: for the
    command line's -o and ::set -o alike."""
    name, _, value = opt.partition("=")
    if name != WALKLIMIT:
        raise MdbError(f"unknown option '{name}=' (valued options: {WALKLIMIT}=N)")
    if not on:
        raise UsageError(f"{WALKLIMIT}= takes a value: use -o {WALKLIMIT}=0 for no limit")
    if not (value.isascii() and value.isdigit()):
        raise MdbError(f"{WALKLIMIT}= needs a decimal count, not '{value}'")
    return name, str(int(value))


def _missing_allocator_hooks(cls) -> list[str]:
    """The hooks every allocator must define (those mdbpy.heap.model.Allocator leaves
    unimplemented) that a module's ALLOCATOR lacks; [] without an ALLOCATOR."""
    if cls is None:
        return []
    from mdbpy.heap.model import Allocator

    def impl(owner, hook):
        f = getattr(owner, hook, None)
        return getattr(f, "__func__", f)

    return [f"{hook}()" for hook in ("detect", "buffers")
            if not callable(impl(cls, hook)) or impl(cls, hook) is impl(Allocator, hook)]


# mdb's names for registers that Linux's user_regs_struct (X86_64_REGS) names otherwise
MDB_REG_ALIASES = (("rflags", "eflags"), ("fsbase", "fs_base"), ("gsbase", "gs_base"))


class Session:
    def __init__(self, target: Target, *, sysroot: str | None = None,
                 debug_dirs: list[str] | None = None, options: dict | None = None,
                 settings: dict | None = None, out=None, err=None, load_builtin: bool = True):
        self.target = target
        self.mem = AddressSpace(target)
        self.sysroot = sysroot
        self.debug_dirs = debug_dirs
        self.options = dict(DEFAULT_OPTIONS)
        self.options.update(options or {})
        self.out = out if out is not None else sys.stdout
        self.err = err if err is not None else sys.stderr
        self.registry = Registry()
        # language state (mdb: dot, the increment, '&', the output radix, variables)
        self.dot = 0
        self.incr = 0
        self.last_dot = 0
        self.radix = 16
        self.vars: dict[str, int] = {}
        self.prompt = "> "
        self.macro_path: list[str] = ["."]
        self.cache: dict[Any, Any] = {}
        # string-valued settings of dmods, kept across stops (e.g. 'ptmalloc.locate': 'auto')
        self.settings: dict[str, str] = dict(settings or {})
        self._symbols = None
        self._autoloaded = False
        self.thread: int | None = None  # the current thread's tid (None: the first thread)
        # Set by the language engine so dcmds such as ::eval can run mdb commands.
        self.evaluate = None
        # The language engine itself (mdbpy.lang.engine.Engine), for $< / $<< macro files.
        self.engine = None
        # ::typeset -t tags variables; ::vars -t lists only the tagged ones.
        self.var_tags: set[str] = set()
        # Where the commands being run come from, when it is not the user's input (e.g.
        # "~/.mdbpyrc:3"): warnings name it so an error in a start-up file can be found.
        self.warn_context: str | None = None
        if load_builtin:
            self.load_dmod("core")

    # -- symbols ----------------------------------------------------------------------------
    @property
    def symbols(self):
        if self._symbols is None:
            from mdbpy.symbols.table import SymbolTable

            self._symbols = SymbolTable(self)
        return self._symbols

    def format_addr(self, addr: int, ret: bool = False) -> str:
        """mdb's %a: `obj`sym+0xoff`, `sym+0xoff` in the executable, else 0x-hex. ret: addr is
        a return address, named after the call before it (mdbpy.symbols.table.named_at)."""
        return self.symbols.format_addr(addr, ret)

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

    # -- modules ----------------------------------------------------------------------------
    def load_dmod(self, spec: str):
        """Import and register a dmod (see import_dmod), all or nothing: a module whose
        ALLOCATOR lacks a required hook, whose submodules fail to import or whose on_load
        fails is unregistered again, and the failure is one line naming `spec`."""
        name, mod = import_dmod(spec)
        missing = _missing_allocator_hooks(getattr(mod, "ALLOCATOR", None))
        if missing:
            raise load_error(spec, f"its ALLOCATOR does not define {', '.join(missing)}")
        if name in self.registry.dmods:
            raise MdbError(f"module '{name}' is already loaded")
        try:
            dm = self.registry.load_module(name, mod)
            hook = getattr(mod, "on_load", None)
            if hook is not None:
                hook(self)
        except (Exception, SystemExit) as e:
            if name in self.registry.dmods:
                self.registry.unload_module(name)
            if is_bundled(spec) and not isinstance(e, MdbError):
                raise  # a bug in mdbpy's own module: an internal error, not a load failure
            raise load_error(spec, e) from None
        if getattr(mod, "ALLOCATOR", None) is not None:
            self.cache.pop("allocators", None)  # a module loaded later is an allocator too
        return dm

    def autoload(self) -> list[str]:
        """Load the installed modules whose allocator is in this target (once per session).

        One protocol for mdbpy's modules and third-party ones: a module exporting
        `is_present(session) -> bool` is asked, in installed() order, and loaded when it says
        yes. A module that fails to import or to answer is one warning, and the others still
        load. Detection may read symbols, so it runs when a heap command or an unknown command
        name first needs it, never at start-up."""
        if self._autoloaded:
            return []
        self._autoloaded = True
        loaded = []
        for spec in installed():
            try:
                name, mod = import_dmod(spec)
            except MdbError as e:  # a broken plugin: one line, and the others still load
                self.warn(str(e))
                continue
            if name in self.registry.dmods or not callable(getattr(mod, "is_present", None)):
                continue  # loaded already, or not an allocator module
            try:
                present = mod.is_present(self)
            except Exception as e:
                if is_bundled(spec) and not isinstance(e, MdbError):
                    raise  # mdbpy's own bug: an internal error
                self.warn(f"{spec}: detection failed: {reason(spec, e)}")
                continue
            if present:
                try:
                    self.load_dmod(spec)
                except MdbError as e:
                    self.warn(str(e))
                    continue
                loaded.append(name)
        return loaded

    def find_dcmd(self, name: str):
        """A dcmd by name, loading the target's allocator dmods first if it is not known."""
        return self._autoloading(self.registry.dcmd, name)

    def find_walker(self, name: str):
        """A walker by name, loading the target's allocator dmods first if it is not known."""
        return self._autoloading(self.registry.walker, name)

    def _autoloading(self, lookup, name: str):
        try:
            return lookup(name)
        except MdbError:
            if not self.autoload():
                raise
            return lookup(name)

    def allocators(self) -> list:
        """The allocators found in the target, from the loaded allocator dmods."""
        self.autoload()
        found = self.cache.get("allocators")
        if found is None:
            found = []
            for dm in self.registry.dmods.values():
                cls = getattr(dm.pymodule, "ALLOCATOR", None)
                if cls is not None:
                    a = cls.detect(self)
                    if a is not None:
                        found.append(a)
            self.cache["allocators"] = found
        return found

    # -- state changes ----------------------------------------------------------------------
    def invalidate(self) -> None:
        """The target changed (resumed, written): drop everything derived from its memory."""
        self.cache.clear()
        self.mem.refresh()
        if self._symbols is not None:
            self._symbols.refresh()

    def warn(self, msg: str) -> None:
        if self.warn_context:
            msg = f"{self.warn_context}: {msg}"
        self.err.write(f"mdbpy: {msg}\n")
        self.err.flush()

    def close(self) -> None:
        self.target.close()
