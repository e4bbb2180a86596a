"""The arguments and locals of one stack frame, as typed values, from DWARF.

For frame i of an unwound stack (mdbpy/unwind), the function whose code holds the frame's pc
(its return address minus one above frame 0, as the frame is named) and the lexical blocks that
hold it are found with scopes.py; each parameter's and variable's location is evaluated with
locations.py in this frame's context: its registers as the unwinder recovered them (all of
them in frame 0, only the callee-saved ones and those the CFI restores above it, never a stale
caller-saved register), its CFA, the function's DW_AT_frame_base, and the target's memory. An
entry value (DW_OP_entry_value, DW_OP_GNU_parameter_ref) is asked of the caller's frame: the
call site at the caller's return address must call this very function's entry and say what it
passed in that register, and the value is then evaluated in the caller's context, as gdb does
(_Context.call_parameter); otherwise it is optimized out. An argument's value on entry
(gdb's `x@entry`) comes the same way, from its location at the function's entry (a C++
reference's from the site's DW_AT_call_data_value too); where gdb's evaluator fails with an
error there (locations.Failed), not an optimized-out value, the entry value is that error.

Between a frame and its caller, the functions that left by a tail call (a jump) are frames too
where gdb rebuilds them from the call sites (_Stack): they have no stack frame of their own, so
they take the caller's registers and the CFA of the function they jumped to.

Each variable comes back as a FrameVar: a Value (printable by printer.py), or the reason there is
none (`optimized out`, `unreadable 0x...`). commands/core/frames.py prints them (::locals,
::frame) and commands/core/stack.py the arguments in $C / ::stack -v, entry values included.

A function inlined at a frame's pc is listed as a frame of its own before the frame that holds
it (shown_frames, as gdb's bt shows it), with its own arguments and locals, evaluated in the
holding frame's context: its code runs in that frame.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from mdbpy.errors import MdbError
from mdbpy.types.dies import _attr, is_unknown
from mdbpy.types.locations import (MASK, OPTIMIZED_OUT, Failed, FrameContext, Unavailable,
                                   as_int, evaluate, expression_at, lone_register, parse,
                                   place, read_or_unavailable)
from mdbpy.types.model import (ATE_BOOLEAN, ATE_SIGNED, ATE_SIGNED_CHAR, ATE_UNSIGNED,
                               ATE_UNSIGNED_CHAR, Array, Pointer, Struct, Type)
from mdbpy.types.scopes import Scopes, call_expr, name_of, origin, site_return_pc
from mdbpy.types.space import space_of
from mdbpy.types.value import Value
from mdbpy.unwind import Frame
from mdbpy.unwind.cfi import DWARF_REGS

MAX_ENTRY_DEPTH = 8  # entry values resolved through at most this many callers
MAX_CHAIN_STEPS = 4096  # call sites a tail-call chain search visits before it gives up
ENTRY_SP = 8  # the CFA minus the sp at a function's entry (the return address, x86-64)
DW_OP_STACK_VALUE = 0x9F
INTEGER_ENCODINGS = (ATE_BOOLEAN, ATE_SIGNED, ATE_SIGNED_CHAR, ATE_UNSIGNED, ATE_UNSIGNED_CHAR)
SIGNED_ENCODINGS = (ATE_SIGNED, ATE_SIGNED_CHAR)

_scopes: dict = {}


@dataclass
class FrameVar:
    """One argument (arg True) or local of a frame: its value, or why it has none (`failed`
    when gdb would say so with an error: locations.Failed); for an argument, `entry` is its
    value on entry to the function where the caller's call site gives it (gdb's `x@entry`;
    for a C++ reference, what it referred to then, at its address), when asked for, or
    `entry_why` why not where gdb shows that as an error."""

    name: str
    type: Type
    arg: bool
    value: Value | None = None
    why: str | None = None
    entry: Value | None = None
    failed: bool = False
    entry_why: str | None = None


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

    @functools.cached_property
    def entry(self) -> int | None:
        """The function's entry address in the process (gdb's: the start of its first
        range), None when its DWARF gives it no code; read once (each argument asks)."""
        ranges = self.scopes.ranges(self.die)
        return (ranges[0][0] + self.bias) & MASK if ranges else None


def _function(session, frame) -> _Function | None:
    return _function_at(session, frame.named_at)


def _call_site(session, caller) -> tuple[_Function | None, object]:
    """(the caller frame's DWARF function, its call site at the frame's return address), each
    None when it has none."""
    cfn = _function(session, caller)
    return cfn, cfn.scopes.call_site(cfn.die, (caller.pc - cfn.bias) & MASK) if cfn else None


def _function_at(session, addr: int) -> _Function | None:
    """The DWARF function whose code holds the process address addr, or None."""
    obj = session.symbols.object_for_addr(addr)
    if obj is None:
        return None
    d = space_of(session).dwarf_of(obj)
    if d is None:
        return None
    sc = scopes_of(d)
    pc = (addr - obj.bias) & MASK
    die = sc.function_at(pc)
    return None if die is None else _Function(d, sc, die, obj.bias, pc)


def _site_pc(fn: _Function, site) -> int | None:
    """A call site's return address in the process (scopes.site_return_pc), None when it has
    none (gdb then ignores the site)."""
    at = site_return_pc(site)
    return None if not isinstance(at, int) else (at + fn.bias) & MASK


class _Stack:
    """One thread's unwound frames and, as gdb shows them, the tail-call frames between
    them: a function f that left by jumping to g (a sibling call, DW_AT_call_tail_call) has no
    frame of its own, but where the call site at g's caller's return address and the tail-call
    sites of the functions in between (gdb's call_site_find_chain) give one chain of jumps from
    that call to g, or a part of it every possible chain shares, those functions are frames:
    at the return address of their jump, with the caller's registers, the sp g had on entry
    and g's CFA (a jump keeps the caller's stack). `all` holds the frames placed so far,
    innermost first, and `at[i]` is where unwound frame i is in it: frames are placed, and the
    call sites searched for their chains, only as far as a frame is asked for (index, frame,
    tails). Entry values are resolved along `all`, so a tail-call frame's call site answers
    for the function it jumped to."""

    def __init__(self, session, frames: list[Frame]):
        self.session, self.frames = session, frames
        self._tails: dict[int, tuple] = {}  # function entry -> (its _Function, tail call sites)
        self._loops: dict[int, bool] = {}  # function entry -> may tail-call itself
        main = session.symbols.lookup("main")
        self.main = main.addr if main is not None else None
        self.all: list[Frame] = []
        self.at: list[int] = []

    def _place(self, i: int) -> None:
        """Places unwound frames up to i, each followed by its tail-call frames (none where
        the DWARF cannot be read)."""
        while len(self.at) <= min(i, len(self.frames) - 1):
            j = len(self.at)
            self.at.append(len(self.all))
            self.all.append(self.frames[j])
            try:
                self.all += self._tail_frames(j)
            except MdbError:  # unreadable DWARF: no tail-call frames here
                pass

    def index(self, i: int) -> int:
        """Where unwound frame i is in `all`."""
        self._place(i)
        return self.at[i]

    def frame(self, k: int) -> Frame | None:
        """Frame k of `all`, None past the outermost."""
        while len(self.all) <= k and len(self.at) < len(self.frames):
            self._place(len(self.at))
        return self.all[k] if k < len(self.all) else None

    def tails(self, i: int) -> list[Frame]:
        """The tail-call frames between unwound frame i and its caller, innermost first."""
        self._place(i)
        end = self.at[i + 1] if i + 1 < len(self.at) else len(self.all)
        return self.all[self.at[i] + 1:end]

    def _tail_frames(self, i: int) -> list[Frame]:
        """The tail-call frames between unwound frame i and its caller, innermost first (gdb's
        pretend_pc: the callee end of the chain, then its caller end when they differ)."""
        if i + 1 >= len(self.frames):
            return []
        f, caller = self.frames[i], self.frames[i + 1]
        callee = _start_of(self.session, f.named_at)
        if f.signal or not caller.ret or f.cfa is None or callee is None:
            return []
        found = self._chain(caller, callee)
        if found is None:
            return []
        sites, callers, callees = found
        n = len(sites)
        picked = sites[::-1] if callers == callees == n else \
            sites[n - callees:][::-1] + sites[:callers][::-1]
        sp = (f.cfa - ENTRY_SP) & MASK
        return [Frame(pc, sp, {**caller.regs, "rip": pc, "rsp": sp}, cfa=f.cfa, ret=True,
                      tail_call=True) for pc in picked]

    def _chain(self, caller: Frame, callee: int):
        """(return addresses of the tail-call sites from the call at caller's return address
        to the function at callee, callers, callees) as gdb's call_site_find_chain finds them:
        a depth-first walk of the tail-call sites of each function called, each site entered
        once per path (_advance); every path that reaches callee is a candidate, and only the
        call sites all candidates share at the caller end (callers) and at the callee end
        (callees) are kept. None where the call is direct, no chain or no shared site is
        found, or anything on the way cannot be resolved (a function without DWARF, an
        indirect tail call)."""
        fn, site = _call_site(self.session, caller)
        if site is None:
            return None
        best = None
        chain: list[tuple] = []  # (_Function, its tail call sites, index of the one taken)
        on_path: set[int] = set()
        try:
            for _ in range(MAX_CHAIN_STEPS):
                targets = self.targets(fn, site, None)
                step = None
                if callee in targets:
                    best = _intersect(best, [_site_pc(f, ss[k]) for f, ss, k in chain])
                    if best is None:
                        return None
                elif len(targets) == 1:
                    tfn, sites = self._tail_sites(targets[0])
                    step = (tfn, sites, 0) if sites else None
                else:  # a function's cold part: gdb finds no function starting there
                    return None
                fn, site = _advance(chain, on_path, step)
                if site is None:  # the walk is over, on this step or an earlier one
                    return None if best is None or not best[0] else best
        except Unavailable:
            return None
        return None  # the walk did not end within MAX_CHAIN_STEPS

    def targets(self, fn: _Function, site, ctx: FrameContext | None) -> list[int]:
        """The process addresses a call site in fn calls (Scopes.call_target): an address
        expression evaluated in the caller's context ctx (which a tail-call chain does not
        have), a declaration's symbol, a definition's entry or range starts. Raises
        Unavailable where there is no such address."""
        found = fn.scopes.call_target(site)
        if found is None or found[0] == "expr" and ctx is None:
            raise Unavailable(OPTIMIZED_OUT)
        kind, what = found
        if kind == "expr":
            return [as_int(evaluate(parse(site, what), ctx), ctx)]
        if kind == "name":
            sym = self.session.symbols.lookup(what)
            if sym is None:
                raise Unavailable(OPTIMIZED_OUT)
            return [sym.addr]
        return [(lo + fn.bias) & MASK for lo in what]

    def _tail_sites(self, addr: int) -> tuple[_Function, list]:
        """(the function whose entry is addr, its tail-call sites that have a return address):
        gdb's func_addr_to_tail_call_list. Raises Unavailable when no DWARF function starts
        at addr."""
        hit = self._tails.get(addr)
        if hit is None:
            fn = _function_at(self.session, addr)
            if fn is None or fn.entry != addr:
                hit = self._tails[addr] = (None, [])
            else:
                sites = [d for d in fn.scopes.tail_call_sites(fn.die)
                         if _site_pc(fn, d) is not None]
                hit = self._tails[addr] = (fn, sites)
        if hit[0] is None:
            raise Unavailable(OPTIMIZED_OUT)
        return hit

    def check_no_self_tail_call(self, addr: int) -> None:
        """Raises Unavailable when the function at addr may reach itself through tail calls,
        or what it tail-calls cannot be told (gdb's func_verify_no_selftailcall): its entry
        values would then be unreliable."""
        loops = self._loops.get(addr)
        if loops is None:
            loops = self._loops[addr] = self._reaches_itself(addr)
        if loops:
            raise Unavailable(OPTIMIZED_OUT)

    def _reaches_itself(self, addr: int) -> bool:
        todo, seen = [addr], set()
        try:
            while todo:
                fn, sites = self._tail_sites(todo.pop())
                for site in sites:
                    for target in self.targets(fn, site, None):
                        if target == addr:
                            return True
                        if target not in seen:
                            seen.add(target)
                            todo.append(target)
                if len(seen) > MAX_CHAIN_STEPS:
                    return True
        except Unavailable:
            return True
        return False


def _advance(chain: list[tuple], on_path: set[int], step) -> tuple:
    """The next call site of _Stack._chain's walk, as (its function, the site), (None, None)
    when the walk is over, as gdb's call_site_find_chain_1 takes it: step (the first
    tail-call site of the function just called, None where that is the callee or has none)
    when it is not on the path; otherwise the walk backtracks: it drops the site deepest on
    the path and takes that site's next sibling, when there is one and it is not on the path,
    else drops the next deepest, and so on. A site found on the path is never passed over for
    its own next sibling: the rest of its function's sites are left untried on that path."""
    while True:
        if step is not None:
            f, ss, k = step
            pc = _site_pc(f, ss[k])
            if pc not in on_path:
                on_path.add(pc)
                chain.append(step)
                return f, ss[k]
        step = None
        while step is None and chain:
            f, ss, k = chain.pop()
            on_path.discard(_site_pc(f, ss[k]))
            step = (f, ss, k + 1) if k + 1 < len(ss) else None
        if step is None:
            return None, None


def _intersect(best, chain: list[int]):
    """gdb's chain_candidate: [sites, callers, callees] kept from the candidate chains seen
    so far (the first: whole), None once no site is shared at either end."""
    if best is None:
        return [chain, len(chain), len(chain)]
    sites, callers, callees = best
    callers = next((k for k in range(min(callers, len(chain))) if sites[k] != chain[k]),
                   min(callers, len(chain)))
    callees = next((k for k in range(min(callees, len(chain)))
                    if sites[-1 - k] != chain[-1 - k]), min(callees, len(chain)))
    return None if callers == 0 and callees == 0 else [sites, callers, callees]


def _start_of(session, addr: int) -> int | None:
    """The entry of the function holding process address addr: its DWARF function's, else
    its ELF symbol's (gdb's get_pc_function_start)."""
    fn = _function_at(session, addr)
    if fn is not None:
        return fn.entry
    found = session.symbols.lookup_addr(addr)
    return found[0].addr if found else None


_last: list = []  # [the _Stack of the frames list asked about last]


def stack_of(session, frames: list[Frame]) -> _Stack:
    """The _Stack of an unwound frames list: built once for the list that the frame
    functions below are asked about again and again (every shown frame of one stack)."""
    if not _last or _last[0].frames is not frames or _last[0].session is not session:
        _last[:] = [_Stack(session, frames)]
    return _last[0]


class _Context(FrameContext):
    """Frame k of a _Stack's frames (tail-call frames included) as locations.py asks of it."""

    def __init__(self, stack: _Stack, k: int, fn: _Function, depth: int = 0):
        self.stack, self.session, self.i = stack, stack.session, k
        self.fn = fn
        self.frame = stack.frame(k)
        self.bias = fn.bias
        self.depth = depth
        self._base: int | None = None
        self._caller = None  # (function, call site, context) of the call, or its Unavailable

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

    def entry_value(self, regno: int, deref_size: int | None = None) -> int:
        """What the caller passed in register regno (with deref_size, what that pointed at:
        the site's DW_AT_call_data_value), see call_parameter."""
        param, caller = self.call_parameter("reg", regno)
        return caller.evaluate_int(param, "value" if deref_size is None else "data")

    def _calling_site(self, k: int, caller, entry: int):
        """(the caller's function, its call site that called this function, the caller's
        context): found once per context, whichever of the function's arguments asks first
        (every entry value needs the same site); raises Unavailable where there is none."""
        if self._caller is None:
            try:
                cfn, site = _call_site(self.session, caller)
                if site is None:
                    raise Unavailable(OPTIMIZED_OUT)
                ctx = _Context(self.stack, k, cfn, self.depth + 1)
                if entry not in self.stack.targets(cfn, site, ctx):
                    raise Unavailable(OPTIMIZED_OUT)
                self.stack.check_no_self_tail_call(entry)
                self._caller = (cfn, site, ctx)
            except Unavailable as e:
                self._caller = e
        if isinstance(self._caller, Unavailable):
            raise self._caller
        return self._caller

    def parameter_ref(self, offset: int) -> int:
        param, caller = self.call_parameter("param", offset)
        return caller.evaluate_int(param, "value")

    def evaluate_int(self, param, which: str) -> int:
        """A call site parameter's value (or data value) expression, evaluated here."""
        return as_int(evaluate(_call_ops(param, which), self), self)

    def call_parameter(self, kind: str, arg: int):
        """(the call site parameter that says what the caller passed in slot (kind, arg),
        the caller's context to evaluate it in), as gdb's dwarf_expr_reg_to_entry_parameter
        finds it: the caller (the next frame out, a tail-call frame too) must have a call
        site at its return address whose target is this function's entry, this function must
        not reach itself through tail calls, and the site must name the slot
        (Scopes.call_parameter). Raises Unavailable otherwise, and for main, whose caller
        gdb's backtrace does not go to (`backtrace past-main`, off by default)."""
        k = self.i + 1
        entry = self.fn.entry
        caller = self.stack.frame(k)
        if self.depth >= MAX_ENTRY_DEPTH or caller is None or self.frame.signal or \
                entry is None or entry == self.stack.main:
            raise Unavailable(OPTIMIZED_OUT)  # gdb's bt stops at main: it has no caller
        if not caller.ret:  # the caller was interrupted (a signal), not making a call
            raise Unavailable(OPTIMIZED_OUT)
        cfn, site, ctx = self._calling_site(k, caller, entry)
        param = cfn.scopes.call_parameter(site, kind, arg)
        if param is None:
            raise Unavailable(OPTIMIZED_OUT)
        return param, ctx


def location_ops(fn: _Function, die, attr: str = "DW_AT_location", pc: int | None = None):
    """The parsed expression of die's `attr` in force at the frame's pc (or at file address
    pc: a location list chooses by pc), [] when the list has none there, None when there is
    no such attribute."""
    a = die.attributes.get(attr)
    if a is None:
        return None
    if a.form == "DW_FORM_exprloc" or a.form.startswith("DW_FORM_block"):
        return parse(die, a.value)
    from elftools.dwarf.locationlists import LocationParser

    try:
        lists = LocationParser(fn.dwarf.dwarf.location_lists())
        entries = lists.parse_from_attribute(a, die.cu.header["version"], die)
    except Exception:
        raise Unavailable(OPTIMIZED_OUT) from None
    if not isinstance(entries, list):
        return parse(die, entries.loc_expr)
    base = die.cu.get_top_DIE().attributes.get("DW_AT_low_pc")
    expr = expression_at(entries, fn.pc if pc is None else pc,
                         base.value if base is not None else 0)
    return [] if expr is None else parse(die, expr)


@dataclass
class Shown:
    """One frame as $c and $C list it: frame `index` of the unwound stack; or (scope, the
    DW_TAG_inlined_subroutine DIE; name, the inlined function's) a function inlined into it
    at its pc; or (scope, a tail-call Frame: _Stack) a function that left by a tail call,
    between frame `index` and its caller. `inner` is the inlined subroutine just inside it,
    whose call is its source line (shown_line)."""

    index: int
    scope: object = None
    name: str | None = None
    inner: object = None  # the inlined subroutine DIE just inside this one, if any

    @property
    def inlined(self) -> bool:
        return self.scope is not None and not self.tail

    @property
    def tail(self) -> bool:
        return isinstance(self.scope, Frame)

    def frame(self, frames: list[Frame]) -> Frame:
        """The frame whose pc and frame pointer this one shows: its own for a tail-call
        frame, else the unwound frame (a function inlined there runs at its pc)."""
        return self.scope if self.tail else frames[self.index]


def shown_frames(session, frames) -> list[Shown]:
    """The frames $c and $C list, innermost first: each unwound frame preceded by the
    functions inlined into it at its pc, innermost first (none where its DWARF cannot be
    read: the frame itself still shows), and followed by the tail-call frames between it and
    its caller (_Stack), as gdb's bt shows them."""
    stack = stack_of(session, frames)
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
        out += [Shown(i, t) for t in stack.tails(i)]
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
        return source_line_or_none(session, shown.frame(frames).named_at)
    try:
        fn = _function(session, frames[shown.index])
        return fn.scopes.call_line(shown.inner) if fn is not None else None
    except MdbError:
        return None


def frame_variables(session, frames, i: int, locals_: bool = True, scope=None,
                    entry: bool = False) -> list[FrameVar] | None:
    """The arguments (in order) and, with locals_, the locals (innermost block first) of frame
    i, of the function inlined there whose DW_TAG_inlined_subroutine DIE is scope (its
    variables' locations are evaluated in frame i: inlined code runs in its caller's frame),
    or of the tail-call frame that scope is (Shown.scope); None when no DWARF describes the
    frame's function. With entry, each argument's entry value too (FrameVar.entry)."""
    stack = stack_of(session, frames)
    tail = isinstance(scope, Frame)
    k = stack.all.index(scope) if tail else stack.index(i)
    fn = _function(session, stack.all[k])
    if fn is None:
        return None
    ctx = _Context(stack, k, fn)
    params, local_dies = fn.scopes.variables(fn.die if scope is None or tail else scope, fn.pc)
    out = [_variable(session, ctx, fn, d, True) for d in params]
    if entry:
        for var, die in zip(out, params):
            var.entry, var.entry_why = _at_entry(session, ctx, fn, die, var)
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
        var.value, var.why, var.failed = None, str(e), isinstance(e, Failed)
    return var


def _at_entry(session, ctx: _Context, fn: _Function, die, var: FrameVar):
    """(an argument's value on entry to its function, None; or None and why gdb shows an
    error for it instead), as gdb's read_variable_at_entry and read_frame_arg tell it: its
    location at the function's entry must be one register or one DW_OP_fbreg slot, which the
    caller's call site names (_Context.call_parameter); the site's DW_AT_call_value is then
    the value, evaluated in the caller. For a reference the value is its referent as it was
    on entry: the site's DW_AT_call_data_value, at the address DW_AT_call_value gives (gdb
    shows no entry value without both). (None, None) where that fails (gdb then shows no
    entry value), and for an argument of unknown size; the evaluation's error
    (locations.Failed) is the why, except when the current value failed with the same (gdb
    shows that once)."""
    entry = fn.entry
    t = var.type.strip() if var.why != "unknown type" else None
    if entry is None or t is None:
        return None, None
    space = space_of(session)
    ref = _is_reference(t)
    try:
        size = space.complete(t.target.strip() if ref else t).size
        if not size:
            return None, None
        ops = location_ops(fn, die, pc=(entry - fn.bias) & MASK)
        n = lone_register(ops or [])
        if n is not None:
            param, caller = ctx.call_parameter("reg", n)
        elif ops and len(ops) == 1 and ops[0].op_name == "DW_OP_fbreg":
            param, caller = ctx.call_parameter("fb", ops[0].args[0])
        else:
            return None, None
        value = _call_value(param, "value", t.size if ref else size, caller)
        if ref:
            data = _call_value(param, "data", size, caller)
            return Value(space, t.target, int.from_bytes(value, "little"), data), None
    except Failed as e:
        return None, None if var.failed and var.why == str(e) else str(e)
    except (Unavailable, MdbError):
        return None, None
    return Value(space, var.type, None, value), None


def _call_value(param, which: str, size: int, caller: _Context) -> bytes:
    """The `size` bytes of a call site parameter's DW_AT_call_value (which 'value') or
    DW_AT_call_data_value ('data'), evaluated in the caller as a value, not a location (as
    gdb's dwarf_entry_parameter_to_value does); Unavailable where the site has none."""
    ops = _call_ops(param, which, [DW_OP_STACK_VALUE])
    return place(evaluate(ops, caller), size, caller)[1]


def _call_ops(param, which: str, then=()):
    """The parsed DW_AT_call_value (which 'value') or DW_AT_call_data_value ('data') of a
    call site parameter, followed by the ops `then`; Unavailable where it has none."""
    expr = call_expr(param, which)
    if expr is None:
        raise Unavailable(OPTIMIZED_OUT)
    return parse(param, [*expr, *then])


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
    DIE is scope, or of the tail-call frame scope is) as $C prints them between the
    parentheses ('' when no DWARF describes the function): scalars as ::print shows them,
    structs and arrays as `...` (gdb's bt), `<optimized out>` where the location does not
    resolve. An argument whose entry value the caller's call site gives is shown as gdb's bt
    shows it: `x=x@entry=value` when that is its value now, else `x=value, x@entry=value`;
    where gdb shows the entry value as an error, `x=value, x@entry=<why>`.
    `limit` caps how many arguments are shown (mdb's $C cnt)."""
    from mdbpy.types.printer import PrintOptions, Printer

    found = frame_variables(session, frames, i, locals_=False, scope=scope, entry=True) or []
    printer = Printer(space_of(session), PrintOptions())
    out = []
    for v in found[:limit]:
        is_ref = _is_reference(v.type)
        ref, shown = _referent(v.value) if is_ref else (False, v.value)
        now = "<" + v.why + ">" if shown is None else _arg_text(printer, shown, ref)
        if v.entry_why is not None:
            out.append(f"{v.name}={now}, {v.name}@entry=<{v.entry_why}>")
        elif v.entry is None:
            out.append(f"{v.name}={now}")
        elif shown is not None and _same_value(shown, v.entry, ref, is_ref):
            out.append(f"{v.name}={v.name}@entry={now}")
        else:
            out.append(f"{v.name}={now}, {v.name}@entry={_arg_text(printer, v.entry, is_ref)}")
    return ", ".join(out)


def _is_reference(t: Type) -> bool:
    """Whether t is a C++ reference (its value shown as gdb shows a reference's)."""
    t = t.strip()
    return isinstance(t, Pointer) and bool(t.ref)


def _referent(value: Value | None) -> tuple[bool, Value | None]:
    """(True, what a reference argument refers to) as $C shows it; (False, the reference)
    where it cannot be followed (NULL), (False, None) where it has no value."""
    if value is None:
        return False, None
    try:
        return True, value.deref()
    except MdbError:
        return False, value


def _arg_text(printer, value: Value, ref: bool) -> str:
    """One argument's value in $C: scalars as ::print shows them, structs and arrays `...`;
    with ref, value is a reference's referent, shown after its address (`@0x...: 5`) as gdb's
    bt shows a reference (a struct's still `...`)."""
    t = value.kind_
    if not is_scalar(t):
        return "..."
    try:
        text = printer.scalar_text(value, t)
    except MdbError:
        text = "<unreadable>" if value.address is None else f"<unreadable {value.address:#x}>"
    return f"@{value.address:#x}: {text}" if ref else text


def _same_value(a: Value, b: Value, ref: bool, is_ref: bool) -> bool:
    """Whether two values of one type hold the same bytes (gdb's value_contents_eq), and with
    ref, as two referents, are at the same address (gdb compares the references first); a
    value that cannot be read is not the same. A reference argument whose referent could not
    be followed (is_ref without ref: a NULL reference, a shows the reference itself) is not
    the same as its entry value b, a referent: a pointer's bytes are not a referent's."""
    if is_ref and not ref:
        return False
    try:
        return (not ref or a.address == b.address) and a.read_() == b.read_()
    except MdbError:
        return False
