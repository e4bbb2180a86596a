"""::dis: disassembly in mdb's shapes (mdb_cmds.c cmd_dis), on mdbpy/disasm.py.

Which instructions: an address that is exactly a function symbol's start disassembles the
function to its symbol size; any other explicit address opens a window (`cnt` instructions
before it, the instruction at it, `cnt` after); without an address, or with -n at a function,
or called in a loop, the instruction at the address and `cnt` after it. Afterwards dot is the
address just past the last instruction shown, so a bare `::dis` goes on where the last ended.

How a line looks: `%-#32a%8T` then the instruction (sym+off: padded to 32 columns, then to the
next multiple of 8), or with -a the raw address, with -b both. On a terminal with colour allowed
(option `color`, NO_COLOR unset) the instruction is coloured by pygments' NASM lexer; on a
terminal the window's own address is bold; anything else (pipes, files, tests) gets plain text.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from mdbpy.dcmd import LOOP, NUM, Flag, Invocation, Operand, Opt, dcmd, to_number
from mdbpy.errors import MdbError, UsageError

if TYPE_CHECKING:
    from mdbpy.disasm import Insn

DEFAULT_COUNT = 10
MAX_COUNT = 1 << 16  # -n larger than this is a typo, not a request
BOLD, RESET = "\x1b[1m", "\x1b[0m"

DIS_HELP = """\
Disassemble instructions at an address (or at dot) in Intel syntax (capstone's text).

If the address is exactly the start of a function symbol, the whole function is shown (to its
symbol size). Any other address given explicitly (or any address with -w) opens a window: cnt
instructions before it, the instruction at it (bold on a terminal) and cnt after. Without an
address, in a loop, or with -n at a function start, the instruction at the address and cnt after
it are shown. A symbol name may be given as the argument instead of an address.

Direct calls and jumps name their targets (`call 0x... <scaled>`, `call 0x... <malloc@plt>`,
`<libc.so.6`free>`), and rip-relative operands the data they address (`<greeting>`). Dot is left
just past the last instruction, so a bare ::dis continues."""


@dcmd("dis", "disassemble near addr", addr="?", opts=[
    Flag("a", "raw", "show raw addresses instead of sym+off"),
    Flag("b", "both", "show both the raw address and sym+off"),
    Flag("f", "file", "read the instructions from the object file instead of memory"),
    Flag("l", "lines", "append the source file:line of each instruction (DWARF line tables, "
         "see ::whereis)"),
    Flag("w", "window", "window mode even at a function start"),
    Opt("n", "count", NUM, "cnt instructions before and after (default 10; a number in the "
        "current radix)", metavar="cnt")],
      operands=[Operand("addr", optional=True)], help=DIS_HELP, example="main::dis")
def dis(inv: Invocation):
    from mdbpy.disasm import disassemble, disassemble_range, previous  # on first use

    opts, rest = inv.opts, inv.operands
    s = inv.session
    addr = _address(inv, rest)
    explicit = inv.has_addr or bool(rest)
    count = DEFAULT_COUNT if opts.count is None else opts.count
    if count > MAX_COUNT:
        raise UsageError(f"::dis -n {count:#x} is more than {MAX_COUNT:#x} instructions")
    read = s.symbols.read_file if opts.file else s.mem.read
    window = opts.window
    end = None
    if explicit and not window:
        hit = s.symbols.lookup_addr(addr)
        if hit is not None and hit[1] == 0 and hit[0].type == "func":
            if hit[0].size and opts.count is None:
                end = addr + hit[0].size
        else:
            window = True
    if inv.flags & LOOP:
        window = False  # as mdb: a window makes no sense when called for many addresses
    if window:
        start = previous(s, addr, count, read=read)
        insns = (disassemble_range(s, start, addr, read=read)
                 + disassemble(s, addr, count + 1, read=read))
    elif end is not None:
        insns = disassemble_range(s, addr, end, read=read)
    else:
        insns = disassemble(s, addr, count + 1, read=read)
    if not any(i.address == addr for i in insns):
        raise MdbError(f"failed to read instruction at 0x{addr:x}")
    style = _Style(inv, raw=opts.raw, both=opts.both, lines=opts.lines)
    for insn in insns:
        inv.print(style.line(insn, bold=window and insn.address == addr))
    s.dot = (insns[-1].address + insns[-1].size) & ((1 << 64) - 1)


def _address(inv: Invocation, rest: list) -> int:
    """The address: the argument (a number, a symbol, or obj`symbol), else the dcmd's."""
    if len(rest) > 1:
        raise UsageError("::dis takes at most one address")
    if not rest:
        return inv.addr
    arg = rest[0]
    if isinstance(arg, int):
        return arg
    obj, _, name = arg.rpartition("`")
    sym = inv.session.symbols.lookup(name, obj or None)
    if sym is not None:
        return sym.addr
    try:
        return to_number(arg, inv.session.radix)
    except UsageError:
        raise MdbError(f"failed to dereference symbol: unknown symbol name '{arg}'") from None


class _Style:
    """How one ::dis line is printed: address column, source line, colour."""

    def __init__(self, inv: Invocation, raw: bool, both: bool, lines: bool):
        self.session = inv.session
        self.raw, self.both, self.lines = raw, both, lines
        self.tty = bool(getattr(inv.out, "isatty", lambda: False)())
        self.color = (self.tty and not os.environ.get("NO_COLOR")
                      and bool(inv.session.options.get("color", True)))
        self._pygments = None  # (lexer, formatter), made on first use

    def line(self, insn: Insn, bold: bool) -> str:
        a = insn.address
        if self.raw:
            head = f"0x{a:x}".ljust(32)
        else:
            head = f"{self.session.format_addr(a)}:".ljust(32)
            if self.both:
                head = f"0x{a:x}".ljust(16) + "  " + head
        head += " " * (-len(head) % 8)  # mdb's %8T
        comment = ""
        if self.lines:
            from mdbpy.symbols.lines import source_line_or_none

            where = source_line_or_none(self.session, a)
            if where is not None:
                comment = f"  ; {where[0]}:{where[1]}"
        body = self._highlight(insn, comment) if self.color else insn.text + comment
        return f"{BOLD}{head}{RESET}{body}" if bold and self.tty else head + body

    def _highlight(self, insn: Insn, comment: str) -> str:
        """Capstone's text through pygments' NASM lexer; the `<symbol>` suffix mdbpy adds and
        the source comment as their own token kinds (the lexer would take a backtick in
        `<libc.so.6`free>` for an error)."""
        from pygments import format as pformat
        from pygments.formatters import TerminalFormatter
        from pygments.lexers.asm import NasmLexer
        from pygments.token import Comment, Name, Whitespace

        if self._pygments is None:
            self._pygments = (NasmLexer(), TerminalFormatter())
        lexer, formatter = self._pygments
        plain = f"{insn.mnemonic} {insn.op_str}".rstrip()
        tokens = [t for t in lexer.get_tokens(plain) if t[1] != "\n"]
        suffix = insn.text[len(plain):]
        if suffix:
            tokens += [(Whitespace, " "), (Name.Label, suffix.strip())]
        if comment:
            tokens.append((Comment.Single, comment))
        return pformat(tokens, formatter).rstrip("\n")
