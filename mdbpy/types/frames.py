"""The arguments and locals of one stack frame, as typed values, from DWARF.

For frame i of an unwound stack (mdbpy/unwind), the function whose code holds the frame's pc
(its return address minus one above frame 0, as the frame is named) and the lexical blocks that
hold it are found with scopes.py; each parameter's and variable's location is evaluated with
locations.py in this frame's context: its registers as the unwinder recovered them (all of
them in frame 0, only the callee-saved ones and those the CFI restores above it, never a stale
caller-saved register), its CFA, the function's DW_AT_frame_base, and the target's memory. An
entry value (DW_OP_entry_value) is asked of the caller's frame: the call site at the caller's
return address must call this very function and say what it passed in that register, and the
value is then evaluated in the caller's context, as gdb does; otherwise it is optimized out.

Each variable comes back as a FrameVar: a Value (printable by printer.py), or the reason there is
none (`optimized out`, `unreadable 0x...`). commands/core/frames.py prints them (::locals,
::frame) and commands/core/stack.py the arguments in $C / ::stack -v.
"""

from __future__ import annotations

from dataclasses import dataclass

from mdbpy.errors import MdbError
from mdbpy.types.locations import (MASK, OPTIMIZED_OUT, FrameContext, Unavailable, as_int,
                                   evaluate, expression_at, place, read_or_unavailable)
from mdbpy.types.model import Array, Struct, Type
from mdbpy.types.scopes import Scopes, call_value, calls, name_of, origin
from mdbpy.types.space import space_of
from mdbpy.types.value import Value
from mdbpy.unwind.cfi import DWARF_REGS

MAX_ENTRY_DEPTH = 8  # entry values resolved through at most this many callers

_scopes: dict = {}


@dataclass
class FrameVar:
    """One argument (arg True) or local of a frame: its value, or why it has none."""

    name: str
    type: Type
    arg: bool
    value: Value | None = None
    why: str | None = None


def scopes_of(dwarf_types) -> Scopes:
    """The Scopes of a DWARF file (kept as long as the file, which space.py keeps open)."""
    s = _scopes.get(dwarf_types)
    if s is None:
        s = _scopes[dwarf_types] = Scopes(dwarf_types)
    return s


@dataclass
class _Function:
    """A frame's function in its DWARF: the file, the subprogram DIE, the object's bias."""

    dwarf: object
    scopes: Scopes
    die: object
    bias: int
    pc: int  # the file address that names the frame


def _function(session, frame) -> _Function | None:
    obj = session.symbols.object_for_addr(frame.named_at)
    if obj is None:
        return None
    d = space_of(session).dwarf_of(obj)
    if d is None:
        return None
    sc = scopes_of(d)
    pc = (frame.named_at - obj.bias) & MASK
    die = sc.function_at(pc)
    return None if die is None else _Function(d, sc, die, obj.bias, pc)


class _Context(FrameContext):
    """Frame i of `frames` as locations.py asks of it."""

    def __init__(self, session, frames, i: int, fn: _Function, depth: int = 0):
        self.session, self.frames, self.i, self.fn = session, frames, i, fn
        self.frame = frames[i]
        self.bias = fn.bias
        self.depth = depth
        self._base: int | None = None

    def reg(self, regno: int) -> int:
        v = self.frame.regs.get(DWARF_REGS[regno]) if 0 <= regno < len(DWARF_REGS) else None
        if v is None:
            raise Unavailable(OPTIMIZED_OUT)  # not recovered in this frame
        return v

    def cfa(self) -> int:
        if self.frame.cfa is None:
            raise Unavailable(OPTIMIZED_OUT)
        return self.frame.cfa

    def frame_base(self) -> int:
        if self._base is None:
            ops = location_ops(self.fn, self.fn.die, "DW_AT_frame_base")
            if ops is None:
                raise Unavailable(OPTIMIZED_OUT)
            self._base = as_int(evaluate(ops, self), self)
        return self._base

    def read(self, addr: int, size: int) -> bytes:
        return read_or_unavailable(self.session.mem.read, addr, size)

    def entry_value(self, regno: int) -> int:
        """What the caller passed in register regno, from its call site (see the module doc)."""
        if self.depth >= MAX_ENTRY_DEPTH or self.i + 1 >= len(self.frames) or self.frame.signal:
            raise Unavailable(OPTIMIZED_OUT)
        caller = self.frames[self.i + 1]
        if not caller.ret:  # the caller was interrupted (a signal), not making a call
            raise Unavailable(OPTIMIZED_OUT)
        cfn = _function(self.session, caller)
        if cfn is None:
            raise Unavailable(OPTIMIZED_OUT)
        site = cfn.scopes.call_site(cfn.die, (caller.pc - cfn.bias) & MASK)
        if site is None or not calls(site, self.fn.die, same_file=cfn.dwarf is self.fn.dwarf):
            raise Unavailable(OPTIMIZED_OUT)
        expr = call_value(site, regno)
        if not isinstance(expr, list):
            raise Unavailable(OPTIMIZED_OUT)
        ctx = _Context(self.session, self.frames, self.i + 1, cfn, self.depth + 1)
        return as_int(evaluate(_parse(site, expr), ctx), ctx)


def _parse(die, expr):
    from elftools.dwarf.dwarf_expr import DWARFExprParser

    try:
        return DWARFExprParser(die.cu.structs).parse_expr(bytes(expr))
    except Exception:  # a malformed expression in the file: nothing to evaluate
        raise Unavailable(OPTIMIZED_OUT) from None


def location_ops(fn: _Function, die, attr: str = "DW_AT_location"):
    """The parsed expression of die's `attr` in force at the frame's pc (a location list
    choosing by pc), [] when the list has none there, None when there is no such attribute."""
    a = die.attributes.get(attr)
    if a is None:
        return None
    if a.form == "DW_FORM_exprloc" or a.form.startswith("DW_FORM_block"):
        return _parse(die, a.value)
    from elftools.dwarf.locationlists import LocationParser

    try:
        lists = LocationParser(fn.dwarf.dwarf.location_lists())
        entries = lists.parse_from_attribute(a, die.cu.header["version"], die)
    except Exception:
        raise Unavailable(OPTIMIZED_OUT) from None
    if not isinstance(entries, list):
        return _parse(die, entries.loc_expr)
    base = die.cu.get_top_DIE().attributes.get("DW_AT_low_pc")
    expr = expression_at(entries, fn.pc, base.value if base is not None else 0)
    return [] if expr is None else _parse(die, expr)


def frame_variables(session, frames, i: int, locals_: bool = True) -> list[FrameVar] | None:
    """The arguments (in order) and, with locals_, the locals (innermost block first) of frame
    i; None when no DWARF describes the frame's function."""
    fn = _function(session, frames[i])
    if fn is None:
        return None
    ctx = _Context(session, frames, i, fn)
    params, local_dies = fn.scopes.variables(fn.die, fn.pc)
    out = [_variable(session, ctx, fn, d, True) for d in params]
    if locals_:
        out += [_variable(session, ctx, fn, d, False) for d in local_dies]
    return out


def _variable(session, ctx: _Context, fn: _Function, die, arg: bool) -> FrameVar:
    space = space_of(session)
    name = name_of(die) or "?"
    try:
        t = fn.dwarf.var_type(die)
    except MdbError as e:
        return FrameVar(name, _void(), arg, why=str(e))
    var = FrameVar(name, t, arg)
    try:
        size = space.complete(t.strip()).size
        if not size:
            raise Unavailable(OPTIMIZED_OUT)
        ops = location_ops(fn, die)
        if ops is None:
            var.value = Value(space, t, None, _const_value(origin_const(die), size))
            return var
        address, data = place(evaluate(ops, ctx), size, ctx)
        var.value = Value(space, t, address, data)
        if address is not None:
            ctx.read(address, size)  # an unreadable variable says so now, not when printed
    except Unavailable as e:
        var.value, var.why = None, str(e)
    return var


def origin_const(die):
    """DW_AT_const_value of die or of its abstract origin, or None."""
    for d in (die, origin(die)):
        a = d.attributes.get("DW_AT_const_value")
        if a is not None:
            return a
    return None


def _const_value(attr, size: int) -> bytes:
    """The bytes of a DW_AT_const_value (a constant folded away: gdb prints it)."""
    if attr is None:
        raise Unavailable(OPTIMIZED_OUT)
    v = attr.value
    if isinstance(v, int):
        return (v & ((1 << (8 * size)) - 1) if size <= 8 else v & MASK).to_bytes(
            max(size, 8), "little")[:size]
    if isinstance(v, (list, bytes)) and len(v) >= size:
        return bytes(v[:size])
    raise Unavailable(OPTIMIZED_OUT)


def _void() -> Type:
    from mdbpy.types.model import Void

    return Void()


def is_scalar(t: Type) -> bool:
    """Whether a value prints on one line in a frame's argument list (structs and arrays
    print as `...` there, as gdb's bt prints them; ::locals shows them whole)."""
    return not isinstance(t, (Struct, Array))


def args_text(session, frames, i: int, limit: int | None = None) -> str:
    """`name=value, ...` of frame i's arguments as $C prints them between the parentheses
    ('' when no DWARF describes the function): scalars as ::print shows them, structs and
    arrays as `...` (gdb's bt), `<optimized out>` where the location does not resolve.
    `limit` caps how many are shown (mdb's $C cnt)."""
    from mdbpy.types.printer import PrintOptions, Printer

    found = frame_variables(session, frames, i, locals_=False) or []
    space = space_of(session)
    printer = Printer(space, PrintOptions())
    out = []
    for v in found[:limit]:
        if v.value is None:
            text = f"<{v.why}>"
        elif not is_scalar(space.complete(v.type.strip())):
            text = "..."
        else:
            text = printer.scalar_text(v.value, space.complete(v.type.strip()))
        out.append(f"{v.name}={text}")
    return ", ".join(out)
