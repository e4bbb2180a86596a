"""Where a loaded object's thread-local variables are at run time (glibc's `tcache`,
libumem's `thread_ptc`): a thread's copy of a variable is at `fs_base + block + offset`.

A shared object reaches its variables through the initial-exec model: each has a GOT slot
relocated with R_X86_64_TPOFF64 whose run-time value is the variable's offset from the thread
pointer. So the file's .rela.dyn names the slots, the target's memory holds their values, and
the block's offset is what every slot agrees on. With the object's symbols, the slot of a
given variable is the one whose (symbol value + addend) is that variable's TLS offset; without
them every slot is a candidate that the caller verifies. A slot of a variable another object
defines holds that object's offset, and is not one of obj's. The executable's own block (TLS
module 1) ends at the thread pointer, aligned as glibc places it, from its PT_TLS.

A library whose code reaches its variables through __tls_get_addr (the general-dynamic model,
the default for -fPIC) has no such slots; its block is found per thread through the thread's
dynamic thread vector (DTV), indexed by the module id ld.so writes into its R_X86_64_DTPMOD64
slots. That also finds the blocks of libraries loaded by dlopen, which are not static.
"""

from __future__ import annotations

import struct

from mdbpy.target import elfcore as ec

R_X86_64_DTPMOD64 = 16
R_X86_64_TPOFF64 = 18
SHN_UNDEF = 0
MAX_SLOTS = 4096
MASK = (1 << 64) - 1
TLS_DTV_UNALLOCATED = MASK  # glibc's mark of a dynamic block not yet allocated in a thread
DTV_ENTRY = 16  # glibc's dtv_t: {void *val; void *to_free}
MAX_MODULES = 1 << 16


def tpoff_slots(obj) -> list[tuple[int, int]]:
    """[(runtime GOT slot address, TLS offset of the variable within obj's block)]."""
    return _slots(obj, R_X86_64_TPOFF64)


def _slots(obj, rtype: int) -> list[tuple[int, int]]:
    """[(runtime address, symbol value + addend)] of obj's RELA relocations of type rtype,
    but those against a symbol obj does not define (another object's variable, such as
    libGL's initial-exec slot of libGLdispatch's _glapi_tls_Current: its value says nothing
    of obj's block)."""
    path = getattr(obj, "file", None)
    if not path:
        return []
    try:
        from elftools.elf.elffile import ELFFile

        out = []
        with open(path, "rb") as f:
            elf = ELFFile(f)
            for sec in elf.iter_sections():
                if sec["sh_type"] != "SHT_RELA" or sec["sh_entsize"] != ec.RELA.size:
                    continue
                # unpacked with struct, not pyelftools' per-entry parser: a library has tens
                # of thousands of relocations (libumem v2.4.0: 17,000, 0.3 s that way)
                data, syms = sec.data(), None
                for off, info, addend in ec.RELA.iter_unpack(
                        data[:len(data) // ec.RELA.size * ec.RELA.size]):
                    if info & 0xFFFFFFFF != rtype:
                        continue
                    value = addend
                    if info >> 32:
                        if syms is None:
                            syms = elf.get_section(sec["sh_link"]).data()
                        at = (info >> 32) * ec.SYM.size
                        if at + ec.SYM.size > len(syms):
                            continue  # no such symbol: a damaged file
                        _name, _info, _other, shndx, st_value, _size = ec.SYM.unpack_from(
                            syms, at)
                        if shndx == SHN_UNDEF:
                            continue
                        value += st_value
                    out.append((off + obj.bias, value))
                    if len(out) >= MAX_SLOTS:
                        return out
        return out
    except (OSError, ValueError, KeyError, AttributeError, AssertionError, TypeError,
            struct.error):
        return []  # a damaged or foreign file: no TLS slots, the callers fall back


def slot_offsets(session, obj) -> list[tuple[int, int]]:
    """[(TLS offset within obj's block, thread-pointer offset)] of every readable slot."""
    key = ("tls.tpoff", obj.path, obj.bias)
    got = session.cache.get(key)
    if got is None:
        from mdbpy.errors import ReadError

        got = []
        for slot, value in tpoff_slots(obj):
            try:
                tp = session.mem.read_int(slot, 8)
            except ReadError:
                continue
            got.append((value, tp))
        session.cache[key] = got
    return got


def block_offset(session, obj) -> int | None:
    """The thread-pointer offset of obj's static TLS block (the same in every thread), or
    None when it cannot be told."""
    if obj.is_exe:
        seg = _tls_segment(getattr(obj, "file", None))
        if seg is None:
            return None
        vaddr, memsz, align = seg
        align = max(align, 1)
        first = -vaddr & (align - 1)
        return -((memsz - first + align - 1) // align * align + first)  # below the pointer
    seen = {tp - value for value, tp in slot_offsets(session, obj)}
    return seen.pop() if len(seen) == 1 else None


def _tls_segment(path) -> tuple[int, int, int] | None:
    """(p_vaddr, p_memsz, p_align) of the ELF file's PT_TLS, or None."""
    if not path:
        return None
    try:
        from elftools.elf.elffile import ELFFile

        with open(path, "rb") as f:
            for seg in ELFFile(f).iter_segments():
                if seg["p_type"] == "PT_TLS":
                    return seg["p_vaddr"], seg["p_memsz"], seg["p_align"]
    except (OSError, ValueError, AttributeError, AssertionError, TypeError):
        pass
    return None


def thread_block(session, obj, thread) -> int | None:
    """The address of `thread`'s copy of obj's TLS block, or None when the thread has no
    thread pointer (fs_base) or the block cannot be placed. A static block is at the thread
    pointer plus block_offset (kept per session: the same in every thread); a block
    block_offset cannot tell (a library whose code reaches its variables through
    __tls_get_addr, one loaded by dlopen) is the one the thread's DTV holds for the module id
    ld.so wrote into the object's R_X86_64_DTPMOD64 slots, when the thread has allocated it."""
    tp = thread.regs.get("fs_base")
    if not tp:
        return None
    key = ("tls.block", obj.path, obj.bias)
    if key not in session.cache:
        session.cache[key] = block_offset(session, obj)
    block = session.cache[key]
    if block is not None:
        return (tp + block) & MASK
    modid = module_id(session, obj)
    return None if modid is None else dtv_block(session, tp, modid)


def thread_address(session, obj, offset: int, name: str) -> int:
    """The address of the current thread's copy of obj's thread-local variable `name`, at
    `offset` in its TLS block (a TLS symbol's value, or the variable's DWARF location); a
    one-line MdbError when the block cannot be placed in that thread."""
    from mdbpy.errors import MdbError

    th = session.current_thread()
    block = thread_block(session, obj, th) if th is not None else None
    if block is None:
        raise MdbError(f"{name} is thread-local, and {obj.name}'s TLS block cannot be placed "
                       "in " + (f"thread {th.tid}" if th is not None else
                                "a target without threads"))
    return (block + offset) & MASK


def module_id(session, obj) -> int | None:
    """obj's TLS module id, as every readable R_X86_64_DTPMOD64 slot of it says (None when
    they disagree or there are none)."""
    from mdbpy.errors import ReadError

    key = ("tls.modid", obj.path, obj.bias)
    if key not in session.cache:
        seen = set()
        for slot, _ in _slots(obj, R_X86_64_DTPMOD64):
            try:
                seen.add(session.mem.read_int(slot, 8))
            except ReadError:
                continue
        session.cache[key] = seen.pop() if len(seen) == 1 else None
    return session.cache[key]


def dtv_block(session, tp: int, modid: int) -> int | None:
    """The block of module modid in the thread whose thread pointer is tp, from its DTV
    (glibc's tcbhead_t: tcb, dtv, self; the tcb and self words are tp itself, which is
    checked, and dtv[-1] counts the entries); None when unreadable or not allocated. glibc's
    generation counts are not compared: a thread that has not brought its DTV up to date since
    a dlclose let a new library reuse the module id still holds the old library's block."""
    from mdbpy.errors import ReadError

    if not 0 < modid < MAX_MODULES:
        return None
    try:
        tcb, dtv, self_ = (session.mem.read_int(tp + 8 * k, 8) for k in range(3))
        if tcb != tp or self_ != tp or session.mem.read_int(dtv - DTV_ENTRY, 8) < modid:
            return None
        val = session.mem.read_int(dtv + DTV_ENTRY * modid, 8)
    except ReadError:
        return None
    return None if val in (0, TLS_DTV_UNALLOCATED) else val
