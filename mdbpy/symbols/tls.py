"""libc's thread-local variables (glibc's `tcache`, `thread_arena`) at run time.

libc reaches them through the initial-exec model: each has a GOT slot relocated with
R_X86_64_TPOFF64 whose run-time value is the variable's offset from the thread pointer. So the
file's .rela.dyn names the slots, the target's memory holds their values, and
`fs_base + value` is a thread's copy. With libc's symbols, the slot of a given variable is the
one whose (symbol value + addend) is that variable's TLS offset; without them every slot is a
candidate that the caller verifies.
"""

from __future__ import annotations

R_X86_64_TPOFF64 = 18
MAX_SLOTS = 4096


def tpoff_slots(libc) -> list[tuple[int, int]]:
    """[(runtime GOT slot address, TLS offset of the variable within libc's block)]."""
    path = getattr(libc, "file", None)
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
                    out.append((r["r_offset"] + libc.bias, value))
                    if len(out) >= MAX_SLOTS:
                        return out
        return out
    except (OSError, ValueError, KeyError, AttributeError, AssertionError, TypeError):
        return []  # a damaged or foreign file: no TLS slots, the callers fall back


def slot_offsets(session, libc) -> list[tuple[int, int]]:
    """[(TLS offset within libc's block, thread-pointer offset)] of every readable slot."""
    key = ("ptmalloc.tpoff", libc.path, libc.bias)
    got = session.cache.get(key)
    if got is None:
        from mdbpy.errors import ReadError

        got = []
        for slot, value in tpoff_slots(libc):
            try:
                tp = session.mem.read_int(slot, 8)
            except ReadError:
                continue
            got.append((value, tp))
        session.cache[key] = got
    return got


def block_offset(session, libc) -> int | None:
    """The thread-pointer offset of libc's static TLS block (the same in every thread)."""
    seen = {tp - value for value, tp in slot_offsets(session, libc)}
    return seen.pop() if len(seen) == 1 else None
