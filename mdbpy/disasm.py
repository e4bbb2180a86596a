"""x86-64 instruction decoding for the `i` / `I` format characters and for `::dis`.

capstone does the decoding (Intel syntax, its own text); this module adds what a debugger needs
on top: reading through any byte source (memory, the object file, an immediate value), stepping
over undecodable bytes, and naming addresses.

Rendering of symbols (the choice mdbpy makes, stated once here): an instruction's text is
capstone's `mnemonic op_str` unchanged, followed by ` <name>` when the instruction refers to an
address that resolves to a symbol through session.format_addr: the destination of a direct
jump or call (`call 0x401136 <helper>`, `call 0x7f..50 <libc.so.6`malloc>`) or the address of
a rip-relative memory operand (`mov eax, dword ptr [rip + 0x2ed6] <global_int>`). Addresses that
resolve to nothing get no suffix, so the text is exactly capstone's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING

from mdbpy.errors import MdbError, ReadError

if TYPE_CHECKING:
    from mdbpy.session import Session

MAX_INSN = 15  # the longest x86 instruction, in bytes
CHUNK = 64 << 10  # most bytes read at once while decoding
MAX_RANGE = 1 << 20  # most bytes one disassemble_range() decodes (a function, a window)
MASK = (1 << 64) - 1


@dataclass(frozen=True)
class Insn:
    address: int
    size: int
    bytes: bytes
    mnemonic: str
    op_str: str
    text: str  # capstone's text plus the ` <symbol>` suffix described in the module docstring
    target: int | None = None  # branch/call destination or rip-relative operand address


def _engine(session: Session):
    """One capstone handle per session (in its cache), with operand details switched on."""
    key = ("disasm", "capstone")
    cs = session.cache.get(key)
    if cs is None:
        import capstone

        cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
        cs.detail = True
        session.cache[key] = cs
    return cs


def read_available(read: Callable[[int, int], bytes], addr: int, want: int) -> bytes:
    """As many bytes as can be read from addr, up to want: all at once when possible, else in
    pieces that halve at each failure, so the result stops exactly where readable bytes end."""
    out = bytearray()
    n = want
    while n and len(out) < want:
        n = min(n, want - len(out))
        try:
            piece = read(addr + len(out), n)
        except ReadError:
            n //= 2
            continue
        out += piece
        if len(piece) < n:
            break
    return bytes(out)


def _target(insn) -> int | None:
    """The address a decoded instruction refers to: a direct branch/call destination or a
    rip-relative memory operand."""
    from capstone import CS_GRP_CALL, CS_GRP_JUMP
    from capstone.x86 import X86_OP_IMM, X86_OP_MEM, X86_REG_RIP

    ops = insn.operands
    if (insn.group(CS_GRP_JUMP) or insn.group(CS_GRP_CALL)) and ops and ops[0].type == X86_OP_IMM:
        return ops[0].imm & ((1 << 64) - 1)
    for op in ops:
        if op.type == X86_OP_MEM and op.mem.base == X86_REG_RIP:
            return (insn.address + insn.size + op.mem.disp) & ((1 << 64) - 1)
    return None


def _render(session: Session, insn) -> Insn:
    text = f"{insn.mnemonic} {insn.op_str}".rstrip()
    target = _target(insn)
    if target is not None:
        name = session.format_addr(target)
        if not name.startswith("0x"):
            text += f" <{name}>"
    return Insn(insn.address, insn.size, bytes(insn.bytes), insn.mnemonic, insn.op_str, text,
                target)


def _bad(addr: int, byte: bytes) -> Insn:
    """An undecodable byte: shown as `(bad)` and stepped over, as objdump does."""
    return Insn(addr, 1, byte, "(bad)", "", "(bad)")


def _stream(session: Session, addr: int, read: Callable[[int, int], bytes],
            first: int) -> Iterator[Insn]:
    """Instructions from addr for as long as memory is readable (the caller stops taking).
    The first read asks for `first` bytes, later ones for twice as many up to CHUNK, so a
    short request reads little and a long one reads in big blocks."""
    cs = _engine(session)
    cur = addr & MASK
    want = max(first, 2 * MAX_INSN)
    while True:
        data = read_available(read, cur, want)
        if not data:
            return
        end_of_memory = len(data) < want
        pos = cur
        for ci in cs.disasm(data, cur):
            yield _render(session, ci)
            pos = ci.address + ci.size
        left = len(data) - (pos - cur)
        if left >= MAX_INSN or (left and end_of_memory):
            # capstone stopped at bytes that are not an instruction (or that memory cuts off)
            yield _bad(pos, data[pos - cur:pos - cur + 1])
            pos += 1
        if pos == cur:
            return
        cur = pos
        want = min(CHUNK, want * 2)


def disassemble(session: Session, addr: int, count: int, *,
                read: Callable[[int, int], bytes] | None = None) -> list[Insn]:
    """Up to `count` instructions from addr, read through `read(addr, n)` (default: virtual
    memory). Fewer come back when readable bytes run out; none means addr itself is unreadable.
    Bytes capstone cannot decode become one-byte `(bad)` entries."""
    if count <= 0:
        return []
    stream = _stream(session, addr, read or session.mem.read, min(CHUNK, count * 8))
    return list(islice(stream, count))


def disassemble_range(session: Session, start: int, end: int, *,
                      read: Callable[[int, int], bytes] | None = None) -> list[Insn]:
    """The instructions that begin in [start, end): a whole function from its symbol's start
    and size. The last one may run past `end`. At most MAX_RANGE bytes are decoded."""
    if end - start > MAX_RANGE:
        raise MdbError(f"refusing to disassemble 0x{end - start:x} bytes "
                       f"(at most 0x{MAX_RANGE:x})")
    out = []
    for insn in _stream(session, start, read or session.mem.read, min(CHUNK, end - start)):
        if insn.address >= end:
            break
        out.append(insn)
    return out


def previous(session: Session, addr: int, count: int, *,
             read: Callable[[int, int], bytes] | None = None) -> int:
    """The address of the instruction `count` instructions before addr (addr itself when none
    can be found), for ::dis's window.

    x86 instructions have no fixed length, so decoding backwards is guesswork. When addr lies
    inside a function symbol, the function is decoded forward from its start, which is exact.
    Otherwise decoding starts at up to MAX_INSN different guesses `count * MAX_INSN` bytes
    back; x86 code resynchronizes after a few instructions, and the first guess whose decoding
    lands exactly on addr with `count` valid instructions before it is taken.
    """
    if count <= 0:
        return addr
    read = read or session.mem.read
    hit = session.symbols.lookup_addr(addr)
    if hit is not None and hit[0].type == "func" and 0 < hit[1] <= MAX_RANGE:
        before = [i.address for i in disassemble_range(session, hit[0].addr, addr, read=read)]
        return before[-count] if len(before) >= count else (before[0] if before else addr)
    span = count * MAX_INSN
    for extra in range(MAX_INSN):
        lo = addr - span - extra
        if lo < 0:
            break
        insns = disassemble_range(session, lo, addr, read=read)
        tail = insns[-count:]
        if (len(tail) == count and tail[-1].address + tail[-1].size == addr
                and all(i.mnemonic != "(bad)" for i in tail)):
            return tail[0].address
    return addr
