"""DWARF location expressions evaluated in one frame: where a variable's bytes are at a pc.

A variable's DW_AT_location is an expression (or a location list choosing one by pc) that says
where its value lives: memory (DW_OP_fbreg off from the function's frame base, often
DW_OP_call_frame_cfa; DW_OP_bregN; DW_OP_addr), a register (DW_OP_regN), the value itself
(DW_OP_stack_value, DW_OP_implicit_value), or pieces of these (DW_OP_piece). The frame supplies
what the expression needs through a FrameContext: its registers as far as the unwinder
recovered them, its CFA and frame base, memory, and the value a register had on entry
(DW_OP_entry_value, which only the caller's call site can tell).

The rule is never to guess: a register the unwinder did not recover (a caller-saved register
above frame 0), an op this evaluator does not know, an entry value no call site gives, or a
piece with no location makes the whole variable Unavailable('optimized out'); a read that fails
makes it Unavailable('unreadable 0x...'). Partial values (some pieces known) are not shown:
the whole variable is then optimized out.
"""

from __future__ import annotations

from dataclasses import dataclass

from mdbpy.errors import MdbError
from mdbpy.unwind.cfi import signed64, stack_op

MASK = (1 << 64) - 1
MAX_OPS = 256  # a variable's expression is a handful of ops; loops are not followed forever
OPTIMIZED_OUT = "optimized out"

_ENTRY_VALUE = ("DW_OP_entry_value", "DW_OP_GNU_entry_value")


class Unavailable(Exception):
    """The value cannot be known at this pc; str() is what to show inside <...>."""


class FrameContext:
    """What an expression may ask of its frame. Subclasses (mdbpy/types/frames.py) answer;
    each answer raises Unavailable when the frame does not know it."""

    bias = 0  # load bias of the object whose DWARF the expression comes from (DW_OP_addr)

    def reg(self, regno: int) -> int:
        raise Unavailable(OPTIMIZED_OUT)

    def cfa(self) -> int:
        raise Unavailable(OPTIMIZED_OUT)

    def frame_base(self) -> int:
        raise Unavailable(OPTIMIZED_OUT)

    def entry_value(self, regno: int) -> int:
        raise Unavailable(OPTIMIZED_OUT)

    def read(self, addr: int, size: int) -> bytes:
        raise Unavailable(f"unreadable 0x{addr:x}")


@dataclass
class Piece:
    """One piece of a location: kind 'memory' (arg: address), 'register' (arg: DWARF regno),
    'value' (arg: the integer), 'bytes' (arg: the bytes); size in bytes, None for the whole."""

    kind: str
    arg: object
    size: int | None = None


def evaluate(ops, ctx: FrameContext) -> list[Piece]:
    """The pieces an expression (pyelftools DWARFExprOps) describes. Raises Unavailable."""
    if not ops:
        raise Unavailable(OPTIMIZED_OUT)
    at = {op.offset: i for i, op in enumerate(ops)}
    stack: list[int] = []
    pieces: list[Piece] = []
    pending: Piece | None = None  # a register or value location, awaiting DW_OP_piece or the end

    def pop() -> int:
        if not stack:
            raise Unavailable(OPTIMIZED_OUT)  # malformed: nothing to pop
        return stack.pop()

    def read_int(addr: int, size: int) -> int:
        return int.from_bytes(ctx.read(addr & MASK, size), "little")

    i = steps = 0
    while i < len(ops):
        steps += 1
        if steps > MAX_OPS:
            raise Unavailable(OPTIMIZED_OUT)
        op = ops[i]
        name, args = op.op_name, op.args
        i += 1
        if pending is not None and name not in ("DW_OP_piece", "DW_OP_bit_piece"):
            raise Unavailable(OPTIMIZED_OUT)  # a register or value location must end a piece
        if stack_op(name, args, stack, pop):  # literals, arithmetic, stack shuffles
            pass
        elif name == "DW_OP_addr":
            stack.append((args[0] + ctx.bias) & MASK)
        elif name.startswith("DW_OP_breg") and name != "DW_OP_bregx":
            stack.append((ctx.reg(int(name[10:])) + args[0]) & MASK)
        elif name == "DW_OP_bregx":
            stack.append((ctx.reg(args[0]) + args[1]) & MASK)
        elif name.startswith("DW_OP_reg") and name != "DW_OP_regx" and \
                not name.startswith("DW_OP_regval"):
            pending = Piece("register", int(name[9:]))
        elif name == "DW_OP_regx":
            pending = Piece("register", args[0])
        elif name == "DW_OP_fbreg":
            stack.append((ctx.frame_base() + args[0]) & MASK)
        elif name == "DW_OP_call_frame_cfa":
            stack.append(ctx.cfa())
        elif name in ("DW_OP_div", "DW_OP_mod"):
            b, a = pop(), pop()
            if b == 0:
                raise Unavailable(OPTIMIZED_OUT)
            if name == "DW_OP_mod":
                stack.append(a % b)
            else:
                q = abs(signed64(a)) // abs(signed64(b))
                stack.append((q if (signed64(a) < 0) == (signed64(b) < 0) else -q) & MASK)
        elif name == "DW_OP_abs":
            stack.append(abs(signed64(pop())) & MASK)
        elif name == "DW_OP_deref":
            stack.append(read_int(pop(), 8))
        elif name == "DW_OP_deref_size":
            stack.append(read_int(pop(), args[0]))
        elif name == "DW_OP_pick":
            if args[0] >= len(stack):
                raise Unavailable(OPTIMIZED_OUT)
            stack.append(stack[-1 - args[0]])
        elif name == "DW_OP_rot":
            c, b, a = pop(), pop(), pop()
            stack += [c, a, b]
        elif name in ("DW_OP_skip", "DW_OP_bra"):
            if name == "DW_OP_skip" or pop() != 0:
                target = op.offset + 3 + args[0]  # the op byte and its 2-byte operand
                if target not in at and target <= ops[-1].offset:
                    raise Unavailable(OPTIMIZED_OUT)
                i = at.get(target, len(ops))
        elif name in _ENTRY_VALUE:
            stack.append(_entry_value(args[0], ctx))
        elif name == "DW_OP_stack_value":
            pending = Piece("value", pop())
            stack.clear()
        elif name == "DW_OP_implicit_value":
            pending = Piece("bytes", bytes(args[1]))
        elif name == "DW_OP_piece":
            pieces.append(_finish(pending, stack, args[0]))
            pending, stack = None, []
        else:  # typed stack ops, implicit pointers, bit pieces, TLS, calls: not evaluated
            raise Unavailable(OPTIMIZED_OUT)
    if pending is not None or stack or not pieces:
        pieces.append(_finish(pending, stack, None))
    return pieces


def _finish(pending: Piece | None, stack: list[int], size: int | None) -> Piece:
    """The piece that a DW_OP_piece (or the end) closes: the register or value named, else the
    memory at the top of the stack; an empty piece has no location (optimized out)."""
    if pending is not None:
        pending.size = size
        return pending
    if not stack:
        return Piece("none", None, size)
    return Piece("memory", stack[-1], size)


def _entry_value(inner, ctx: FrameContext) -> int:
    """DW_OP_entry_value(DW_OP_regN): the register's value on entry, which only a call site
    in the caller can tell; any other inner expression is not resolved."""
    if len(inner) == 1 and inner[0].op_name.startswith("DW_OP_reg") and \
            inner[0].op_name not in ("DW_OP_regx",) and not inner[0].op_name.startswith(
                "DW_OP_regval"):
        return ctx.entry_value(int(inner[0].op_name[9:]))
    if len(inner) == 1 and inner[0].op_name == "DW_OP_regx":
        return ctx.entry_value(inner[0].args[0])
    raise Unavailable(OPTIMIZED_OUT)


def as_int(pieces: list[Piece], ctx: FrameContext) -> int:
    """The value of a location used as a number (a call site's DW_AT_call_value, a frame
    base): a memory location's address, or the value a register or the stack holds."""
    if len(pieces) != 1 or pieces[0].size is not None:
        raise Unavailable(OPTIMIZED_OUT)
    p = pieces[0]
    if p.kind == "memory" or p.kind == "value":
        return p.arg
    if p.kind == "register":
        return ctx.reg(p.arg)
    raise Unavailable(OPTIMIZED_OUT)


def place(pieces: list[Piece], size: int, ctx: FrameContext) -> tuple[int | None, bytes | None]:
    """Where a variable of `size` bytes is: (address, None) when it is one piece of memory,
    else (None, its bytes) gathered from registers, values and memory pieces."""
    if len(pieces) == 1 and pieces[0].kind == "memory" and pieces[0].size is None:
        return pieces[0].arg, None
    data = b"".join(_piece_bytes(p, size if p.size is None else p.size, ctx) for p in pieces)
    if len(data) < size:
        raise Unavailable(OPTIMIZED_OUT)
    return None, data[:size]


def _piece_bytes(p: Piece, size: int, ctx: FrameContext) -> bytes:
    if p.kind == "memory":
        return ctx.read(p.arg, size)
    if p.kind == "register":
        if size > 8:
            raise Unavailable(OPTIMIZED_OUT)  # vector registers are not recovered
        return ctx.reg(p.arg).to_bytes(8, "little")[:size]
    if p.kind == "value":
        if size > 8:
            raise Unavailable(OPTIMIZED_OUT)
        return (p.arg & MASK).to_bytes(8, "little")[:size]
    if p.kind == "bytes":
        if len(p.arg) < size:
            raise Unavailable(OPTIMIZED_OUT)
        return p.arg[:size]
    raise Unavailable(OPTIMIZED_OUT)


def expression_at(entries, pc: int, base: int):
    """The expression (raw bytes) of a location list in force at file address pc, or None.
    `entries` are pyelftools' parsed list (LocationEntry, BaseAddressEntry; DWARF 4 .debug_loc
    or DWARF 5 .debug_loclists); offsets not marked absolute are from `base`, the unit's
    DW_AT_low_pc until a base address entry changes it."""
    default = None
    for e in entries:
        kind = type(e).__name__
        if kind == "BaseAddressEntry":
            base = e.base_address
        elif kind == "LocationEntry":
            if e.begin_offset == -1 and e.end_offset == -1:
                default = e.loc_expr
                continue
            lo, hi = (e.begin_offset, e.end_offset) if e.is_absolute else \
                (base + e.begin_offset, base + e.end_offset)
            if lo <= pc < hi:
                return e.loc_expr
    return default


def read_or_unavailable(read, addr: int, size: int) -> bytes:
    """read(addr, size), with a failed read as Unavailable('unreadable 0x...')."""
    try:
        data = read(addr & MASK, size)
    except MdbError:
        raise Unavailable(f"unreadable 0x{addr & MASK:x}") from None
    if len(data) < size:
        raise Unavailable(f"unreadable 0x{(addr + len(data)) & MASK:x}")
    return data
