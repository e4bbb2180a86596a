"""Running a scenario: plan the program (functions, call sites, globals, threads), lay it out,
then execute the statements against the simulated process and its SLUB allocator.

The plan is a dry run over the statements that follows only the call stacks: a scenario has no
branches, so it finds every call site the real run will use, and the code (hence every return
address a track or a stack records) is fixed before the first allocation.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from mdbpy.sim import slub as S
from mdbpy.sim.elfwrite import ElfSymbol, Image, build_image
from mdbpy.sim.layouts import SIM_ALLOCATOR_SYMBOL, SIM_TRACK_ADDRS
from mdbpy.sim.machine import (ALLOC_FUNCS, BUILTINS, CODE_OFFSET, MAIN_BOTTOM,
                               MAIN_STACK_TOP, META_BASE, SLAB_BASE, STACK_SIZE, TEXT_BASE,
                               THREAD_BOTTOM, THREAD_STACKS, Code, Region, SimThread, page_up)
from mdbpy.sim.scenario import Ref, ScenarioError, Stmt

HEADER = ("program", "pid", "cpus", "seed")
DEFAULTS = {"program": "simprog", "pid": 4242, "cpus": 2, "seed": 1}
CLOCK_START = 1_000_000_000  # ns: the first event's time is a second into the run
MAIN = "main"


@dataclass
class ObjInfo:
    """What the simulator knows about an object it handed out (for the truth)."""

    name: str
    cache: str
    size: int  # the size asked for
    thread: str
    alloc_stack: list[str]
    free_stack: list[str] | None = None
    freed: bool = False


@dataclass
class Program:
    """The planned program: header values, code, globals and threads in order of appearance."""

    header: dict
    code: Code
    globals: dict[str, int]  # name -> size
    caches: dict[str, int]  # named cache -> object size
    threads: dict[str, int | None] = field(default_factory=dict)  # name -> cpu


def plan(stmts: list[Stmt]) -> Program:
    header = dict(DEFAULTS)
    seen_header: set[str] = set()
    code, globals_, caches = Code(), {}, {}
    threads: dict[str, int | None] = {MAIN: None}
    stacks = {MAIN: [MAIN_BOTTOM]}
    cur = MAIN
    body = False
    for st in stmts:
        op, a, n = st.op, st.args, st.line
        if op in HEADER:
            if body:
                raise ScenarioError(n, f"`{op}` must come before the first other statement")
            if op in seen_header:
                raise ScenarioError(n, f"`{op}` given twice")
            seen_header.add(op)
            header[op] = a[0]
            continue
        body = True
        if op == "cache":
            if a[0] in caches or a[0].startswith("kmalloc-"):
                raise ScenarioError(n, f"cache {a[0]} already exists")
            caches[a[0]] = a[1]
        elif op == "global":
            if a[0] in globals_ or a[0] == SIM_ALLOCATOR_SYMBOL:
                raise ScenarioError(n, f"global {a[0]} already exists")
            globals_[a[0]] = a[1]
        elif op == "thread":
            cur = a[0]
            stacks.setdefault(cur, [THREAD_BOTTOM])
            if a[1] is not None:
                if threads.get(cur) not in (None, a[1]):
                    raise ScenarioError(n, f"thread {cur} already runs on cpu {threads[cur]}")
                threads[cur] = a[1]
            else:
                threads.setdefault(cur, None)
        elif op in ("call", "alloc", "free"):
            if op == "call" and a[0] in BUILTINS:
                raise ScenarioError(n, f"{a[0]} is a built-in function")
            callee = a[0] if op == "call" else "kfree" if op == "free" else ALLOC_FUNCS[a[1]]
            try:
                code.site(stacks[cur][-1], n, callee)
            except ValueError as e:
                raise ScenarioError(n, str(e)) from None
            if op == "call":
                stacks[cur].append(a[0])
        elif op == "ret":
            if len(stacks[cur]) == 1:
                raise ScenarioError(n, f"ret: thread {cur} has no function to return from")
            stacks[cur].pop()
    clash = set(globals_) & set(code.sites)
    if clash:
        raise ScenarioError(0, f"{sorted(clash)[0]} is both a function and a global")
    return Program(header, code, globals_, caches, threads)


class Simulation:
    """The simulated process running one planned scenario."""

    def __init__(self, prog: Program):
        self.prog = prog
        h = prog.header
        self.name, self.pid, self.cpus = h["program"], h["pid"], h["cpus"]
        self.rng = random.Random(h["seed"])
        self.clock = CLOCK_START
        code = self.code = prog.code
        code_bytes = code.layout(TEXT_BASE + CODE_OFFSET)
        binder = S.bind()
        self.track_struct = binder["sim_track"]
        # data: sim_allocator first, then the globals in declaration order
        self.global_addr: dict[str, int] = {}
        sizes = [(SIM_ALLOCATOR_SYMBOL, binder["sim_allocator"].size), *prog.globals.items()]
        data_off, layout = 0, []
        for gname, size in sizes:
            data_off = -(-data_off // 16) * 16
            layout.append((gname, data_off, size))
            data_off += size
        data_size = page_up(max(data_off, 1))
        text_size = page_up(CODE_OFFSET + len(code_bytes))
        data_base = TEXT_BASE + text_size
        for gname, off, _ in layout:
            self.global_addr[gname] = data_base + off
        self.symbols = [ElfSymbol(f, code.addr[f], code.size[f], "func") for f in code.addr]
        self.symbols += [ElfSymbol(g, data_base + off, size, "object") for g, off, size in layout]
        self.image: Image = build_image(TEXT_BASE, CODE_OFFSET, code_bytes, data_size,
                                        self.symbols, code.addr[MAIN_BOTTOM])
        self.text = Region(TEXT_BASE, "r-xp", "", bytearray(self.image.data[:text_size]))
        self.data = Region(data_base, "rw-p", "", bytearray(data_size))
        self.meta = Region(META_BASE, "rw-p")
        self.slab_area = Region(SLAB_BASE, "rw-p")
        self.slub = S.Slub(self.slab_area, self.meta, binder)
        for cname, size in prog.caches.items():
            self.slub.create_cache(cname, size)
        self.threads: dict[str, SimThread] = {}
        for k, (tname, cpu) in enumerate(prog.threads.items()):
            top = MAIN_STACK_TOP if k == 0 else THREAD_STACKS + k * 2 * STACK_SIZE
            stack = Region(top - STACK_SIZE, "rw-p", "[stack]" if k == 0 else "",
                           bytearray(STACK_SIZE))
            t = SimThread(tname, self.pid + k, k % self.cpus if cpu is None else cpu, stack)
            t.push(MAIN_BOTTOM if k == 0 else THREAD_BOTTOM, 0)
            self.threads[tname] = t
        self.cur = self.threads[MAIN]
        self.handles: dict[str, int] = {}
        self.objects: dict[int, ObjInfo] = {}
        self.writes: list[tuple[int, int, list[str]]] = []  # slab-area writes: lo, hi, stack
        self.double_frees: list[dict] = []
        self.pending_damage: list[tuple] = []  # (line, count, seed, kinds) of `damage`
        self.damage: list = []  # mdbpy.sim.damage.Damage, applied by finish()

    # -- statements ---------------------------------------------------------------------
    def run(self, stmts: list[Stmt]) -> None:
        for st in stmts:
            fn = getattr(self, "_op_" + st.op, None)
            if fn is None:  # header, cache and global statements were planned
                continue
            try:
                fn(st.line, *st.args)
            except ValueError as e:
                raise ScenarioError(st.line, str(e)) from None

    def finish(self) -> None:
        """Write the allocator's descriptors (the metadata mapping ends on a page), then
        apply the damage the scenario asked for."""
        from mdbpy.sim import damage

        pad = page_up(len(self.meta.data)) - len(self.meta.data)
        self.meta.data += bytes(pad)
        self.slub.finish(self.data, self.global_addr[SIM_ALLOCATOR_SYMBOL], self.clock,
                         self.cpus)
        for line, count, seed, kinds in self.pending_damage:
            try:
                self.damage += damage.apply(self, seed, count, kinds)
            except ValueError as e:
                raise ScenarioError(line, str(e)) from None

    def _op_damage(self, line, count, seed, kinds):
        from mdbpy.sim.damage import KINDS

        bad = [k for k in kinds if k not in KINDS]
        if bad:
            raise ValueError(f"unknown damage kind '{bad[0]}' (one of {', '.join(KINDS)})")
        self.pending_damage.append((line, count, self.prog.header["seed"] if seed is None
                                    else seed, kinds or KINDS))

    def _op_thread(self, line, name, cpu):
        self.cur = self.threads[name]

    def _op_call(self, line, func):
        t = self.cur
        t.push(func, self.code.ret_addr(t.top.func, line))

    def _op_ret(self, line):
        self.cur.pop()

    def _op_alloc(self, line, name, how, arg):
        if name in self.global_addr:
            raise ValueError(f"{name} is a global")
        if how == "cache":
            cache = self.slub.by_name.get(arg)
            if cache is None:
                raise ValueError(f"no cache named {arg}")
            size = cache.geom.object_size
        else:
            cache, size = self.slub.kmalloc_cache(arg), arg
        obj = self.slub.alloc(cache, self._track(line))
        if how == "kzalloc":
            self.slab_area.view(obj, cache.geom.object_size)[:] = bytes(cache.geom.object_size)
        self.handles[name] = obj
        t = self.cur
        self.objects[obj] = ObjInfo(name, cache.name, size, t.name, self._stack_names())
        self._put(t.slot(name), obj.to_bytes(8, "little"))

    def _op_free(self, line, name):
        obj = self._handle(name)
        info = self.objects[obj]
        first = info.free_stack
        info.free_stack = self._stack_names()
        if self.slub.free(obj, self._track(line)) == "double":
            self.double_frees.append({"address": obj, "cache": info.cache, "name": name,
                                      "alloc_stack": info.alloc_stack, "first_free_stack": first,
                                      "free_stack": info.free_stack, "line": line})
        info.freed = True

    def _op_store(self, line, dest, src):
        value = src if isinstance(src, int) else self._value(src)
        self._put(self._place(dest), value.to_bytes(8, "little"))

    def _op_write(self, line, dest, data):
        self._put(self._place(dest), data)

    def _op_memset(self, line, dest, byte, count):
        self._put(self._place(dest), bytes([byte]) * count)

    # -- helpers ------------------------------------------------------------------------
    def _handle(self, name: str) -> int:
        obj = self.handles.get(name)
        if obj is None:
            raise ValueError(f"no object named {name}")
        return obj

    def _global(self, name: str) -> int | None:
        return None if name == SIM_ALLOCATOR_SYMBOL else self.global_addr.get(name)

    def _value(self, ref: Ref) -> int:
        """A source: the pointer an object name or a global holds (+offset), or `&global`."""
        g = self._global(ref.name)
        if ref.address:
            if g is None:
                raise ValueError(f"no global named {ref.name}")
            base = g
        elif g is not None:
            base = int.from_bytes(self.data.view(g, 8), "little")
        else:
            base = self._handle(ref.name)
        return (base + ref.offset) & ((1 << 64) - 1)

    def _place(self, ref: Ref) -> int:
        """A destination: a stack slot, a global's bytes, or the bytes of an object."""
        if ref.local:
            return self.cur.slot(ref.name)
        g = self._global(ref.name)
        base = g if g is not None else self._handle(ref.name)
        return (base + ref.offset) & ((1 << 64) - 1)

    def _put(self, addr: int, data: bytes) -> None:
        """Write program bytes: into the data, a stack or the slab area, nowhere else."""
        alloc = self.global_addr[SIM_ALLOCATOR_SYMBOL]
        if addr < alloc + self.slub.b["sim_allocator"].size and addr + len(data) > alloc:
            raise ValueError(f"write at 0x{addr:x} would overwrite {SIM_ALLOCATOR_SYMBOL}")
        regions = [self.data, self.slab_area, *(t.stack for t in self.threads.values())]
        r = next((r for r in regions if r.start <= addr and addr + len(data) <= r.end), None)
        if r is None:
            raise ValueError(f"write of {len(data)} bytes at 0x{addr:x} is outside the "
                             f"program's writable memory")
        r.view(addr, len(data))[:] = data
        if r is self.slab_area:
            self.writes.append((addr, addr + len(data), self._stack_names()))

    def _stack_names(self) -> list[str]:
        return self.cur.call_stack()

    def _track(self, line: int) -> bytes:
        """A sim_track for an alloc or free at this statement: the return address of its
        call site, then each frame's return address, innermost first, 0-terminated."""
        t = self.cur
        pcs = [self.code.ret_addr(t.top.func, line)]
        pcs += [f.ret for f in reversed(t.frames) if f.ret]
        pcs = pcs[:SIM_TRACK_ADDRS - 1] + [0]
        self.clock += self.rng.randrange(1_000, 100_000)
        return S.pack(self.track_struct, addrs=pcs, cpu=t.cpu, pid=t.tid, when=self.clock)
