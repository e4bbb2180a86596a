"""The simulated process: its address space, its code, its threads and their call frames.

The program's text is real x86-64 code: every function is `push %rbp; mov %rsp,%rbp`, one
5-byte `call` per call site, `leave; ret`. A call site is a statement of the scenario (a call,
an allocation, a free) inside a function, so return addresses in stacks and alloc/free tracks
point just past a real call instruction, and a disassembler shows the call to `kmalloc`. Frames
keep the frame-pointer chain ([rbp] is the caller's rbp, [rbp+8] the return address), so
mdbpy's unwinder and gdb walk the simulated stacks without any CFI.
"""

from __future__ import annotations

from dataclasses import dataclass, field

PAGE = 4096
TEXT_BASE = 0x400000  # the program's ELF headers and code (a non-PIE executable)
CODE_OFFSET = 0x1000  # file (and text) offset of the first function
META_BASE = 0x7F3000000000  # caches and slab descriptors
SLAB_BASE = 0x7F4000000000  # slab memory
THREAD_STACKS = 0x7F6000000000  # the second thread's stack; the others follow
MAIN_STACK_TOP = 0x7FFD00000000
STACK_SIZE = 0x10000
MAX_FRAMES = 256  # call depth per thread
MAX_SLOTS = 256  # stack slots per frame
MAX_SITES = 100_000  # call sites in the whole program

PROLOGUE = b"\x55\x48\x89\xe5"  # push %rbp; mov %rsp,%rbp
EPILOGUE = b"\xc9\xc3"  # leave; ret
CALL_LEN = 5  # e8 rel32

MAIN_BOTTOM = "_start"  # the function at the bottom of the main thread's stack
THREAD_BOTTOM = "start_thread"  # ... and of every other thread's
ALLOC_FUNCS = {"kmalloc": "kmalloc", "kzalloc": "kzalloc", "cache": "kmem_cache_alloc"}
BUILTINS = (MAIN_BOTTOM, THREAD_BOTTOM, "kmalloc", "kzalloc", "kmem_cache_alloc", "kfree")


def page_up(n: int) -> int:
    return -(-n // PAGE) * PAGE


@dataclass
class Region:
    """One mapping of the simulated process: its bytes, growing while the scenario runs."""

    start: int
    perms: str
    name: str = ""  # a pseudo-name such as [stack], else anonymous
    data: bytearray = field(default_factory=bytearray)

    @property
    def end(self) -> int:
        return self.start + len(self.data)

    def view(self, addr: int, n: int) -> memoryview:
        return memoryview(self.data)[addr - self.start:addr - self.start + n]


class Code:
    """The program's functions and call sites, laid out once all sites are known.

    Sites are registered per (function, key) with the function they call; `ret_addr` gives the
    return address of a site (the byte after its call instruction) once `layout` has run.
    """

    def __init__(self):
        self.sites: dict[str, dict] = {f: {} for f in BUILTINS}  # func -> key -> (i, callee)
        self.addr: dict[str, int] = {}
        self.size: dict[str, int] = {}
        self.count = 0

    def function(self, name: str) -> None:
        self.sites.setdefault(name, {})

    def site(self, func: str, key, callee: str) -> None:
        self.function(callee)
        sites = self.sites.setdefault(func, {})
        if key not in sites:
            if self.count >= MAX_SITES:
                raise ValueError(f"more than {MAX_SITES} call sites")
            self.count += 1
            sites[key] = (len(sites), callee)

    def layout(self, base: int) -> bytes:
        """The code bytes of every function placed from `base`, 16-byte aligned, padded with
        int3; sets `addr` and `size`."""
        cur = base
        for name, sites in self.sites.items():
            self.addr[name] = cur
            self.size[name] = len(PROLOGUE) + CALL_LEN * len(sites) + len(EPILOGUE)
            cur += -(-self.size[name] // 16) * 16
        out = bytearray(b"\xcc" * (cur - base))
        for name, sites in self.sites.items():
            a = self.addr[name]
            body = bytearray(PROLOGUE)
            for i, callee in sites.values():
                pc = a + len(PROLOGUE) + CALL_LEN * i
                rel = (self.addr[callee] - (pc + CALL_LEN)) & 0xFFFFFFFF
                body += b"\xe8" + rel.to_bytes(4, "little")
            body += EPILOGUE
            out[a - base:a - base + len(body)] = body
        return bytes(out)

    def ret_addr(self, func: str, key) -> int:
        """The return address of site `key` in `func`: just past its call instruction."""
        i = self.sites[func][key][0]
        return self.addr[func] + len(PROLOGUE) + CALL_LEN * (i + 1)

    def park_pc(self, func: str) -> int:
        """Where a thread sitting in `func` is stopped: right after the prologue."""
        return self.addr[func] + len(PROLOGUE)


@dataclass
class Frame:
    func: str
    rbp: int
    ret: int = 0  # the return address into the caller (0 for a thread's bottom frame)
    slots: dict[str, int] = field(default_factory=dict)  # local name -> slot address

    @property
    def rsp(self) -> int:
        return (self.rbp - 8 * len(self.slots)) & ~15


@dataclass
class SimThread:
    """A simulated thread: its stack mapping and its frames, innermost last."""

    name: str
    tid: int
    cpu: int
    stack: Region
    frames: list[Frame] = field(default_factory=list)

    @property
    def top(self) -> Frame:
        return self.frames[-1]

    def push(self, func: str, ret_addr: int) -> Frame:
        """Enter func: push the return address and the caller's rbp, as its prologue would."""
        if len(self.frames) >= MAX_FRAMES:
            raise ValueError(f"thread {self.name}: more than {MAX_FRAMES} nested calls")
        if self.frames:
            sp, caller_rbp = self.top.rsp, self.top.rbp
        else:
            sp, caller_rbp = self.stack.end - 16, 0
        rbp = sp - 16
        self._put(sp - 8, ret_addr)
        self._put(rbp, caller_rbp)
        f = Frame(func, rbp, ret_addr)
        self.frames.append(f)
        return f

    def pop(self) -> None:
        """Return: the frame's slots, saved rbp and return address are cleared, so a pointer
        the returned function held is gone from the stack (no stale copy hides a leak)."""
        f = self.frames.pop()
        lo = f.rsp
        self.stack.view(lo, f.rbp + 16 - lo)[:] = bytes(f.rbp + 16 - lo)

    def slot(self, name: str) -> int:
        """The address of the innermost frame's slot `name`, created on first use."""
        f = self.top
        a = f.slots.get(name)
        if a is None:
            if len(f.slots) >= MAX_SLOTS:
                raise ValueError(f"function {f.func}: more than {MAX_SLOTS} locals")
            a = f.rbp - 8 * (len(f.slots) + 1)
            if a - 16 < self.stack.start:
                raise ValueError(f"thread {self.name}: stack overflow")
            f.slots[name] = a
        return a

    def _put(self, addr: int, value: int) -> None:
        if addr < self.stack.start + 64:
            raise ValueError(f"thread {self.name}: stack overflow")
        self.stack.view(addr, 8)[:] = value.to_bytes(8, "little")

    def call_stack(self) -> list[str]:
        """Function names, innermost first."""
        return [f.func for f in reversed(self.frames)]

    def regs(self, code: Code) -> dict[str, int]:
        """Registers of the stopped thread: rip in the innermost function, the frame chain."""
        f = self.top
        return {"rip": code.park_pc(f.func), "rsp": f.rsp, "rbp": f.rbp, "cs": 0x33,
                "ss": 0x2B, "eflags": 0x246}
