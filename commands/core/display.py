"""::formats (the format characters of /, ?, =) and ::dump (hex and ASCII dump), as mdb has
them (mdb_fmt.c cmd_formats; mdb_cmds.c cmd_dump with mdb_dump.c's layout)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from mdbpy.dcmd import LOOP, NUM, PIPE, Flag, Opt, dcmd
from mdbpy.errors import CommandAbort, MdbError, UsageError

PARAGRAPH = 16
ADDR_MAX = (1 << 64) - 1

DUMP_HELP = """\
Print the bytes at the address (the repeat count, or -l, of them) as mdb's ::dump does: a header
of nibble labels, then per line the address, the bytes in groups and their ASCII."""


@dcmd("formats", "list format specifiers",
      help="Lists the format characters of the /, ?, = verbs: `c - description (size)`.",
      example="::formats")
def formats(inv):
    if inv.has_addr or inv.args:
        raise UsageError("::formats takes no address and no arguments")
    from mdbpy.lang.formats import format_table

    for line in format_table():
        inv.out.write(line + "\n")


@dataclass
class DumpStyle:
    """How ::dump lays bytes out (mdb's MDB_DUMP_* flags)."""

    group: int = 4  # bytes per group
    paragraphs: int = 1  # 16-byte paragraphs per line
    ascii: bool = True
    header: bool = True
    align: bool = True  # start lines at paragraph boundaries
    trim: bool = False  # show only the requested bytes
    squish: bool = False  # `*` for repeated lines
    relative: bool = False  # number lines from 0
    endian: bool = False  # show each group as a little-endian number
    pedant: bool = False  # full 16-digit addresses

    @property
    def width(self) -> int:
        return PARAGRAPH * self.paragraphs


def _sep(style: DumpStyle, i: int) -> str:
    """The space before a group: two before the 9th byte when grouping by single bytes."""
    if i % style.group:
        return ""
    return "  " if style.group == 1 and i and i % 8 == 0 else " "


def _header(style: DumpStyle, pad: int, mark: int) -> str:
    """The nibble labels over the columns; in aligned mode `\\/` and `v` mark the byte the
    dump was asked for, unaligned the labels start at its nibble."""
    shift = 0 if style.align else mark
    hexes, chars = [], []
    for i in range(style.width):
        marked = style.align and i == mark
        hexes.append(_sep(style, i) + ("\\/" if marked else f"{(i + shift) & 0xf:2x}"))
        chars.append("v" if marked else f"{(i + shift) & 0xf:x}")
    text = " " * pad + "  " + "".join(hexes)
    return text + ("  " + "".join(chars) if style.ascii else "")


def _data(style: DumpStyle, label: int, pad: int, buf: bytes, left: int, right: int) -> str:
    """One line: the address, the bytes (blank outside [left, width-right)), the ASCII."""
    width, group = style.width, style.group
    shown = range(left, width - right)
    parts = [f"{label:0{pad}x}: "]
    for i in range(width):
        j = group * (i // group + 1) - i % group - 1 if style.endian else i
        parts.append(_sep(style, i) + (f"{buf[j]:02x}" if i in shown else "  "))
    if style.ascii:
        parts.append("  " + "".join(
            (chr(buf[i]) if 32 <= buf[i] <= 126 else ".") if i in shown else " "
            for i in range(width)))
    return "".join(parts)


def _pad(style: DumpStyle, addr: int, length: int) -> int:
    """Hex digits for the addresses of the dump: enough for its last address (or offset)."""
    if style.pedant:
        return 16
    if length > 1 or (addr and length == 1):
        length -= 1
    last = length if style.relative else length + addr
    return (last.bit_length() + 3) // 4


def hexdump(read, addr: int, length: int, style: DumpStyle, emit) -> int:
    """Dump `length` bytes from addr through read(addr, n), calling emit(line) per line.

    Returns the address after the requested bytes (the new dot). Unreadable bytes before addr
    on the first line are left blank; any other unreadable byte ends the dump with an error
    after the lines so far have been emitted."""
    from mdbpy.disasm import read_available

    style = replace(style)
    width = style.width
    requested = length
    if length and length - 1 > ADDR_MAX - addr:
        length = ADDR_MAX - addr + 1
    if style.group & (style.group - 1) or width % style.group:
        style.group = 4
    if style.endian:
        style.align = style.header = style.ascii = False
        if style.trim:
            length -= length % style.group
    if style.relative:
        style.align = False
    left = 0 if style.relative else addr % PARAGRAPH
    pad = _pad(style, addr, length)
    offset = 0
    if style.align:
        length, addr, offset = length + left, addr - left, left
    if style.header:
        emit(_header(style, pad, left))
    if not (style.trim and style.align):
        left = 0
    prev, skipping, prev_valid = None, False, False
    i = right = 0
    failed_at = None
    while i < length and right == 0:
        buf = bytearray(width)
        if width >= length - i:  # the last line
            prev_valid = False
            if style.trim:
                right = width - (length - i)
            right = max(right, width - (ADDR_MAX - (addr + i)) - 1)
        got = left
        while got < width - right:
            data = read_available(read, addr + i + got, width - right - got)
            if data:
                buf[got:got + len(data)] = data
                got += len(data)
            elif i + got < offset:  # before the requested address: leave it blank
                left += 1
                got += 1
            else:
                failed_at = addr + i + got
                right += width - right - got
                prev_valid = False
                break
        if got == left and failed_at is not None:
            i += width
            break
        if style.squish and prev_valid and buf == prev:
            if not skipping:
                emit("*")
                skipping = True
        else:
            emit(_data(style, i if style.relative else addr + i, pad, bytes(buf), left, right))
            skipping = False
        if not left:
            prev_valid = True
        prev, left = buf, 0
        i += width
    if failed_at is not None and i - right - offset < requested:
        raise MdbError(f"failed to read data at 0x{failed_at:x}")
    return (addr + offset + requested) & ADDR_MAX


@dcmd("dump", "dump memory from specified address", addr="?", opts=[
    Flag("e", "endian", "adjust for endianness (assumes 4-byte words; use -g to change word "
         "size)"),
    Flag("f", "file", "dump from object file"),
    Flag("p", "physical", "dump from physical memory (not available on process and core "
         "targets)"),
    Flag("q", "no_ascii", "don't print ASCII"),
    Flag("r", "relative", "use relative numbering (automatically sets -u)"),
    Flag("s", "squish", "elide repeated lines"),
    Flag("t", "trim", "only read from and display contents of specified addresses (default is "
         "to read and print entire lines)"),
    Flag("u", "unaligned", "un-align output (default is to align output at paragraph "
         "boundary)"),
    Flag("v", "full", "print full-width addresses"),
    Opt("g", "group", NUM, "display bytes in groups of n (default is 4; n must be a power of 2, "
        "divide line width)", default=4, metavar="bytes"),
    Opt("l", "length", NUM, "display n bytes (default is the repeat count, else 1; rounded up "
        "to multiple of line width)", default=0, metavar="bytes"),
    Opt("w", "paragraphs", NUM, "display n 16-byte paragraphs per line (default is 1, maximum "
        "is 16)", default=1)], help=DUMP_HELP, example="main::dump -l 0t32")
def dump(inv):
    opts, rest = inv.opts, inv.operands
    if rest:
        raise UsageError("unexpected arguments: " + " ".join(map(str, rest)))
    group, paragraphs, length = opts.group, opts.paragraphs, opts.length
    count = inv.count
    if opts.file and opts.physical:
        raise UsageError("-f and -p cannot be used together")
    if not 1 <= paragraphs <= 16 or not 1 <= group <= 256:
        raise UsageError("-w takes 1 to 16 paragraphs, -g 1 to 256 bytes")
    if count > 1 and length:
        raise UsageError("give either a repeat count or -l, not both")
    if opts.physical:
        raise MdbError("physical memory is not available on this target")
    style = DumpStyle(group=group, paragraphs=paragraphs, ascii=not opts.no_ascii,
                      align=not (opts.unaligned or opts.relative), trim=opts.trim,
                      squish=opts.squish, relative=opts.relative, endian=opts.endian,
                      pedant=opts.full)
    s = inv.session
    read = s.symbols.read_file if opts.file else s.mem.read
    s.dot = hexdump(read, inv.addr, length or count, style, lambda t: inv.out.write(t + "\n"))
    if inv.flags & LOOP and not inv.flags & PIPE:
        raise CommandAbort("")  # mdb: the repeat count was the length, not a repetition
