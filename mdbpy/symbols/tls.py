"""Where a loaded object's thread-local variables are at run time (glibc's `tcache`,
libumem's `thread_ptc`): a thread's copy of a variable is at `fs_base + block + offset`.

A shared object reaches its variables through the initial-exec model: each has a GOT slot
relocated with R_X86_64_TPOFF64 whose run-time value is the variable's offset from the thread
pointer. So the file's .rela.dyn names the slots, the target's memory holds their values, and
the block's offset is what every slot agrees on. With the object's symbols, the slot of a
given variable is the one whose (symbol value + addend) is that variable's TLS offset; without
them every slot is a candidate that the caller verifies. The executable's own block (TLS
module 1) ends at the thread pointer, aligned as glibc places it, from its PT_TLS.
"""

from __future__ import annotations

R_X86_64_TPOFF64 = 18
MAX_SLOTS = 4096


def tpoff_slots(obj) -> list[tuple[int, int]]:
    """[(runtime GOT slot address, TLS offset of the variable within obj's block)]."""
    path = getattr(obj, "file", None)
    if not path:
        return []
    try:
        from elftools.elf.elffile import ELFFile
        from elftools.elf.relocation import RelocationSection

        out = []
        with open(path, "rb") as f:
            elf = ELFFile(f)
            for sec in elf.iter_sections():
                if not isinstance(sec, RelocationSection) or not sec.is_RELA():
                    continue
                symtab = None
                for r in sec.iter_relocations():
                    if r["r_info_type"] != R_X86_64_TPOFF64:
                        continue
                    value = r["r_addend"]
                    if r["r_info_sym"]:
                        symtab = symtab or elf.get_section(sec["sh_link"])
                        value += symtab.get_symbol(r["r_info_sym"])["st_value"]
                    out.append((r["r_offset"] + obj.bias, value))
                    if len(out) >= MAX_SLOTS:
                        return out
        return out
    except (OSError, ValueError, KeyError, AttributeError, AssertionError, TypeError):
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
        return -(-(memsz - first) // align * align + first)
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
