"""ELF64 structures and Linux x86_64 core-note layouts, shared by the core reader and writer.

Everything is declared once here with `struct`, so the reader (core.py) and the writer
(gcore.py) cannot disagree about an offset. Parsers take untrusted bytes: they check every size
against the buffer they were given and raise ValueError (which the callers turn into a one-line
TargetError or a warning); they never allocate more than the bytes they were handed.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from typing import NamedTuple

from mdbpy.target.base import X86_64_REGS

ELF_MAGIC = b"\x7fELF"
ELFCLASS64 = 2
ELFDATA2LSB = 1
EV_CURRENT = 1
ET_REL, ET_EXEC, ET_DYN, ET_CORE = 1, 2, 3, 4
EM_X86_64 = 62
PN_XNUM = 0xFFFF  # e_phnum overflow: the real count is in section header 0's sh_info

PT_LOAD, PT_DYNAMIC, PT_INTERP, PT_NOTE, PT_TLS = 1, 2, 3, 4, 7
PT_GNU_STACK = 0x6474E551
PF_X, PF_W, PF_R = 1, 2, 4

NT_PRSTATUS = 1
NT_PRPSINFO = 3
NT_AUXV = 6
NT_GNU_BUILD_ID = 3  # in a "GNU" note, not a "CORE" one
NT_SIGINFO = 0x53494749
NT_FILE = 0x46494C45

AT_NULL = 0
AT_PHDR = 3
AT_SYSINFO_EHDR = 33
AT_EXECFN = 31

# mdbpy's own note (name "MDBPY"): the pseudo-names of anonymous mappings ([heap], [stack],
# [vvar], ...), which no standard core note records. Readers that do not know it skip it.
NT_MDBPY_NAMES = 1
VSYSCALL_ADDR = 0xFFFFFFFFFF600000
# x86_64 kernels randomize brk within 1 GiB past bss (32 MiB before 5.18)
BRK_RANDOM_RANGE = 1 << 30


def pack_names(names: list[tuple[int, int, str]]) -> bytes:
    return "".join(f"{a:x} {b:x} {n}\n" for a, b, n in names).encode()


def parse_names(desc: bytes, limit: int) -> dict[tuple[int, int], str]:
    out = {}
    for line in desc.decode("utf-8", "replace").splitlines()[:limit]:
        parts = line.split(" ", 2)
        if len(parts) == 3 and parts[2].startswith("["):
            try:
                out[(int(parts[0], 16), int(parts[1], 16))] = parts[2][:64]
            except ValueError:
                continue
    return out

PAGE = 4096

# Elf64_Ehdr, Elf64_Phdr, Elf64_Shdr, Elf64_Nhdr, Elf64_Sym, Elf64_Rela: every reader and
# writer of ELF in mdbpy uses these
EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
PHDR = struct.Struct("<IIQQQQQQ")
SHDR = struct.Struct("<IIQQQQIIQQ")
NHDR = struct.Struct("<III")
SYM = struct.Struct("<IBBHQQ")  # st_name, st_info, st_other, st_shndx, st_value, st_size
RELA = struct.Struct("<QQq")  # Elf64_Rela: r_offset, r_info (symbol << 32 | type), r_addend

# struct elf_prstatus (x86_64, 336 bytes): elf_siginfo {signo, code, errno}, pr_cursig (short,
# padded), pr_sigpend, pr_sighold, pr_pid, pr_ppid, pr_pgrp, pr_sid, four struct timevals,
# pr_reg (27 x u64, X86_64_REGS order), pr_fpvalid (int, padded).
PRSTATUS_HEAD = struct.Struct("<iiih2xQQiiii64x")
PRSTATUS_REGS = struct.Struct(f"<{len(X86_64_REGS)}Q")
PRSTATUS_TAIL = struct.Struct("<i4x")
PRSTATUS_SIZE = PRSTATUS_HEAD.size + PRSTATUS_REGS.size + PRSTATUS_TAIL.size  # 336

# struct elf_prpsinfo (x86_64, 136 bytes): pr_state, pr_sname, pr_zomb, pr_nice, pr_flag,
# pr_uid, pr_gid (unsigned int), pr_pid, pr_ppid, pr_pgrp, pr_sid, pr_fname[16], pr_psargs[80].
PRPSINFO = struct.Struct("<bcbb4xQIIiiii16s80s")

# siginfo_t is 128 bytes; si_signo, si_errno, si_code lead it, and for the fault signals the
# faulting address (si_addr) follows at offset 16.
SIGINFO_HEAD = struct.Struct("<iii4xQ")
SIGINFO_SIZE = 128

MAX_NOTE_DESC = 64 << 20  # no legitimate core note is this large; larger ones are corruption


class ElfHeader(NamedTuple):
    type: int
    machine: int
    phoff: int
    phnum: int
    shoff: int
    shnum: int


class Phdr(NamedTuple):
    """One program header (a tuple: cores can have hundreds of thousands of them)."""

    type: int
    flags: int
    offset: int
    vaddr: int
    filesz: int
    memsz: int
    align: int = PAGE


class PrStatus(NamedTuple):
    tid: int
    cursig: int
    ppid: int
    regs: dict


class PsInfo(NamedTuple):
    """What NT_PRPSINFO records about the process (and what the writer must supply)."""

    pid: int
    fname: str
    psargs: str
    ppid: int = 0
    state: str = "R"
    uid: int = 0
    gid: int = 0


class SigInfo(NamedTuple):
    signo: int
    errno: int
    code: int
    addr: int  # meaningful only for fault signals (see is_fault)

    @property
    def is_fault(self) -> bool:
        """True when the kernel raised the signal for a faulting address (mdb prints addr=)."""
        import signal

        faults = (signal.SIGILL, signal.SIGTRAP, signal.SIGFPE, signal.SIGSEGV, signal.SIGBUS)
        return self.signo in faults and self.code > 0


class FileEntry(NamedTuple):
    """One NT_FILE record: [start, end) maps `path` from byte offset `offset`."""

    start: int
    end: int
    offset: int
    path: str


# -- ELF headers ----------------------------------------------------------------------------
def check_ident(ident: bytes) -> str | None:
    """None when e_ident is a little-endian ELF64 file; else why not, as a short phrase."""
    if len(ident) < 16 or ident[:4] != ELF_MAGIC:
        return "not an ELF file"
    if ident[4] != ELFCLASS64:
        return "not a 64-bit ELF file (only ELF64 is supported)"
    if ident[5] != ELFDATA2LSB:
        return "not a little-endian ELF file"
    return None


def parse_ehdr(data: bytes) -> ElfHeader:
    if len(data) < EHDR.size:
        raise ValueError("truncated ELF header")
    (_ident, etype, machine, _ver, _entry, phoff, shoff, _flags, _ehsize, phentsize, phnum,
     _shentsize, shnum, _shstrndx) = EHDR.unpack_from(data)
    if phnum and phentsize != PHDR.size:
        raise ValueError(f"unexpected program header size {phentsize}")
    return ElfHeader(etype, machine, phoff, phnum, shoff, shnum)


def phdr_count(eh: ElfHeader, read_at: Callable[[int, int], bytes]) -> int:
    """e_phnum, or for PN_XNUM the count kept in section header 0 (cores with many mappings)."""
    if eh.phnum != PN_XNUM:
        return eh.phnum
    raw = read_at(eh.shoff, SHDR.size)
    if len(raw) < SHDR.size:
        raise ValueError("program header count overflow without a section header")
    return SHDR.unpack(raw)[7]


def parse_phdrs(data: bytes, count: int) -> list[Phdr]:
    """The first `count` program headers in data (fewer if data is shorter)."""
    n = min(count, len(data) // PHDR.size)
    return [Phdr(t, f, off, va, fs, ms, al)
            for t, f, off, va, _pa, fs, ms, al in PHDR.iter_unpack(data[:n * PHDR.size])]


def pack_ehdr(etype: int, phnum: int, shoff: int = 0, shnum: int = 0) -> bytes:
    """An ELF64 x86_64 header; with PN_XNUM or more program headers the caller writes section
    header 0 at shoff holding the real count (see phdr_count)."""
    ident = ELF_MAGIC + bytes([ELFCLASS64, ELFDATA2LSB, EV_CURRENT]) + bytes(9)
    return EHDR.pack(ident, etype, EM_X86_64, EV_CURRENT, 0, EHDR.size if phnum else 0, shoff,
                     0, EHDR.size, PHDR.size, min(phnum, PN_XNUM), SHDR.size, shnum, 0)


def pack_phdr(p: Phdr) -> bytes:
    return PHDR.pack(p.type, p.flags, p.offset, p.vaddr, 0, p.filesz, p.memsz, p.align)


def perms_from_flags(flags: int) -> str:
    """p_flags as the perms column of /proc/PID/maps (cores do not record sharing: 'p')."""
    return ("r" if flags & PF_R else "-") + ("w" if flags & PF_W else "-") + (
        "x" if flags & PF_X else "-") + "p"


def flags_from_perms(perms: str) -> int:
    return ((PF_R if perms[0] == "r" else 0) | (PF_W if perms[1] == "w" else 0)
            | (PF_X if perms[2] == "x" else 0))


# -- notes ----------------------------------------------------------------------------------
def _align4(n: int) -> int:
    return (n + 3) & ~3


def iter_notes(buf: bytes) -> Iterator[tuple[bytes, int, bytes]]:
    """(name, type, desc) for each note in a PT_NOTE segment's bytes.

    Raises ValueError at the first note whose sizes run past the buffer, after yielding the
    good ones before it, so a damaged note section still gives what it can.
    """
    pos, end = 0, len(buf)
    while pos + NHDR.size <= end:
        namesz, descsz, ntype = NHDR.unpack_from(buf, pos)
        name_at = pos + NHDR.size
        desc_at = name_at + _align4(namesz)
        nxt = desc_at + _align4(descsz)
        if descsz > MAX_NOTE_DESC or desc_at + descsz > end:
            raise ValueError(f"note at offset {pos} claims {descsz} bytes")
        yield bytes(buf[name_at:name_at + namesz]).rstrip(b"\0"), ntype, bytes(
            buf[desc_at:desc_at + descsz])
        pos = nxt


def pack_note(name: bytes, ntype: int, desc: bytes) -> bytes:
    n = name + b"\0"
    return (NHDR.pack(len(n), len(desc), ntype) + n + bytes(_align4(len(n)) - len(n)) + desc
            + bytes(_align4(len(desc)) - len(desc)))


def _need(desc: bytes, size: int, what: str) -> None:
    if len(desc) < size:
        raise ValueError(f"{what} note is {len(desc)} bytes, expected {size}")


def parse_prstatus(desc: bytes) -> PrStatus:
    _need(desc, PRSTATUS_SIZE, "NT_PRSTATUS")
    _signo, _code, _errno, cursig, _pend, _hold, pid, ppid, _pgrp, _sid = \
        PRSTATUS_HEAD.unpack_from(desc)
    vals = PRSTATUS_REGS.unpack_from(desc, PRSTATUS_HEAD.size)
    return PrStatus(pid, cursig, ppid, dict(zip(X86_64_REGS, vals)))


def pack_prstatus(tid: int, cursig: int, regs: dict, pid: int = 0, ppid: int = 0) -> bytes:
    head = PRSTATUS_HEAD.pack(cursig, 0, 0, cursig, 0, 0, tid, ppid, pid, pid)
    vals = [regs.get(r, 0) & 0xFFFFFFFFFFFFFFFF for r in X86_64_REGS]
    return head + PRSTATUS_REGS.pack(*vals) + PRSTATUS_TAIL.pack(0)


def _cstr(b: bytes) -> str:
    return b.split(b"\0", 1)[0].decode("utf-8", "replace")


def parse_prpsinfo(desc: bytes) -> PsInfo:
    _need(desc, PRPSINFO.size, "NT_PRPSINFO")
    (_state, sname, _zomb, _nice, _flag, uid, gid, pid, ppid, _pgrp, _sid, fname,
     psargs) = PRPSINFO.unpack_from(desc)
    return PsInfo(pid, _cstr(fname), _cstr(psargs).rstrip(), ppid,
                  sname.decode("latin-1") if sname != b"\0" else "", uid, gid)


def pack_prpsinfo(ps: PsInfo) -> bytes:
    sname = (ps.state or "R")[:1].encode("latin-1", "replace")
    state = max(0, "RSDTZW".find(sname.decode("latin-1")))
    return PRPSINFO.pack(state, sname, 0, 0, 0, ps.uid & 0xFFFFFFFF, ps.gid & 0xFFFFFFFF,
                         ps.pid, ps.ppid, ps.pid, ps.pid, ps.fname.encode()[:15],
                         ps.psargs.encode()[:79])


def parse_auxv(desc: bytes) -> dict[int, int]:
    out: dict[int, int] = {}
    for i in range(len(desc) // 16):
        key, val = struct.unpack_from("<QQ", desc, i * 16)
        if key == AT_NULL:
            break
        out[key] = val
    return out


def pack_auxv(auxv: dict[int, int]) -> bytes:
    items = [(k, v) for k, v in auxv.items() if k != AT_NULL] + [(AT_NULL, 0)]
    return b"".join(struct.pack("<QQ", k & 0xFFFFFFFFFFFFFFFF, v & 0xFFFFFFFFFFFFFFFF)
                    for k, v in items)


def parse_siginfo(desc: bytes) -> SigInfo:
    _need(desc, SIGINFO_HEAD.size, "NT_SIGINFO")
    return SigInfo(*SIGINFO_HEAD.unpack_from(desc))


def pack_siginfo(si: SigInfo) -> bytes:
    head = SIGINFO_HEAD.pack(si.signo, si.errno, si.code, si.addr & 0xFFFFFFFFFFFFFFFF)
    return head + bytes(SIGINFO_SIZE - len(head))


def parse_nt_file(desc: bytes, limit: int) -> list[FileEntry]:
    """NT_FILE: count, page size, count x (start, end, page offset), then count paths."""
    _need(desc, 16, "NT_FILE")
    count, page = struct.unpack_from("<QQ", desc)
    if count > limit or count > (len(desc) - 16) // 24:
        raise ValueError(f"NT_FILE claims {count} entries in {len(desc)} bytes")
    if page == 0 or page & (page - 1) or page > 1 << 30:
        raise ValueError(f"NT_FILE page size {page}")
    names = desc[16 + 24 * count:].split(b"\0")
    out = []
    for i in range(count):
        start, end, pgoff = struct.unpack_from("<QQQ", desc, 16 + 24 * i)
        path = names[i].decode("utf-8", "surrogateescape") if i < len(names) else ""
        if start < end and path:
            out.append(FileEntry(start, end, pgoff * page, path))
    return out


def pack_nt_file(entries: list[FileEntry]) -> bytes:
    head = struct.pack("<QQ", len(entries), PAGE)
    body = b"".join(struct.pack("<QQQ", e.start, e.end, e.offset // PAGE) for e in entries)
    names = b"".join(e.path.encode("utf-8", "surrogateescape") + b"\0" for e in entries)
    return head + body + names


# -- build-id -------------------------------------------------------------------------------
def gnu_build_id(read_at: Callable[[int, int], bytes]) -> bytes | None:
    """The NT_GNU_BUILD_ID of an ELF image, reading it by file offset through `read_at`.

    `read_at(offset, size)` returns up to `size` bytes (fewer at the end, none when absent), so
    the same code reads a file on disk and the image of its first mapping in a core's memory.
    Returns None when the image has no readable build-id.
    """
    head = read_at(0, EHDR.size)
    if check_ident(head) is not None:
        return None
    try:
        eh = parse_ehdr(head)
    except ValueError:
        return None
    count = min(eh.phnum, 64) if eh.phnum != PN_XNUM else 0
    for ph in parse_phdrs(read_at(eh.phoff, count * PHDR.size), count):
        if ph.type == PT_NOTE and ph.filesz <= 1 << 16:
            desc = build_id_note(read_at(ph.offset, ph.filesz))
            if desc:
                return desc
    return None


def build_id_note(notes: bytes) -> bytes | None:
    """The GNU build-id among a note segment's or section's notes (those before a damaged
    one), or None."""
    try:
        for name, ntype, desc in iter_notes(notes):
            if name == b"GNU" and ntype == NT_GNU_BUILD_ID and desc:
                return desc
    except ValueError:
        pass
    return None


SHT_NOTE = 7
MAX_SECTIONS = 1 << 16


def section_headers(read_at: Callable[[int, int], bytes]) -> list[tuple[bytes, int, int, int]]:
    """(name, sh_type, offset, size) of each section of an ELF64 image read by file offset
    through `read_at` (as gnu_build_id reads); none when it has no usable section table. A
    file written by dwz has no program headers: its notes are found only this way."""
    head = read_at(0, EHDR.size)
    if check_ident(head) is not None:
        return []
    shstrndx = EHDR.unpack_from(head)[13]
    try:
        eh = parse_ehdr(head)
    except ValueError:
        return []
    if not eh.shoff or not 0 < eh.shnum <= MAX_SECTIONS:
        return []
    table = read_at(eh.shoff, eh.shnum * SHDR.size)
    rows = [(r[0], r[1], r[4], r[5]) for r in SHDR.iter_unpack(
        table[:len(table) // SHDR.size * SHDR.size])]  # name, type, offset, size
    names = b""
    if shstrndx < len(rows) and rows[shstrndx][3] <= 1 << 20:
        names = read_at(rows[shstrndx][2], rows[shstrndx][3])
    out = []
    for name_at, kind, off, size in rows:
        end = names.find(b"\0", name_at)
        out.append((names[name_at:end] if end >= 0 else b"", kind, off, size))
    return out
