"""DWARF location expressions evaluated in one frame: where a variable's bytes are at a pc.

A variable's DW_AT_location is an expression (or a location list choosing one by pc) that says
where its value lives: memory (DW_OP_fbreg off from the function's frame base, often
DW_OP_call_frame_cfa; DW_OP_bregN; DW_OP_addr), a register (DW_OP_regN), the value itself
(DW_OP_stack_value, DW_OP_implicit_value), or pieces of these (DW_OP_piece). The frame supplies
what the expression needs through a FrameContext: its registers as far as the unwinder
recovered them, its CFA and frame base, memory, and the value a register had on entry
(DW_OP_entry_value, and DW_OP_GNU_parameter_ref for a parameter named by its DIE, which only
the caller's call site can tell). Typed values (DW_OP_convert,
DW_OP_regval_type, DW_OP_deref_type, DW_OP_const_type, gcc's for unsigned division) are
integers of a base type, whose size and sign the unit's DWARF gives. A pointer whose target
was optimized into registers or constants (DW_OP_implicit_pointer) has no address to show: it
is `<synthetic pointer>`, as gdb says.

The rule is never to guess: a register the unwinder did not recover (a caller-saved register
above frame 0), an op this evaluator does not know, an entry value no call site gives, or a
piece with no location makes the whole variable Unavailable('optimized out'); a read that fails
makes it Unavailable('unreadable 0x...'). Partial values (some pieces known) are not shown:
the whole variable is then optimized out. Where gdb's evaluator raises an error rather than
making a value optimized out (a failed read; DW_OP_bregN of a register the unwinder did not
recover, which gdb's address_from_register refuses), the exception is a Failed: gdb then shows
an argument's entry value as that error instead of leaving it out (frames.py).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

from mdbpy.errors import MdbError
from mdbpy.unwind.cfi import BINARY_OPS, signed64, stack_op

MASK = (1 << 64) - 1
MAX_OPS = 256  # a variable's expression is a handful of ops; loops are not followed forever
OPTIMIZED_OUT = "optimized out"
SYNTHETIC = "synthetic pointer"  # gdb's word for a pointer to a value that is not in memory

_ENTRY_VALUE = ("DW_OP_entry_value", "DW_OP_GNU_entry_value")
_CONVERT = ("DW_OP_convert", "DW_OP_GNU_convert")
_REGVAL_TYPE = ("DW_OP_regval_type", "DW_OP_GNU_regval_type")
_DEREF_TYPE = ("DW_OP_deref_type", "DW_OP_GNU_deref_type")
_CONST_TYPE = ("DW_OP_const_type", "DW_OP_GNU_const_type")
_IMPLICIT_POINTER = ("DW_OP_implicit_pointer", "DW_OP_GNU_implicit_pointer")
_UNARY = ("DW_OP_neg", "DW_OP_not", "DW_OP_abs", "DW_OP_plus_uconst", "DW_OP_deref",
          "DW_OP_deref_size", *_DEREF_TYPE)
_BINARY = (*BINARY_OPS, "DW_OP_div", "DW_OP_mod")
_TYPED_MODULAR = ("DW_OP_plus", "DW_OP_minus", "DW_OP_mul", "DW_OP_and", "DW_OP_or", "DW_OP_xor")


class Unavailable(Exception):
    """The value cannot be known at this pc; str() is what to show inside <...>."""


class Failed(Unavailable):
    """Unavailable where gdb's evaluator raises an error (not NO_ENTRY_VALUE_ERROR), which its
    bt shows for an entry value too (`x@entry=<error reading variable: ...>`)."""


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

    def entry_value(self, regno: int, deref_size: int | None = None) -> int:
        """The value register regno had on entry (with deref_size, the deref_size bytes it
        pointed at then), from the caller's call site."""
        raise Unavailable(OPTIMIZED_OUT)

    def parameter_ref(self, offset: int) -> int:
        """The value the caller passed for the parameter DIE at unit offset `offset`
        (DW_OP_GNU_parameter_ref), from its call site."""
        raise Unavailable(OPTIMIZED_OUT)

    def base_type(self, offset: int) -> tuple[int, bool]:
        """(size, signed) of the integer base type DIE at `offset` in the expression's unit
        (the typed stack ops name their types so); other types are not evaluated."""
        raise Unavailable(OPTIMIZED_OUT)

    def read(self, addr: int, size: int) -> bytes:
        raise Failed(f"unreadable 0x{addr:x}")


class Typed(int):
    """A value of a base type on the stack (DW_OP_convert and the other typed ops): held as
    the 64-bit pattern of its value, with its size in bytes and sign. Arithmetic on it is done
    only where this evaluator models the type's own (8-byte division and modular ops); other
    typed arithmetic is not guessed at."""

    size: int
    signed: bool

    def __new__(cls, value: int, size: int, signed: bool):
        bits = 8 * size
        v = int(value) & ((1 << bits) - 1)
        if signed and v >> (bits - 1):
            v -= 1 << bits
        obj = super().__new__(cls, v & MASK)
        obj.size, obj.signed = size, signed
        return obj


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
        if name in _UNARY and stack and isinstance(stack[-1], Typed):
            raise Unavailable(OPTIMIZED_OUT)  # typed arithmetic this evaluator does not model
        if name in _BINARY and any(isinstance(x, Typed) for x in stack[-2:]):
            b, a = pop(), pop()
            stack.append(_typed_binary(name, a, b))
        elif stack_op(name, args, stack, pop):  # literals, arithmetic, stack shuffles
            pass
        elif name == "DW_OP_addr":
            stack.append((args[0] + ctx.bias) & MASK)
        elif name.startswith("DW_OP_breg") and name != "DW_OP_bregx":
            stack.append((_address_register(ctx, int(name[10:])) + args[0]) & MASK)
        elif name == "DW_OP_bregx":
            stack.append((_address_register(ctx, args[0]) + args[1]) & MASK)
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
        elif name == "DW_OP_GNU_parameter_ref":
            stack.append(ctx.parameter_ref(args[0]))
        elif name in _CONVERT:
            stack.append(_typed(pop(), args[0], ctx))
        elif name in _REGVAL_TYPE:
            stack.append(_typed(ctx.reg(args[0]), args[1], ctx))
        elif name in _DEREF_TYPE:
            stack.append(_typed(read_int(pop(), args[0]), args[1], ctx))
        elif name in _CONST_TYPE:
            stack.append(_typed(int.from_bytes(bytes(args[1]), "little"), args[0], ctx))
        elif name in _IMPLICIT_POINTER:
            pending = Piece("implicit", tuple(args))
        elif name == "DW_OP_stack_value":
            pending = Piece("value", pop())
            stack.clear()
        elif name == "DW_OP_implicit_value":
            pending = Piece("bytes", bytes(args[1]))
        elif name == "DW_OP_piece":
            pieces.append(_finish(pending, stack, args[0]))
            pending, stack = None, []
        else:  # reinterpretations, bit pieces, TLS, calls: not evaluated
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


def _address_register(ctx: FrameContext, regno: int) -> int:
    """A register's value as DW_OP_bregN takes it: where the frame did not recover it, gdb
    raises an error ("value has been optimized out") instead of making the value optimized
    out, so this is Failed."""
    try:
        return ctx.reg(regno)
    except Unavailable as e:
        raise Failed(str(e)) from None


def _typed(value: int, type_offset: int, ctx: FrameContext) -> int:
    """value converted to the base type at type_offset (0: the generic type, a plain
    address-sized integer): truncated to the type's size, sign-extended when it is signed."""
    if type_offset == 0:
        return int(value) & MASK
    size, signed = ctx.base_type(type_offset)
    if not 0 < size <= 8:
        raise Unavailable(OPTIMIZED_OUT)
    return Typed(value, size, signed)


def _typed_binary(name: str, a, b) -> int:
    """a (op) b where one of them is typed: both must be of the same 8-byte integer type;
    division and modulus follow its sign, the modular ops are the same for both signs, and
    comparisons for equality give a generic 0 or 1. Anything else is not evaluated."""
    if not (isinstance(a, Typed) and isinstance(b, Typed)) or a.size != 8 or \
            (a.size, a.signed) != (b.size, b.signed):
        raise Unavailable(OPTIMIZED_OUT)
    if name in ("DW_OP_div", "DW_OP_mod"):
        if b == 0:
            raise Unavailable(OPTIMIZED_OUT)
        x, y = (signed64(a), signed64(b)) if a.signed else (int(a), int(b))
        q = abs(x) // abs(y) * (1 if (x < 0) == (y < 0) else -1)  # C's: toward zero
        return Typed(q if name == "DW_OP_div" else x - q * y, 8, a.signed)
    if name in _TYPED_MODULAR:
        return Typed(BINARY_OPS[name](int(a), int(b)), 8, a.signed)
    if name in ("DW_OP_eq", "DW_OP_ne"):
        return BINARY_OPS[name](int(a), int(b))
    raise Unavailable(OPTIMIZED_OUT)


_parsers = weakref.WeakKeyDictionary()  # a unit's structs -> its DWARFExprParser


def parse(die, expr):
    """The ops (pyelftools DWARFExprOps) of an expression's bytes from die's unit; a
    malformed expression in the file is Unavailable: there is nothing to evaluate. One parser
    per unit's structs (its address and offset sizes): making one builds a dispatch table of
    every opcode, 0.15 ms, and the typegraph's frame roots parse dozens of locations."""
    from elftools.dwarf.dwarf_expr import DWARFExprParser

    structs = die.cu.structs
    parser = _parsers.get(structs)
    if parser is None:
        parser = _parsers[structs] = DWARFExprParser(structs)
    try:
        return parser.parse_expr(bytes(expr))
    except Exception:
        raise Unavailable(OPTIMIZED_OUT) from None


def lone_register(ops) -> int | None:
    """The DWARF register n of an expression that is only DW_OP_regN or DW_OP_regx n."""
    if len(ops) != 1:
        return None
    name = ops[0].op_name
    if name == "DW_OP_regx":
        return ops[0].args[0]
    if name.startswith("DW_OP_reg") and name[9:].isdigit():
        return int(name[9:])
    return None


def _entry_value(inner, ctx: FrameContext) -> int:
    """DW_OP_entry_value of a register, DW_OP_regN: its value on entry; of DW_OP_bregN 0 then
    DW_OP_deref or DW_OP_deref_size: what it pointed at then. Only the caller's call site can
    tell (gdb accepts these two shapes, and so does this evaluator)."""
    n = lone_register(inner)
    if n is not None:
        return ctx.entry_value(n)
    if len(inner) == 2 and inner[1].op_name in ("DW_OP_deref", "DW_OP_deref_size"):
        base, deref = inner
        size = deref.args[0] if deref.op_name == "DW_OP_deref_size" else 8
        if base.op_name == "DW_OP_bregx" and base.args[1] == 0:
            return ctx.entry_value(base.args[0], size)
        if base.op_name.startswith("DW_OP_breg") and base.op_name[10:].isdigit() and \
                base.args[0] == 0:
            return ctx.entry_value(int(base.op_name[10:]), size)
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
    if any(p.kind == "implicit" for p in pieces):  # a pointer to a value in no memory
        raise Unavailable(SYNTHETIC if len(pieces) == 1 else OPTIMIZED_OUT)
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
    """read(addr, size), with a failed read as Failed('unreadable 0x...') (gdb's memory
    error)."""
    try:
        data = read(addr & MASK, size)
    except MdbError:
        raise Failed(f"unreadable 0x{addr & MASK:x}") from None
    if len(data) < size:
        raise Failed(f"unreadable 0x{(addr + len(data)) & MASK:x}")
    return data
