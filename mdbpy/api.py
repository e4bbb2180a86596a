"""The Python API: mdbpy for scripts and notebooks, in the spirit of drgn.

    import mdbpy
    with mdbpy.open_core("core.1234") as dbg:
        print(dbg.run("::findleaks"))
        for g in dbg.findleaks():
            print(g.cache, g.count, g.caller_name)

A Debugger is one Session and its language engine over one target. Everything it returns comes
from the same code the dcmds use (the heap engines, the walkers, the layout binders), shaped as
the dataclasses of mdbpy.results, whose as_dict() is also the JSON of `--json`.

A live process is stopped while a Debugger holds it. It is resumed and detached by close(), by
leaving the `with` block (also on an exception), when the Debugger is garbage-collected, and at
interpreter exit: a weakref.finalize does the last two, so no reference cycle or forgotten
close() leaves it stopped. If Python is killed outright, PTRACE_SEIZE's semantics resume it.
"""

from __future__ import annotations

import io
import signal
import sys
import weakref
from collections.abc import Iterator
from dataclasses import dataclass

from mdbpy.errors import MdbError, QuitSession
from mdbpy.symbols.base import Symbol
from mdbpy.target.base import Target, Thread

# Nothing may interrupt a resume: these are blocked while a target closes.
_CLOSE_BLOCKED = {signal.SIGTERM, signal.SIGHUP, signal.SIGINT}


def close_target(target: Target) -> None:
    """Close (resume, detach) the target with the signals that would interrupt the resume
    blocked (the command line closes its targets through this too)."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _CLOSE_BLOCKED)
    try:
        target.close()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


@dataclass
class Location:
    """What an address is in symbol terms: mdb's %a name (`libc.so.6`malloc+0x10`, or 0x-hex
    outside every symbol) and, when a symbol contains it, the symbol and the offset into it."""

    addr: int
    name: str
    symbol: Symbol | None = None
    offset: int | None = None


@dataclass
class AllocatorInfo:
    """An allocator found in the target: its module name and version (None when unknown)."""

    name: str
    version: tuple | None


class Debugger:
    """One session over one target. Use it as a context manager, or call close().

    attach(), open_core() and demo() make one; Debugger(session) wraps a Session built
    otherwise (a SyntheticTarget in tests), and closing it closes the session's target."""

    def __init__(self, session):
        from mdbpy.lang.engine import Engine

        self._finalizer = weakref.finalize(self, close_target, session.target)
        self.session = session
        # what is known of the target (memory, symbols, types, allocators): the typed reads
        # below need nothing of the interaction's state (dot, radix, variables)
        self.program = session.program
        self._engine = session.engine or Engine(session)

    # -- lifetime ---------------------------------------------------------------------------
    def close(self) -> None:
        """Close the target (a live process is resumed and detached). Idempotent."""
        self._finalizer()

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def __enter__(self) -> Debugger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check(self) -> None:
        if self.closed:
            raise MdbError("this debugger is closed")

    # -- commands ---------------------------------------------------------------------------
    def run(self, commands: str) -> str:
        """Run mdb commands (as `mdbpy -e`) and return what they print. Warnings go to
        sys.stderr; if the last command fails, MdbError carries its one-line message."""
        self._check()
        s = self.session
        out, err = io.StringIO(), io.StringIO()
        saved = s.out, s.err
        s.out, s.err = out, err
        try:
            status = self._engine.run_string(commands)
        except QuitSession:
            raise MdbError("$q ends a session: call close() instead") from None
        finally:
            s.out, s.err = saved
        messages = [line.removeprefix("mdbpy: ") for line in err.getvalue().splitlines()]
        if status:
            failed = [m for m in messages if not m.startswith(("Usage: ", "try '::help"))]
            raise MdbError(failed[-1] if failed else f"{commands.strip()}: failed")
        for m in messages:
            sys.stderr.write(f"mdbpy: {m}\n")
        return out.getvalue()

    def walk(self, name: str, addr: int | None = None) -> Iterator[int]:
        """The addresses a walker yields (`::walk name`, or `addr::walk name`), lazily."""
        self._check()
        s = self.session
        w = s.find_walker(name)
        reason = w.enabled(s) if w.enabled is not None else None
        if reason:
            raise MdbError(f"walker '{name}': {reason}")
        if w.needs_addr and addr is None:
            raise MdbError(f"walker '{name}' needs an address to start from")
        for a in w.func(s, addr):
            yield int(a)

    # -- memory, symbols, threads -------------------------------------------------------------
    def read(self, addr: int, size: int) -> bytes:
        """size bytes at addr (ReadError, an MdbError, names the first unreadable address)."""
        self._check()
        return self.program.mem.read(addr, size)

    def symbol(self, name: str) -> Symbol:
        """A symbol by name (`name`, or `object`name` as in mdb)."""
        self._check()
        obj, _, sym = name.rpartition("`")
        hit = self.program.symbols.lookup(sym, obj or None)
        if hit is None:
            raise MdbError(f"failed to lookup symbol {name}")
        return hit

    def lookup(self, addr: int) -> Location:
        """The symbol containing addr, with mdb's name for the address."""
        self._check()
        syms = self.program.symbols
        hit = syms.lookup_addr(addr)
        sym, off = hit if hit is not None else (None, None)
        return Location(addr, syms.format_addr(addr), sym, off)

    def threads(self) -> list[Thread]:
        """The target's threads (tid, name, registers by name, state)."""
        self._check()
        return list(self.program.target.threads())

    def stack(self, tid: int | None = None, *, lines: bool = False):
        """A thread's frames (mdbpy.results.Frame), innermost first, as $c and ::stacks print
        them: a function inlined at a frame's pc is a frame of its own, named `[inlined]
        name`, with the pc and frame pointer of the frame holding it; the current thread when
        tid is None. lines adds file and line where DWARF knows them."""
        from mdbpy_commands.core.stack import thread_stack

        self._check()
        s = self.session
        t = s.current_thread() if tid is None else next(
            (t for t in s.target.threads() if t.tid == tid), None)
        if t is None:
            raise MdbError(f"no thread {tid} in this target" if tid is not None
                           else f"{s.target.describe()} has no threads")
        st = thread_stack(s, t, lines)
        if st.error:
            raise MdbError(st.error)
        return st.frames

    # -- typed structs ------------------------------------------------------------------------
    def _binders(self) -> list:
        from mdbpy.heap.model import allocators

        return [(a.name, a.binder) for a in allocators(self.program) if a.binder is not None]

    def layouts(self) -> dict[str, list[str]]:
        """The structs each allocator module reads, by module: what struct() accepts."""
        self._check()
        return {mod: b.names() for mod, b in self._binders()}

    def struct(self, name: str, addr: int):
        """The struct `name` (or `module`name`) at addr as a typed view: fields are attributes
        (ints, bytes for char arrays, tuples for arrays, views for nested structs), laid out
        as ::layout prints them for this target."""
        self._check()
        mod, _, sname = name.rpartition("`")
        for m, b in self._binders():
            if (not mod or mod == m) and sname in b.names():
                return b[sname].view(self.program.mem, addr)
        raise MdbError(f"no layout named {name} (see layouts())")

    # -- typed values (DWARF; docs/types.md) ---------------------------------------------------
    def type(self, name: str):
        """A type by name, as ::print takes it (`struct node`, `size_t`, ``libc`FILE``)."""
        from mdbpy.types.space import space_of

        self._check()
        return space_of(self.program).lookup(name)

    def value(self, name: str, addr: int | None = None):
        """The global `name` (or ``obj`name``) as a typed mdbpy.types.value.Value, drgn's
        Object in spirit; with addr, the value of the type `name` at addr."""
        from mdbpy.types.space import space_of
        from mdbpy.types.value import Value

        self._check()
        space = space_of(self.program)
        if addr is not None:
            return Value(space, space.lookup(name), addr)
        t, where = space.global_var(name)
        return Value(space, t, where)

    # -- the heap -----------------------------------------------------------------------------
    def allocators(self) -> list[AllocatorInfo]:
        """The allocators found in the target."""
        self._check()
        return [AllocatorInfo(a.name, a.version) for a in self.program.allocators()]

    def findleaks(self, *, force: bool = False):
        """The leak groups of ::findleaks (mdbpy.results.LeakGroup), in its table order. The
        result is cached as the dcmd's is; force rescans."""
        from mdbpy.heap.report import entries
        from mdbpy.results import leak_groups
        from mdbpy_commands.core.heap import run_findleaks

        self._check()
        report, _, _ = run_findleaks(self.session, force)
        return leak_groups(self.session, entries(self.session, report))

    def whatis(self, addr: int):
        """What ::whatis says of addr first (mdbpy.results.Whatis; source None: unknown)."""
        from mdbpy.results import whatis_hits
        from mdbpy_commands.core.symbols import map_name

        self._check()
        return whatis_hits(self.session, addr, False, map_name)[0]

    def verify(self):
        """Every problem ::heap_verify finds (mdbpy.results.Problem), allocator by allocator."""
        from mdbpy.results import Problem
        from mdbpy.heap.model import allocators

        self._check()
        return [Problem.of(self.session, a.name, p) for a in allocators(self.session)
                for p in a.verify()]

    def heap_stats(self):
        """The rows of ::heap_stats (mdbpy.results.HeapStat) of every allocator."""
        from mdbpy.results import HeapStat
        from mdbpy.heap.model import allocators

        self._check()
        return [HeapStat.of(a.name, r) for a in allocators(self.program) for r in a.stats()]

    def __repr__(self) -> str:
        if self.closed:
            return "<mdbpy.Debugger (closed)>"
        return f"<mdbpy.Debugger {self.session.target.describe()}>"


def _debugger(target: Target, sysroot: str | None = None) -> Debugger:
    """A Debugger over a just-opened target; the target is closed if that fails."""
    from mdbpy.session import Session

    try:
        session = Session(target, sysroot=sysroot)
        for warning in getattr(target, "warnings", ()):  # e.g. a core's missing files
            session.warn(warning)
        return Debugger(session)
    except BaseException:
        close_target(target)
        raise


def attach(pid: int, *, write: bool = False) -> Debugger:
    """Stop the process pid and debug it; it runs on when the Debugger is closed."""
    from mdbpy.target.live import LiveTarget

    return _debugger(LiveTarget(pid, stop=True, writable=write))


def open_core(core: str, exe: str | None = None, *, sysroot: str | None = None) -> Debugger:
    """Debug a core file (with its executable when the core's notes cannot name it), or an
    executable alone; sysroot finds the mapped files of a core taken on another machine."""
    from mdbpy.target.core import open_file_target

    return _debugger(open_file_target(core, exe=exe, sysroot=sysroot), sysroot)


def demo() -> Debugger:
    """The simulator's demo program (mdbpy --demo): a heap with a planted leak, overflow,
    use-after-free write and double free. Its files are removed when the Debugger closes."""
    from mdbpy.sim.demo import open_demo_target

    return _debugger(open_demo_target())
