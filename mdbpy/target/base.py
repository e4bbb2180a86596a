"""What every target (live process, core file, synthetic bytes) offers the layers above it.

A target is bytes plus facts: its mappings, its threads and their registers, its auxiliary vector,
and the files it maps. Everything above (address space, symbols, allocators, dcmds) is written
against this interface only, so a test can build a Session from a SyntheticTarget and exercise
the same code that runs on a live process.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

# The x86_64 `struct user_regs_struct` in kernel order: PTRACE_GETREGS fills it and NT_PRSTATUS
# carries it as pr_reg, so the live target, the core reader and the core writer share this list.
X86_64_REGS = (
    "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8",
    "rax", "rcx", "rdx", "rsi", "rdi", "orig_rax", "rip", "cs", "eflags",
    "rsp", "ss", "fs_base", "gs_base", "ds", "es", "fs", "gs",
)

# Pseudo-names that /proc/PID/maps gives to kernel-made mappings; they are not files.
PSEUDO_PATHS = ("[heap]", "[stack]", "[vdso]", "[vvar]", "[vvar_vclock]", "[vsyscall]", "[anon",
                "[uprobes]")


@dataclass(frozen=True)
class Mapping:
    """One mapping, shaped like a line of /proc/PID/maps (perms is e.g. 'rw-p')."""

    start: int
    end: int
    perms: str
    offset: int = 0
    dev: str = "00:00"
    inode: int = 0
    path: str = ""

    @property
    def size(self) -> int:
        return self.end - self.start

    @property
    def readable(self) -> bool:
        return self.perms[0] == "r"

    @property
    def writable(self) -> bool:
        return self.perms[1] == "w"

    @property
    def executable(self) -> bool:
        return self.perms[2] == "x"

    @property
    def shared(self) -> bool:
        return self.perms[3] == "s"

    @property
    def is_file(self) -> bool:
        """True when the mapping is backed by a file on disk (not anonymous, not a pseudo-name)."""
        return bool(self.path) and not self.path.startswith(PSEUDO_PATHS)

    def contains(self, addr: int) -> bool:
        return self.start <= addr < self.end


@dataclass
class Thread:
    """A thread (LWP): its id, its name, and its registers by X86_64_REGS name when known."""

    tid: int
    name: str = ""
    regs: dict[str, int] = field(default_factory=dict)
    state: str = ""  # e.g. 'S (sleeping)' live, or the signal that stopped it in a core


class Target:
    """The interface; subclasses implement the reads and facts.

    kind is 'live', 'core' or 'synthetic'. read() returns exactly `size` bytes or raises
    ReadError naming the first address that failed. Targets are read-only unless opened writable.
    """

    kind = "synthetic"
    pid: int | None = None
    writable = False
    # every read is a copy through a system call (a live process), not a view of bytes at
    # hand: findleaks then keeps what the allocators' walks read instead of reading the heap
    # a second time (mdbpy/heap/prescan.py)
    reads_through_kernel = False
    pointer_size = 8
    byteorder = "little"
    machine = "x86_64"

    def mappings(self) -> list[Mapping]:
        raise NotImplementedError

    def read(self, addr: int, size: int) -> bytes:
        raise NotImplementedError

    @contextmanager
    def mapped(self, addr: int, size: int):
        """A zero-copy view of [addr, addr + size) for a scan to read in place (a memoryview,
        released when the block ends), or None when the target cannot lend one; the caller
        then reads the block."""
        yield None

    def warm(self, ranges) -> None:
        """A hint that a scan of these [start, end) ranges follows: a target that can bring
        them into memory in the background meanwhile does (a core's mapped image); others
        ignore it."""

    def present(self, ranges) -> list[tuple[int, int]]:
        """The parts of these [start, end) ranges that may hold bytes, for a scan to split into
        blocks: its work then follows the data there is, not what a core's header claims (a
        segment's tail the core holds no bytes for). Targets that cannot tell return them."""
        return list(ranges)

    def read_rows(self, addrs, size: int):
        """A fast path for many small reads: (rows, ok) with the `size` bytes at each of the
        addresses (a uint64 numpy array) as an (n, size) uint8 array, ok saying which rows it
        could fill; or None when the target has no such path (mdbpy.heap.gather then reads
        runs of pages through read())."""
        return None

    def write(self, addr: int, data: bytes) -> None:
        from mdbpy.errors import WriteError

        raise WriteError(addr, len(data), "target is read-only (reopen with -w)")

    def threads(self) -> list[Thread]:
        return []

    def signalled(self) -> tuple[int, int] | None:
        """(thread id, signal number) of the thread whose signal ended the process (a core
        of a crash), or None."""
        return None

    def auxv(self) -> dict[int, int]:
        return {}

    def exe_path(self) -> str | None:
        """The main executable's path on this machine, if known."""
        return None

    def file_path(self, path: str) -> str:
        """Where a file the target maps is found on this machine (cores honour --sysroot)."""
        return path

    def status_lines(self) -> list[str]:
        """The target-specific lines of ::status."""
        return []

    def describe(self) -> str:
        """A short phrase for messages, e.g. 'PID 1234' or 'core file core.1234'."""
        return self.kind

    def refresh(self) -> None:
        """Forget cached facts (mappings, threads) so the next call rereads them."""

    def close(self) -> None:
        """Release the target (a live process is resumed and detached). Idempotent."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def signal_name(sig: int) -> str:
    """`SIGSEGV` for 11; `SIG<n>` for a number Python does not name."""
    import signal

    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"SIG{sig}"
