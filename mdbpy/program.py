"""Program: what mdbpy knows of one target, apart from anyone typing at it.

The target and its address space, the symbol table (built on first use), the modules loaded
for it and their registry, the allocators they found, the settings the modules read, and a
cache of what was computed from the target's memory (dropped when the target changes). The
heap engines, the allocator modules' detection and walks, and the Python API's typed values
need only this; the interaction state (dot, radix, variables, options, the language engine,
the selected thread) is the Session's (session.py), which owns one Program.

Messages go through `io`, an object with `out`, `err` and `warn_context` (the Session, whose
streams a pager may swap at any time; a bare Program writes to the process's own): warnings,
progress and the allocators' debug traces are the program's, where they are printed is not.
"""

from __future__ import annotations

import sys
from typing import Any

from mdbpy.dcmd import Registry, import_dmod, installed, is_bundled, load_error, reason
from mdbpy.errors import MdbError
from mdbpy.memory import AddressSpace
from mdbpy.target.base import Target


class StdIO:
    """The process's own streams, for a Program used without a Session."""

    warn_context: str | None = None

    @property
    def out(self):
        return sys.stdout

    @property
    def err(self):
        return sys.stderr


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


class Program:
    def __init__(self, target: Target, *, sysroot: str | None = None,
                 debug_dirs: list[str] | None = None, settings: dict | None = None, io=None):
        self.target = target
        self.mem = AddressSpace(target)
        self.sysroot = sysroot
        self.debug_dirs = debug_dirs
        self.io = io if io is not None else StdIO()
        self.registry = Registry()
        self.cache: dict[Any, Any] = {}
        # string-valued settings of dmods, kept across stops (e.g. 'ptmalloc.locate': 'auto')
        self.settings: dict[str, str] = dict(settings or {})
        self._symbols = None
        self._autoloaded = False

    @property
    def out(self):
        return self.io.out

    @property
    def err(self):
        return self.io.err

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
        """Load the installed modules whose allocator is in this target (once per program).

        One protocol for mdbpy's modules and third-party ones: a module exporting
        `is_present(program) -> bool` is asked, in installed() order, and loaded when it says
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

    def retarget(self, target: Target) -> None:
        """Put another target in place of this one (::run starts the executable being
        looked at): the old one is closed and everything learnt from it is dropped, its
        symbols and allocators included; the loaded modules stay and are asked again."""
        old, self.target = self.target, target
        old.close()
        self.mem = AddressSpace(target)
        self._symbols = None
        self._autoloaded = False
        self.cache.clear()

    def warn(self, msg: str) -> None:
        """One `mdbpy: ...` line on the error stream, naming where the commands being run
        come from when that is not the user's input (e.g. ~/.mdbpyrc:3)."""
        context = self.io.warn_context
        if context:
            msg = f"{context}: {msg}"
        self.err.write(f"mdbpy: {msg}\n")
        self.err.flush()

    def close(self) -> None:
        self.target.close()
