"""The simulated program as a small ELF64 executable: its code, its symbols, its build-id.

The file is what the core's text mapping maps (from offset 0), so the first pages of the file
and of the core's image of that mapping are the same bytes, build-id note included: mdbpy's
core reader checks exactly that before trusting a file, and then reads the program's symbols
through the normal ELF symbol layer. Layout:

    0        ELF header, program headers (PT_LOAD text, PT_LOAD data, PT_NOTE, PT_GNU_STACK)
             and the GNU build-id note
    0x1000   the code (CODE_OFFSET)
    ...      text ends at a page boundary; the data segment is all bss (p_filesz 0)
    after    .symtab, .strtab, .shstrtab and the section headers (not loaded)
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple

from mdbpy.target import elfcore as ec

SHT_PROGBITS, SHT_SYMTAB, SHT_STRTAB, SHT_NOTE, SHT_NOBITS = 1, 2, 3, 7, 8
SHF_WRITE, SHF_ALLOC, SHF_EXECINSTR = 1, 2, 4
STB_GLOBAL, STT_OBJECT, STT_FUNC = 1, 1, 2
NOTE_OFFSET = ec.EHDR.size + 4 * ec.PHDR.size
SECTIONS = ("", ".note.gnu.build-id", ".text", ".bss", ".symtab", ".strtab", ".shstrtab")
TEXT_SHNDX, BSS_SHNDX = 2, 3


class ElfSymbol(NamedTuple):
    name: str
    addr: int
    size: int
    kind: str  # 'func' or 'object'


class Image(NamedTuple):
    data: bytes  # the whole file
    text_size: int  # bytes of the text mapping (page-aligned), the first bytes of `data`
    build_id: bytes


def build_image(text_base: int, code_offset: int, code: bytes, data_size: int,
                symbols: list[ElfSymbol], entry: int) -> Image:
    """The ELF file of a program whose text maps at text_base (code at text_base+code_offset)
    and whose bss follows the text directly."""
    code_end = code_offset + len(code)
    text_size = -(-code_end // ec.PAGE) * ec.PAGE
    data_base = text_base + text_size
    digest = hashlib.sha1(code)
    for s in symbols:
        digest.update(f"{s.name}:{s.addr:x}:{s.size:x}:{s.kind};".encode())
    digest.update(f"bss:{data_size:x}".encode())
    build_id = digest.digest()
    note = ec.pack_note(b"GNU", ec.NT_GNU_BUILD_ID, build_id)

    text = bytearray(text_size)
    phdrs = [
        ec.Phdr(ec.PT_LOAD, ec.PF_R | ec.PF_X, 0, text_base, text_size, text_size, ec.PAGE),
        ec.Phdr(ec.PT_LOAD, ec.PF_R | ec.PF_W, text_size, data_base, 0, data_size, ec.PAGE),
        ec.Phdr(ec.PT_NOTE, ec.PF_R, NOTE_OFFSET, text_base + NOTE_OFFSET, len(note), len(note), 4),
        ec.Phdr(ec.PT_GNU_STACK, ec.PF_R | ec.PF_W, 0, 0, 0, 0, 16),
    ]
    text[ec.EHDR.size:NOTE_OFFSET] = b"".join(ec.pack_phdr(p) for p in phdrs)
    text[NOTE_OFFSET:NOTE_OFFSET + len(note)] = note
    text[code_offset:code_end] = code

    strtab = bytearray(b"\0")
    syms = [bytes(ec.SYM.size)]
    for s in symbols:
        kind, shndx = (STT_FUNC, TEXT_SHNDX) if s.kind == "func" else (STT_OBJECT, BSS_SHNDX)
        syms.append(ec.SYM.pack(len(strtab), (STB_GLOBAL << 4) | kind, 0, shndx, s.addr, s.size))
        strtab += s.name.encode() + b"\0"
    shstrtab = bytearray(b"\0")
    names = [0]
    for n in SECTIONS[1:]:
        names.append(len(shstrtab))
        shstrtab += n.encode() + b"\0"

    tail = bytearray()
    symtab_off = text_size
    tail += b"".join(syms)
    strtab_off = text_size + len(tail)
    tail += strtab
    shstr_off = text_size + len(tail)
    tail += shstrtab
    tail += bytes(-len(tail) % 8)
    shoff = text_size + len(tail)
    A, W, X = SHF_ALLOC, SHF_WRITE, SHF_EXECINSTR
    shdrs = [
        (0, 0, 0, 0, 0, 0, 0, 0, 0, 0),
        (names[1], SHT_NOTE, A, text_base + NOTE_OFFSET, NOTE_OFFSET, len(note), 0, 0, 4, 0),
        (names[2], SHT_PROGBITS, A | X, text_base + code_offset, code_offset, len(code), 0, 0,
         16, 0),
        (names[3], SHT_NOBITS, A | W, data_base, text_size, data_size, 0, 0, 16, 0),
        (names[4], SHT_SYMTAB, 0, 0, symtab_off, ec.SYM.size * len(syms), 5, 1, 8, ec.SYM.size),
        (names[5], SHT_STRTAB, 0, 0, strtab_off, len(strtab), 0, 0, 1, 0),
        (names[6], SHT_STRTAB, 0, 0, shstr_off, len(shstrtab), 0, 0, 1, 0),
    ]
    tail += b"".join(ec.SHDR.pack(*sh) for sh in shdrs)
    ident = ec.ELF_MAGIC + bytes([ec.ELFCLASS64, ec.ELFDATA2LSB, ec.EV_CURRENT]) + bytes(9)
    text[:ec.EHDR.size] = ec.EHDR.pack(ident, ec.ET_EXEC, ec.EM_X86_64, ec.EV_CURRENT, entry,
                                       ec.EHDR.size, shoff, 0, ec.EHDR.size, ec.PHDR.size,
                                       len(phdrs), ec.SHDR.size, len(shdrs), len(shdrs) - 1)
    return Image(bytes(text + tail), text_size, build_id)
