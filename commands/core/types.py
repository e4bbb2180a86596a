"""mdb's type dcmds over DWARF: ::print, ::sizeof, ::offsetof, ::array, ::enum (and the typed
form of ::list, in walkers.py). Types come from mdbpy/types; this module parses the arguments
as mdb_print.c does and chooses what to print. docs/types.md is the user's page.
"""

from __future__ import annotations

from mdbpy.dcmd import NUM, Flag, Invocation, Operand, Opt, dcmd, to_number
from mdbpy.errors import MdbError, UsageError
from mdbpy.output import radix_str
from mdbpy.types.enums import common_prefix, flags_text, is_flags
from mdbpy.types.model import Array, Enum, Type
from mdbpy.types.path import follow, offset_of
from mdbpy.types.printer import PrintOptions, Printer, pipe_text
from mdbpy.types.space import TAGS, space_of
from mdbpy.types.value import Value

from .lang import bind_var
from .walkers import capped, follow_list

MASK64 = (1 << 64) - 1


def type_args(words: list) -> tuple[str, list]:
    """mdb's args_to_typename: `struct foo` (and union, enum, class) is one type argument
    made of two words; anything else is one word. Returns (type text, the rest)."""
    if not words or not isinstance(words[0], str):
        raise UsageError("a type name is needed")
    if words[0] in TAGS:
        if len(words) < 2 or not isinstance(words[1], str):
            raise MdbError(f"{words[0]} is not a valid type")
        return f"{words[0]} {words[1]}", list(words[2:])
    return words[0], list(words[1:])


def _numbers(session):
    """How an index in a member path reads: mdb's numbers in the session's radix."""
    return lambda text: to_number(text, session.radix)


def heap_note(session):
    """note(p) for Printer: ` (allocated from GROUP)` or ` (BASE+OFF, freed from GROUP)` when an
    allocator of the target owns the buffer p points into (::whatis in brief), else ''."""
    from mdbpy.heap.model import FREE

    def note(p: int) -> str:
        try:
            for a in session.allocators():
                b = a.whatis(p)
                if b is not None:
                    verb = "freed from" if b.state == FREE else "allocated from"
                    where = "" if p == b.base else f"{b.base:x}+{p - b.base:x}, "
                    return f" ({where}{verb} {b.group})"
        except MdbError:
            pass
        return ""

    return note


# -- ::print ------------------------------------------------------------------------------------

PRINT_HELP = """\
Print the value at addr as `type` (or, with no type, as the DWARF type of the global whose
symbol starts at addr: `g_config::print`; a __thread variable's symbol is the current thread's
copy). Without an address, print the type's layout (with
-a, each member's offset). Members use C syntax, `.`, `->` and `[i]` (`a.b[3].c`,
`next->value`); each named member is printed on its own, labelled with its path; a number given
as $[off] names the member at that byte offset. Piped, the value of each member (pointers and
integers) or its address (structs, arrays) is passed on.

Integers print in hex, char as 'c', char arrays as a string when printable, other arrays up to
32 elements (-l, -L), enums as `value (NAME)`, pointers as symbol+offset, a char pointer with
its string, a pointer into a heap buffer with the buffer (-n: plain hex). Afterwards dot is
addr plus the size of the type, so `addr::print T; ::print T` prints the next one."""


@dcmd("print", "print the contents of a data structure", addr="?", opts=[
    Flag("a", "addrs", "show the address (offset without addr) of each member"),
    Flag("C", "no_string_limit", "no limit on character arrays printed as strings"),
    Flag("d", "dec", "integers in decimal"),
    Flag("h", "holes", "show holes (padding) in structs"),
    Flag("i", "immediate", "the address is the value itself (immediate data of the type)"),
    Flag("L", "no_array_limit", "no limit on array elements"),
    Flag("n", "plain", "pointers as plain hex"),
    Flag("p", "physical", "physical address (not available: no kernel target)"),
    Flag("T", "base_types", "show each member's type and its base type"),
    Flag("t", "types", "show each member's type"),
    Flag("x", "hex", "integers in hex (the default; overrides -d)"),
    Opt("c", "string_limit", NUM, "print character arrays of at most lim chars as strings "
        "(default 1024)", metavar="lim"),
    Opt("l", "array_limit", NUM, "print at most lim array elements (default 32)", metavar="lim"),
    Opt("s", "depth", NUM, "print nested structs and arrays to this depth only")],
      operands=[Operand("type", optional=True),
                Operand("member|offset", optional=True, repeat=True)],
      help=PRINT_HELP, example="addr::print struct node next->value")
def print_(inv: Invocation):
    opts, rest = inv.opts, inv.operands
    s = inv.session
    if opts.physical:
        raise MdbError("-p: physical addresses exist only in a kernel target")
    if rest and isinstance(rest[0], str) and rest[0][:1] in "+-":
        raise UsageError(f"unexpected argument '{rest[0]}'")
    space = space_of(s)
    immediate = opts.immediate
    t, members = _print_type(inv, space, rest, immediate)
    popts = _print_options(opts, inv.has_addr)
    if immediate:
        size = t.strip().size or 0
        v = Value(space, t, None, (inv.addr & MASK64).to_bytes(8, "little")[:size].ljust(size,
                                                                                       b"\0"))
    else:
        v = Value(space, t, inv.addr if inv.has_addr else 0)
    printer = Printer(space, popts, heap_note(s) if popts.symbolic else None)
    for arg in members or [None]:
        target, prefix, suffix = _member(v, arg, s) if arg is not None else (v, None, "")
        if inv.piped_out:
            inv.out.write(pipe_text(target, space.complete(target.type.strip()), popts,
                                    s.radix) + "\n")
        else:
            inv.out.write(printer.render(target, prefix, suffix) + "\n")
    size = t.strip().size
    if inv.has_addr and size:
        s.dot = (inv.addr + size) & MASK64
    return 0


def _print_type(inv: Invocation, space, rest: list, immediate: bool) -> tuple[Type, list]:
    """(the type, the member arguments): the type named first, else the DWARF type of the
    global whose symbol starts at addr, as mdb's cmd_print chooses."""
    if rest and isinstance(rest[0], str):
        text, after = type_args(rest)
        t = space.find(text)
        if t is not None:
            return t, after
        if not inv.has_addr or immediate or rest[0] in TAGS:
            raise MdbError(f"failed to look up type {text}: no such type in the target's DWARF")
        hit = space.symbol_type(inv.addr)
        if hit is None:
            raise MdbError(f"failed to look up type {text}: no such type in the target's DWARF")
        return hit[0], rest
    if not inv.has_addr or immediate:
        raise UsageError("a type is needed without an address" if not inv.has_addr
                         else "-i needs a type")
    hit = space.symbol_type(inv.addr)
    if hit is None:
        sym = inv.session.symbols.lookup_addr(inv.addr)
        if sym is None or sym[1]:
            raise MdbError(f"no symbol information for {inv.session.format_addr(inv.addr)}")
        raise MdbError(f"no type data available for {sym[0].name}")
    return hit[0], rest


def _print_options(opts, values: bool) -> PrintOptions:
    o = PrintOptions(addr=opts.addrs, types=opts.types or opts.base_types,
                     base_types=opts.base_types, hex=opts.hex, dec=opts.dec and not opts.hex,
                     symbolic=not opts.plain, holes=opts.holes, values=values)
    if opts.string_limit is not None:
        o.string_limit = opts.string_limit
    if opts.no_string_limit:
        o.string_limit = None
    if opts.array_limit is not None:
        o.array_limit = opts.array_limit
    if opts.no_array_limit:
        o.array_limit = None
    if opts.depth is not None:
        o.max_depth = opts.depth
    return o


def _member(v: Value, arg, session) -> tuple[Value, str, str]:
    """(the member's value, the label ::print gives it, the joint before its members' names)."""
    if isinstance(arg, int):  # $[off]: the member at that byte offset
        return _member_at(v, arg)
    target, last_deref = follow(v, arg, _numbers(session), session.warn)
    is_sou = target.kind_.is_struct()
    if last_deref and is_sou:
        return target, arg[:arg.rindex("[")], "->"
    return target, arg, "." if is_sou else ""


def _member_at(v: Value, off: int) -> tuple[Value, str, str]:
    """The member at byte offset off (mdb's $[off] argument): the outermost one that starts
    there, looking into the struct or union member that holds off when none starts there."""
    path, left = [], off
    while v.kind_.is_struct():
        hit = next((m for m in v.kind_.members
                    if m.offset is not None and not m.is_bitfield and
                    m.offset <= left < m.offset + (m.type.strip().size or 1)), None)
        if hit is None:
            break
        left -= hit.offset
        v = v.member_value_(hit)
        if hit.name:
            path.append(hit.name)
        if left == 0 and hit.name:
            return v, ".".join(path), "." if v.kind_.is_struct() else ""
    raise MdbError(f"invalid offset {off:x}")


# -- ::sizeof, ::offsetof -----------------------------------------------------------------------

def _type_first(inv: Invocation) -> tuple[str, list]:
    """The type argument of a dcmd that takes no address, and the arguments after it."""
    if inv.has_addr:
        raise UsageError(f"::{inv.name} takes no address")
    return type_args(inv.args)


@dcmd("sizeof", "print the size of a type", operands=[Operand("type")],
      help="Print `sizeof (type) = size` (in the output radix, with its prefix), from the "
           "target's DWARF. Piped, just the size. The type may be `struct x`, `union x`, "
           "`enum x`, a typedef or base type name, with `*` or `[N]` after it, and "
           "``obj`name`` to look in one object.",
      example="::sizeof struct malloc_state")
def sizeof(inv: Invocation):
    text, rest = _type_first(inv)
    if rest:
        text = " ".join([text, *map(str, rest)])  # `unsigned long`, `struct node *`
    t = space_of(inv.session).lookup(text)
    size = t.strip().size
    if size is None:
        raise MdbError(f"{text} has no size (an incomplete type, a function or void)")
    r = radix_str(size, inv.session.radix, prefix=True)
    inv.out.write(f"{r}\n" if inv.piped_out else f"sizeof ({text}) = {r}\n")
    return 0


@dcmd("offsetof", "print the offset of a member of a type",
      operands=[Operand("type"), Operand("member")],
      help="Print `offsetof (type, member) = off` and the member's size, from the target's "
           "DWARF; a bitfield's offset is `byte.bit`. The member may be a path of `.` and "
           "`[i]` (`u.x`, `arr[2].y`). Piped, just the byte offset.",
      example="::offsetof struct malloc_state top")
def offsetof(inv: Invocation):
    text, rest = _type_first(inv)
    if len(rest) != 1 or not isinstance(rest[0], str):
        raise UsageError("::offsetof needs a type and one member")
    member = rest[0]
    space = space_of(inv.session)
    t = space.lookup(text)
    bits, mv = offset_of(t, member, space, _numbers(inv.session))
    radix = inv.session.radix
    if inv.piped_out:
        if bits % 8:
            raise MdbError(f"member {member} of type {text} is not byte-aligned")
        inv.out.write(radix_str(bits // 8, radix, prefix=True) + "\n")
        return 0
    line = f"offsetof ({text}, {member}) = {radix_str(bits // 8, radix, prefix=True)}"
    if bits % 8:
        line += f".{radix_str(bits % 8, radix)}"
    size = mv.type.strip().size
    if size:
        line += f", sizeof (...->{member}) = {radix_str(size, radix, prefix=True)}"
    inv.out.write(line + "\n")
    return 0


# -- ::array ------------------------------------------------------------------------------------

@dcmd("array", "print the address of each element of an array", addr=":",
      operands=[Operand("type count", optional=True), Operand("variable", optional=True)],
      help="Print the address of each of count elements of `type` from addr (in the output "
           "radix), for a pipeline. Without a type, addr must be a global array, whose DWARF "
           "type gives the element size and count. With a variable, each address also sets "
           "it as it travels down the pipeline.",
      example="g_nodes::array struct node 4 | ::print struct node value")
def array(inv: Invocation):
    if not inv.has_addr:
        raise UsageError("::array needs an address")
    space = space_of(inv.session)
    args = list(inv.args)
    if len(args) >= 2:
        text, rest = type_args(args)
        if not rest:
            raise UsageError("::array needs a count after the type")
        size = space.lookup(text).strip().size
        if not size:
            raise MdbError(f"{text} has no size")
        count = to_number(rest[0], inv.session.radix)
        rest = rest[1:]
    else:
        hit = space.symbol_type(inv.addr)
        t = hit[0].strip() if hit is not None else None
        if not isinstance(t, Array) or not t.count or not t.element.strip().size:
            raise MdbError(f"no symbol information for {inv.session.format_addr(inv.addr)}")
        size, count, rest = t.element.strip().size, t.count, args
    if len(rest) > 1 or (rest and not isinstance(rest[0], str)):
        raise UsageError("too many arguments")
    var = rest[0] if rest else None
    if var is not None:
        bind_var(inv, var)
    s = inv.session
    for i in range(count):
        addr = (inv.addr + i * size) & MASK64
        if var is not None:
            s.vars[var] = addr
        inv.out.write(radix_str(addr, s.radix) + "\n")
    return 0


def list_offset(session, args: list) -> tuple[int, str | None]:
    """For ::list's typed form (`addr::list type member [var]`): the byte offset of the next
    member and the variable, checked as mdb checks them (a word-aligned member)."""
    text, rest = type_args(args)
    if not rest or len(rest) > 2 or not all(isinstance(a, str) for a in rest):
        raise UsageError("::list needs a type, its next member and optionally a variable")
    space = space_of(session)
    bits, mv = offset_of(space.lookup(text), rest[0], space, _numbers(session))
    if bits % 64:
        raise MdbError(f"{rest[0]} is not a word-aligned member")
    return bits // 8, (rest[1] if len(rest) == 2 else None)


# -- ::enum -------------------------------------------------------------------------------------

@dcmd("enum", "print an enumeration", addr="?",
      opts=[Flag("e", "strip", "remove the names' common prefix"),
            Flag("x", "hex", "values in hexadecimal")],
      operands=[Operand("enum"), Operand("name|value", optional=True)],
      help="Without an address or a second argument, print every value of the enumeration "
           "and its name. With an address (or a number after the enum), print the name of that "
           "value; with a name, its value. An enum of flags (every value 0 or a power of two) "
           "prints in hex and decodes a value into the names of its bits.",
      example="::enum -e flags")
def enum(inv: Invocation):
    opts = inv.opts
    text, rest = type_args(inv.operands)
    space = space_of(inv.session)
    if " " not in text:  # an enum tag first, then a typedef
        t = space.find(f"enum {text}")
        if t is not None:
            text = f"enum {text}"
        else:
            t = space.find(text)
        if t is None:
            raise MdbError(f"failed to look up types 'enum {text}', '{text}'")
    else:
        t = space.lookup(text)
    e = space.complete(t.strip())
    if not isinstance(e, Enum):
        raise MdbError(f"'{text}': not an enumeration")
    if len(rest) > 1:
        raise UsageError("too many arguments")
    if rest and inv.has_addr:
        raise UsageError("may only specify one of: name, address")
    want_value = inv.addr if inv.has_addr else rest[0] if rest and isinstance(rest[0], int) \
        else None
    want_name = rest[0] if rest and isinstance(rest[0], str) else None
    if want_value is not None and e.signed and want_value >> 63:
        want_value -= 1 << 64
    flags = is_flags(e)
    hexa = opts.hex or flags
    pretty = not inv.piped_out
    if pretty and inv.header:
        inv.out.write(("%8s %s" if hexa else "%11s %s") % ("VALUE", "NAME") + "\n")
    if want_value is not None and flags:
        inv.out.write(_enum_row(want_value, flags_text(e, want_value, opts.strip),
                                hexa, pretty, inv.session.radix, e.size))
        return 0
    plen = len(common_prefix([n for n, _ in e.enumerators])) if opts.strip else 0
    found = False
    for name, value in e.enumerators:
        if (want_name is not None and name != want_name) or (
                want_value is not None and value != want_value):
            continue
        found = True
        inv.out.write(_enum_row(value, name[plen:] if len(name) > plen else name, hexa, pretty,
                                inv.session.radix, e.size))
    if not found and (want_name is not None or want_value is not None):
        what = f'name "{want_name}"' if want_name is not None else f"value {want_value:#x}"
        raise MdbError(f"{what} not in '{text}'")
    return 0


def _enum_row(value: int, name: str, hexa: bool, pretty: bool, radix: int, size: int) -> str:
    """One row of ::enum: `%11d NAME` (`%8x NAME` in hex); piped, the value alone, as the
    enum's unsigned bits."""
    if not pretty:
        return radix_str(value & ((1 << 8 * size) - 1), radix, prefix=True) + "\n"
    number = f"{value & 0xFFFFFFFF:8x}" if hexa else f"{value:11d}"
    return f"{number} {name}\n"


@dcmd("list", "walk a linked list through the next pointer at an offset", addr=":",
      opts=[Opt("o", "offset", NUM, "the next pointer's byte offset (default 0)", default=0),
            Opt("n", "max", NUM, "at most this many elements (without it, ::set -o "
                "walklimit=N caps the walk, with a note)")],
      operands=[Operand("type member", optional=True), Operand("variable", optional=True)],
      example="*list_head::list struct node next | ::print struct node value", help="""\
Print addr and every element of the singly linked list that starts there, following the
pointer at byte offset -o of each element, or, as mdb's typed form
`addr::list type member [variable]`, at the member `member` of `type` (from DWARF; with a
variable, each element also sets it as it travels down the pipeline). The walk stops at NULL,
at an element already visited, or at an unreadable pointer (an error). Piped, each address is
passed on.""")
def list_dcmd(inv):
    if not inv.has_addr:
        raise UsageError("::list needs a starting address")
    offset, var = inv.opts.offset, None
    if inv.operands:  # the typed form
        offset, var = list_offset(inv.session, inv.operands)
        if var is not None:
            bind_var(inv, var)
    elements = follow_list(inv.session, inv.addr, offset, inv.opts.max)
    for a in elements if inv.opts.max is not None else capped(inv.session, elements):
        if var is not None:
            inv.session.vars[var] = a
        inv.out.write(radix_str(a, inv.session.radix, prefix=True) + "\n")
