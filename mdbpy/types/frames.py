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

A function inlined at a frame's pc is listed as a frame of its own before the frame that holds
it (shown_frames, as gdb's bt shows it), with its own arguments and locals, evaluated in the
holding frame's context: its code runs in that frame.
"""

from __future__ import annotations

from dataclasses import dataclass

from mdbpy.errors import MdbError
from mdbpy.types.dies import _attr, is_unknown
from mdbpy.types.locations import (MASK, OPTIMIZED_OUT, FrameContext, Unavailable, as_int,
                                   evaluate, expression_at, place, read_or_unavailable)
from mdbpy.types.model import (ATE_BOOLEAN, ATE_SIGNED, ATE_SIGNED_CHAR, ATE_UNSIGNED,
                               ATE_UNSIGNED_CHAR, Array, Struct, Type)
from mdbpy.types.scopes import Scopes, call_value, calls, name_of, origin
from mdbpy.types.space import space_of
from mdbpy.types.value import Value
from mdbpy.unwind.cfi import DWARF_REGS

MAX_ENTRY_DEPTH = 8  # entry values resolved through at most this many callers
INTEGER_ENCODINGS = (ATE_BOOLEAN, ATE_SIGNED, ATE_SIGNED_CHAR, ATE_UNSIGNED, ATE_UNSIGNED_CHAR)
SIGNED_ENCODINGS = (ATE_SIGNED, ATE_SIGNED_CHAR)

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

    def base_type(self, offset: int) -> tuple[int, bool]:
        """The integer base type at offset in the function's unit (every expression this
        context evaluates is in that unit: its variables', its frame base, its call sites')."""
        cu = self.fn.die.cu
        try:
            die = cu.get_DIE_from_refaddr(cu.cu_offset + offset)
        except Exception:  # an offset outside the unit: a malformed expression
            raise Unavailable(OPTIMIZED_OUT) from None
        encoding = _attr(die, "DW_AT_encoding")
        if die.tag != "DW_TAG_base_type" or encoding not in INTEGER_ENCODINGS:
            raise Unavailable(OPTIMIZED_OUT)
        return _attr(die, "DW_AT_byte_size") or 0, encoding in SIGNED_ENCODINGS

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


@dataclass
class Shown:
    """One frame as $c and $C list it: frame `index` of the unwound stack, or (scope, the
    DW_TAG_inlined_subroutine DIE; name, the inlined function's) a function inlined into it
    at its pc. `inner` is the inlined subroutine just inside it, whose call is its source
    line (shown_line)."""

    index: int
    scope: object = None
    name: str | None = None
    inner: object = None  # the inlined subroutine DIE just inside this one, if any

    @property
    def inlined(self) -> bool:
        return self.scope is not None


def shown_frames(session, frames) -> list[Shown]:
    """The frames $c and $C list, innermost first: each unwound frame preceded by the
    functions inlined into it at its pc, innermost first (none where its DWARF cannot be
    read: the frame itself still shows)."""
    out = []
    for i, f in enumerate(frames):
        try:
            fn = _function(session, f)
            chain = fn.scopes.inlined(fn.die, fn.pc) if fn is not None else []
        except MdbError:
            chain = []
        inner = None
        for d in reversed(chain):
            out.append(Shown(i, d, _inlined_name(d), inner))
            inner = d
        out.append(Shown(i, inner=inner))
    return out


def _inlined_name(die) -> str:
    """An inlined function's name, qualified as gdb shows it (`zoo::Cat::speak`) where its
    DWARF gives a linkage name, else its plain DW_AT_name."""
    from mdbpy.symbols.demangle import function_name

    d = origin(die)
    linkage = _attr(d, "DW_AT_linkage_name") or _attr(d, "DW_AT_MIPS_linkage_name")
    if isinstance(linkage, bytes):
        return function_name(linkage.decode("utf-8", "replace"))
    return name_of(die) or "?"


def shown_line(session, frames, shown: Shown) -> tuple[str, int] | None:
    """(file, line) of a shown frame, None where the line tables do not know it: when nothing
    is inlined inside it, the line of the frame's pc (a caller's at its return address minus
    one, the call, as gdb's bt does; the innermost frame, a signal trampoline and the frame a
    signal interrupted at their exact pc: Frame.named_at), else the line of the inlined call."""
    from mdbpy.symbols.lines import source_line_or_none

    if shown.inner is None:
        return source_line_or_none(session, frames[shown.index].named_at)
    try:
        fn = _function(session, frames[shown.index])
        return fn.scopes.call_line(shown.inner) if fn is not None else None
    except MdbError:
        return None


def frame_variables(session, frames, i: int, locals_: bool = True,
                    scope=None) -> list[FrameVar] | None:
    """The arguments (in order) and, with locals_, the locals (innermost block first) of frame
    i, or of the function inlined there whose DW_TAG_inlined_subroutine DIE is scope (its
    variables' locations are evaluated in frame i: inlined code runs in its caller's frame);
    None when no DWARF describes the frame's function."""
    fn = _function(session, frames[i])
    if fn is None:
        return None
    ctx = _Context(session, frames, i, fn)
    params, local_dies = fn.scopes.variables(fn.die if scope is None else scope, fn.pc)
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
    if is_unknown(t):  # its type is in a supplementary file that is missing
        var.why = "unknown type"
        return var
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


def args_text(session, frames, i: int, limit: int | None = None, scope=None) -> str:
    """`name=value, ...` of frame i's arguments (or those of the function inlined there whose
    DIE is scope) as $C prints them between the parentheses ('' when no DWARF describes the
    function): scalars as ::print shows them, structs and arrays as `...` (gdb's bt),
    `<optimized out>` where the location does not resolve. `limit` caps how many are shown
    (mdb's $C cnt)."""
    from mdbpy.types.printer import PrintOptions, Printer

    found = frame_variables(session, frames, i, locals_=False, scope=scope) or []
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
