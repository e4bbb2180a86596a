"""The core writer: any Target (a live process, a core, synthetic bytes) to an ELF64 ET_CORE
that mdbpy and gdb both open.

Layout: ELF header, program headers (PT_NOTE first, then one PT_LOAD per readable mapping),
the notes (per thread NT_PRSTATUS; NT_PRPSINFO, NT_SIGINFO when known, NT_AUXV and NT_FILE
after the first thread's, as the kernel orders them), then each mapping's bytes page-aligned.
Memory is read in large blocks; all-zero blocks become holes (a seek), so a process with big,
mostly untouched stacks and heaps gives a sparse file. Pages the target cannot read are left as
holes too, which read back as zeros.

Anonymous mappings (heap, stacks, [anon]) are written up to `max_anon` bytes each, like the
kernel's coredump_filter leaves memory out: a process that reserved tens of GiB of readable
address space (JVMs, Go, sanitizers) must not produce a core that takes minutes and the disk.
The rest of such a mapping keeps its PT_LOAD (p_memsz) without bytes (p_filesz), so a reader
reports it as not in the core instead of inventing zeros; the caller is told through `note`.

`content` chooses the kinds of mapping written at all, in the words of illumos' core_content
(::gcore -c, coreadm -G), read for Linux mappings: stack ([stack] and each thread's stack),
heap ([heap]), anon and shanon (private and shared anonymous), text (executable file
mappings and the vdso), data (writable private file mappings), rodata (the other private file
mappings) and shfile (shared file mappings). A kind left out keeps its PT_LOAD without bytes.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

from mdbpy.errors import MdbError, ReadError
from mdbpy.target import elfcore as ec
from mdbpy.target.base import Mapping, Target, Thread

BLOCK = 1 << 20  # bytes per read and per hole decision
ANON_LIMIT = 4 << 30  # default cap per anonymous mapping (::gcore -m overrides, 0: no cap)
CONTENT = ("stack", "heap", "anon", "shanon", "text", "data", "rodata", "shfile")


def parse_content(spec: str) -> frozenset[str]:
    """A core_content string: `all`, `none` or `default` (all), or a kind, then `+kind` and
    `-kind` to add and take away (`stack+heap`, `default-shfile`); a ValueError names a word
    it does not know."""
    words = spec.replace("+", " + ").replace("-", " - ").split()
    out: set[str] = set()
    sign = "+"
    for k, w in enumerate(words):
        if w in "+-":
            sign = w
            continue
        if w in ("all", "default") and k == 0:
            kinds = set(CONTENT)
        elif w == "none" and k == 0:
            kinds = set()
        elif w in CONTENT:
            kinds = {w}
        else:
            raise ValueError(f"unknown core content '{w}' (all, none, default, "
                             f"{', '.join(CONTENT)})")
        out = out | kinds if sign == "+" else out - kinds
    return frozenset(out)


def content_kind(m: Mapping, stacks: list[int]) -> str:
    """The core_content kind of a mapping; stacks are the threads' stack pointers."""
    if m.path == "[stack]" or (not m.is_file and any(m.contains(sp) for sp in stacks)):
        return "stack"
    if m.path == "[heap]":
        return "heap"
    if not m.is_file:
        return "text" if m.executable else "shanon" if m.shared else "anon"
    if m.shared:
        return "shfile"
    return "text" if m.executable else "data" if m.writable else "rodata"


def write_core(target: Target, path: str,
               progress: Callable[[int, int], None] | None = None,
               max_anon: int = ANON_LIMIT, note: Callable[[str], None] | None = None,
               content: frozenset[str] = frozenset(CONTENT)) -> int:
    """Write `target` as a core file at `path` (mode 0600: cores hold secrets).

    progress(done, total), when given, is called after each block with bytes of memory done.
    Anonymous mappings are cut after `max_anon` bytes (0: never), and note(message) is called
    once per mapping cut; only the kinds of mapping in `content` are written. Returns the size
    of the file written. A failure removes the partial file and raises a one-line MdbError.
    """
    # Every mapping gets a PT_LOAD, as the kernel and gdb write them: unreadable ones (guard
    # pages) and kinds left out of `content` with no bytes in the file, so the core lists the
    # same mappings as the process.
    maps = sorted(target.mappings(), key=lambda m: m.start)
    threads = target.threads()
    notes = _notes(target, threads, maps)
    stacks = [t.regs["rsp"] for t in threads if "rsp" in t.regs]
    phnum = 1 + len(maps)
    xnum = phnum >= ec.PN_XNUM
    note_off = ec.EHDR.size + phnum * ec.PHDR.size + (ec.SHDR.size if xnum else 0)
    data_off = _page_up(note_off + len(notes))
    phdrs = [ec.Phdr(ec.PT_NOTE, 0, note_off, 0, len(notes), 0, 4)]
    off = data_off
    for m in maps:
        filesz = _kept(m, max_anon, note) if content_kind(m, stacks) in content else 0
        phdrs.append(ec.Phdr(ec.PT_LOAD, ec.flags_from_perms(m.perms), off, m.start, filesz,
                             m.size, ec.PAGE))
        off += _page_up(filesz)
    total = sum(ph.filesz for ph in phdrs[1:])
    try:
        # no following a symlink planted at the name: a core must not overwrite another file
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    except OSError as e:
        raise MdbError(f"cannot create {path}: {e.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            shoff = ec.EHDR.size + phnum * ec.PHDR.size
            f.write(ec.pack_ehdr(ec.ET_CORE, phnum, shoff if xnum else 0, 1 if xnum else 0))
            f.write(b"".join(ec.pack_phdr(p) for p in phdrs))
            if xnum:  # section header 0 carries the real program header count
                f.write(ec.SHDR.pack(0, 0, 0, 0, 0, 0, 0, phnum, 0, 0))
            f.write(notes)
            done = 0
            zero = bytes(BLOCK)
            for m, ph in zip(maps, phdrs[1:]):
                if not ph.filesz:
                    continue
                f.seek(ph.offset)
                for chunk_len, data in _contents(target, m.start, m.start + ph.filesz, zero):
                    if data is None:
                        f.seek(chunk_len, os.SEEK_CUR)
                    else:
                        f.write(data)
                    done += chunk_len
                    if progress is not None:
                        progress(done, total)
            f.truncate(off)
    except OSError as e:
        _remove(path)
        raise MdbError(f"cannot write {path}: {e.strerror}") from None
    except BaseException:
        _remove(path)
        raise
    return off


def _page_up(n: int) -> int:
    return -(-n // ec.PAGE) * ec.PAGE


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _kept(m: Mapping, max_anon: int, note: Callable[[str], None] | None) -> int:
    """How many bytes of the mapping go into the core: none when unreadable (guard pages), the
    first max_anon of a bigger anonymous mapping (saying so), else all of it."""
    if not m.readable:
        return 0
    if m.is_file or not max_anon or m.size <= _page_up(max_anon):
        return m.size
    kept = _page_up(max_anon)
    if note is not None:
        note(f"{m.path or '[ anon ]'} [0x{m.start:x}, 0x{m.end:x}): only the first "
             f"{_mib(kept)} of {_mib(m.size)} written (limit {_mib(kept)} per anonymous "
             f"mapping)")
    return kept


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.4g} MiB"


def _contents(target: Target, start: int, end: int, zero: bytes):
    """(length, bytes or None for a hole) covering [start, end), block by block; a block that
    fails to read is retried page by page and its unreadable pages become holes. `zero` is
    BLOCK zero bytes to compare with."""
    cur = start
    while cur < end:
        n = min(BLOCK, end - cur)
        try:
            data = target.read(cur, n)
        except ReadError:
            yield from _pages(target, cur, n, zero)
        else:
            yield n, (None if data == zero[:n] else data)
        cur += n


def _pages(target: Target, start: int, n: int, zero: bytes):
    cur, end = start, start + n
    while cur < end:
        k = min(ec.PAGE - cur % ec.PAGE, end - cur)
        try:
            data = target.read(cur, k)
        except ReadError:
            data = None
        yield k, (None if data is None or data == zero[:k] else data)
        cur += k


# -- notes ----------------------------------------------------------------------------------
def _notes(target: Target, threads: list[Thread], maps: list[Mapping]) -> bytes:
    ps = process_info(target)
    files = [ec.FileEntry(m.start, m.end, m.offset, m.path) for m in maps if m.is_file]
    process = [ec.pack_note(b"CORE", ec.NT_PRPSINFO, ec.pack_prpsinfo(ps))]
    si = getattr(target, "siginfo", None)
    if isinstance(si, ec.SigInfo):
        process.append(ec.pack_note(b"CORE", ec.NT_SIGINFO, ec.pack_siginfo(si)))
    process.append(ec.pack_note(b"CORE", ec.NT_AUXV, ec.pack_auxv(target.auxv())))
    if files:
        process.append(ec.pack_note(b"CORE", ec.NT_FILE, ec.pack_nt_file(files)))
    names = [(m.start, m.end, m.path) for m in maps if m.path and not m.is_file]
    process.append(ec.pack_note(b"MDBPY", ec.NT_MDBPY_NAMES, ec.pack_names(names)))
    out = []
    for t in threads:
        desc = ec.pack_prstatus(t.tid, _signal_of(t), t.regs, ps.pid, ps.ppid)
        out.append(ec.pack_note(b"CORE", ec.NT_PRSTATUS, desc))
        if len(out) == 1:
            out += process
    if not threads:
        out += process
    return b"".join(out)


def _signal_of(t: Thread) -> int:
    """A thread's pending signal: cores name it in Thread.state ('SIGSEGV'); live threads
    carry a run state there instead, which means no signal."""
    try:
        return int(signal.Signals[t.state]) if t.state.startswith("SIG") else 0
    except KeyError:
        return 0


def process_info(target: Target) -> ec.PsInfo:
    """NT_PRPSINFO's facts: a core's own, a live process's from /proc, else from the exe."""
    ps = getattr(target, "psinfo", None)
    if isinstance(ps, ec.PsInfo):
        return ps
    pid = target.pid or 0
    if target.kind == "live" and pid:
        return _proc_psinfo(pid)
    exe = target.exe_path() or target.describe()
    return ec.PsInfo(pid, os.path.basename(exe)[:15], exe[:80])


def _proc_psinfo(pid: int) -> ec.PsInfo:
    def read(name: str, limit: int = 4096) -> bytes:
        try:
            with open(f"/proc/{pid}/{name}", "rb") as f:
                return f.read(limit)
        except OSError:
            return b""

    comm = read("comm").decode(errors="replace").strip()
    args = read("cmdline").rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace")
    stat = read("stat").rsplit(b")", 1)[-1].split()
    state = stat[0].decode() if stat else "R"
    ppid = int(stat[1]) if len(stat) > 1 else 0
    try:
        st = os.stat(f"/proc/{pid}")
        uid, gid = st.st_uid, st.st_gid
    except OSError:
        uid = gid = 0
    return ec.PsInfo(pid, comm[:15], args[:80], ppid, state, uid, gid)
