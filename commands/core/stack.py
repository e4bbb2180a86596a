"""Registers, threads and stacks: $c / ::stack, $C, $r / ::regs, ::threads, ::thread, ::stacks.

The stacks come from mdbpy.unwind (DWARF CFI with a frame-pointer fallback). Frames print as mdb
prints them on amd64: `%a()` per frame for $c; $C, ::stack -v and ::stacks -v put the frame
pointer in front and fill the parentheses with the arguments, by name, from the DWARF locations
that resolve at the frame's pc (mdbpy/types/frames.py; `<optimized out>` where none does). $c,
$C, ::stack, ::stacks, ::stacks' JSON and the API's stack() list the functions inlined at a
frame's pc as frames of their own, `[inlined] name`, before it, and the functions that left by a
tail call as `[tail call] sym+off` after it (gdb's bt does), all from shown_frames; only a
piped $c keeps one pc per frame the unwinder found (an inlined function has no pc of its own: it
runs at its holder's, which the holder's entry passes on; a tail-call frame's return address is
on no stack). A stack the
unwinder could not follow to its end prints up to the last frame it trusts, followed by a
warning on stderr naming the reason.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mdbpy.dcmd import Flag, Invocation, Operand, dcmd, to_number
from mdbpy.errors import MdbError, UsageError
from mdbpy.jsonout import emit, wants_json
from mdbpy.output import radix_str
from mdbpy.target.base import signal_name
from mdbpy.symbols.demangle import readable

if TYPE_CHECKING:
    from mdbpy.unwind import Frame

FLAG_BITS = (("OF", 11), ("DF", 10), ("IF", 9), ("TF", 8), ("SF", 7), ("ZF", 6), ("AF", 4),
             ("PF", 2), ("CF", 0))
# (name, shift, mask) of the rflags system fields, in mdb's order
FLAG_FIELDS = (("id", 21, 1), ("vip", 20, 1), ("vif", 19, 1), ("ac", 18, 1), ("vm", 17, 1),
               ("rf", 16, 1), ("nt", 14, 1))


def _thread(inv: Invocation, tid: int | None = None):
    """The thread `tid`, or the current one; a one-line error when there is none."""
    s = inv.session
    threads = s.target.threads()
    if not threads:
        raise MdbError(f"{s.target.describe()} has no threads")
    if tid is None:
        return s.current_thread()
    for t in threads:
        if t.tid == tid:
            return t
    raise MdbError(f"no thread 0x{tid:x} (0t{tid}) in this target: see ::threads")


LINES = Flag("l", "lines", "end each frame with ` at file:line` where the DWARF line tables "
             "know it (the line of the call for callers, as gdb's bt shows it; see ::whereis)")
VERBOSE = Flag("v", "verbose", "print as $C does: the frame pointer in front and each frame's "
               "arguments")
CNT = Operand("cnt", "print at most cnt arguments per frame (mdb's limit)", optional=True)


def _count_arg(inv: Invocation) -> int | None:
    """mdb's `cnt`, the most arguments printed per frame (None: all)."""
    rest = inv.operands
    if len(rest) > 1:
        raise UsageError(f"{inv.name or '$c'} takes at most one argument (an argument count)")
    return to_number(rest[0], inv.session.radix) if rest else None


def _frames(inv: Invocation) -> tuple[list[Frame], str]:
    """The frames $c / $C print: from a frame pointer when an address is given, else the
    current thread's; and how to name the stack in a warning."""
    from mdbpy.unwind import unwind, unwind_from_fp  # on first use: keeps start-up fast

    if inv.has_addr:
        return unwind_from_fp(inv.session, inv.addr, _thread(inv)), f"frame 0x{inv.addr:x}"
    t = _thread(inv)
    return unwind(inv.session, t), f"thread {t.tid}"


def _print_frames(inv: Invocation, frames: list[Frame], what: str, with_fp: bool,
                  lines: bool = False, limit: int | None = None) -> None:
    """One line per frame, the functions inlined at each frame's pc as frames of their own
    (mdbpy/types/frames.py shown_frames); with_fp: $C's shape, frame pointer and arguments
    (at most `limit` of them). Piped, each unwound frame's pc once: what a pipe passes on is
    an address per frame, and an inlined function's would only repeat its holder's."""
    from mdbpy.types.frames import shown_frames

    s = inv.session
    if inv.piped_out:
        for f in frames:
            inv.print(radix_str(f.pc, s.radix, prefix=True))
    else:
        for sh in shown_frames(s, frames):
            text = frame_line(s, frames, sh, limit) if with_fp else \
                frame_name(s, frames, sh) + "()"
            if lines:
                text += _source_suffix(inv, frames, sh)
            inv.print(text)
    last = frames[-1] if frames else None
    if last is not None and last.truncated:
        s.warn(f"stack of {what} stops early: {last.truncated}")


def frame_name(session, frames: list[Frame], sh) -> str:
    """How a shown frame is named: `sym+off` as mdb names it (a C++ symbol demangled, as
    gdb's bt shows it: mdbpy/symbols/demangle.py), a tail-call frame as `[tail call] sym+off`
    at the return address of its jump, and for a function inlined there, `[inlined]
    obj`name` (it has no symbol of its own)."""
    f = sh.frame(frames)
    if sh.tail:
        return "[tail call] " + readable(session.format_addr(f.pc, f.ret))
    if not sh.inlined:
        return readable(session.format_addr(f.pc, f.ret))
    o = session.symbols.object_for_addr(f.named_at)
    return "[inlined] " + ("" if o is None or o.is_exe else f"{o.name}`") + sh.name


def frame_line(session, frames: list[Frame], sh, limit: int | None = None) -> str:
    """$C's line for a shown frame (mdbpy/types/frames.py Shown): `fp sym+off(name=value,
    ...)`. A function whose DWARF cannot be read prints `()` and a warning, not an error: the
    rest of the stack still prints."""
    from mdbpy.types.frames import args_text

    f = sh.frame(frames)
    name = frame_name(session, frames, sh)
    try:
        args = args_text(session, frames, sh.index, limit, sh.scope)
    except MdbError as e:
        session.warn(f"frame {name}: {e}")
        args = ""
    return f"{radix_str(f.fp, session.radix).zfill(16)} {name}({args})"


def _source_suffix(inv: Invocation, frames: list[Frame], sh) -> str:
    from mdbpy.types.frames import shown_line

    where = shown_line(inv.session, frames, sh)
    return f" at {where[0]}:{where[1]}" if where else ""


def thread_stack(session, t, lines: bool = False):
    """A thread's stack as data (mdbpy.results.ThreadStack): what ::stacks prints of it, for
    JSON output and the Python API, a function inlined at a frame's pc included as a frame of
    its own (name `[inlined] name`, at the pc and frame pointer of the frame holding it, line
    its own). A stack that cannot be read has error set instead."""
    from mdbpy.results import Frame as FrameResult
    from mdbpy.results import ThreadStack
    from mdbpy.types.frames import shown_frames, shown_line
    from mdbpy.unwind import unwind

    try:
        frames = unwind(session, t)
    except MdbError as e:
        return ThreadStack(t.tid, t.name, [], error=str(e))
    out = []
    for sh in shown_frames(session, frames):
        f = sh.frame(frames)
        where = shown_line(session, frames, sh) if lines else None
        out.append(FrameResult(f.pc, f.fp, frame_name(session, frames, sh),
                               *(where if where else (None, None))))
    return ThreadStack(t.tid, t.name, out, truncated=frames[-1].truncated if frames else None)


@dcmd("stack", "print stack backtrace", addr="?", opts=[LINES, VERBOSE], operands=[CNT],
      aliases=("$c",),
      help="Print the current thread's call stack, innermost frame first, one `sym+off()` per "
           "frame: frame 0 at its pc, the others at their return addresses. A return address "
           "is named after the function of its call, the symbol of pc-1 (as gdb names "
           "callers; the offset is still from the return address), so the caller of a "
           "noreturn call (abort, exit) that ends function f prints as `f+<size of f>`, not "
           "as the function after f; a signal trampoline and the pc it interrupted are named "
           "as they are. A function inlined at a frame's pc is a frame of its own, listed "
           "before the frame holding it as `[inlined] name()` (as gdb's bt shows it; so does "
           "::stacks). A function that left by a tail call (a jump to its callee) is listed "
           "after the frame it jumped to as `[tail call] sym+off()`, at the return address of "
           "its jump, where gdb rebuilds it from the DWARF call sites (see docs/types.md). "
           "Given an address, "
           "start from that frame pointer instead (as $C prints it): the walk begins with the "
           "caller of that frame. Frames are found with the DWARF call-frame information of "
           ".eh_frame and .debug_frame (the object's own or its separate debug file), falling "
           "back to the frame-pointer chain where none exists, so optimized code and glibc "
           "unwind. With -v, each frame's arguments are printed by name from the DWARF; "
           "without it the parentheses stay empty. If the "
           "stack cannot be followed to its end (unreadable memory, a cycle, 1024 frames), "
           "the frames found are printed and a warning names the reason. Piped, each frame's "
           "pc is passed on once, for the frames the unwinder found: an inlined function "
           "runs at the pc of the frame holding it and adds none. Select another thread "
           "with `tid::thread`.",
      example="$c")
def stack(inv: Invocation):
    limit = _count_arg(inv)
    frames, what = _frames(inv)
    _print_frames(inv, frames, what, with_fp=inv.opts.verbose, lines=inv.opts.lines,
                  limit=limit)


@dcmd("$C", "print stack backtrace with frame pointers", addr="?", opts=[LINES],
      operands=[CNT],
      help="As $c, with each frame's frame pointer in front: the CFA minus 16, which is where "
           "a conventional prologue saves %rbp and so equals %rbp in frame-pointer code. "
           "`addr$c` accepts these values and continues with the caller of that frame. Between "
           "the parentheses are the frame's arguments as `name=value` (at most `cnt` of them), "
           "where the function's DWARF describes them: each one's location is evaluated at the "
           "frame's pc (registers as the unwinder recovered them, the CFA, the stack; an entry "
           "value through the caller's call site), scalars print as ::print prints them, "
           "an argument's value on entry beside it where the caller's call site gives it, as "
           "gdb's bt does (`x=x@entry=0x5`, or `x=0x6, x@entry=0x5` when it changed), "
           "structs and arrays as `...` (see ::locals), and one whose location does not "
           "resolve there as `<optimized out>`. Same as ::stack -v.",
      example="$C")
def stack_fp(inv: Invocation):
    limit = _count_arg(inv)
    frames, what = _frames(inv)
    _print_frames(inv, frames, what, with_fp=True, lines=inv.opts.lines, limit=limit)


@dcmd("stacks", "print the stack of every thread", opts=[LINES, VERBOSE],
      help="For each thread, a line `THREAD <tid> (<name>)` (the name when known) followed by "
           "its stack as $c prints it (with -v as $C does), functions inlined at a frame's pc "
           "listed as `[inlined] name()` frames of their own, and a blank line. A thread "
           "whose stack cannot be read gets a one-line reason instead of frames; the others "
           "still print. In JSON each frame, inlined ones too, has its pc, frame pointer, "
           "name as printed and, with -l, file and line.",
      example="::stacks -v")
def stacks(inv: Invocation):
    opts = inv.opts
    if inv.operands:
        raise UsageError("::stacks takes only -l and -v")
    from mdbpy.unwind import unwind

    s = inv.session
    threads = s.target.threads()
    if not threads:
        raise MdbError(f"{s.target.describe()} has no threads")
    if wants_json(inv):
        died = s.target.signalled()
        emit(inv, "stacks", threads=[thread_stack(s, t, opts.lines).as_dict()
                                     for t in threads],
             signal=None if died is None else {"tid": died[0], "name": signal_name(died[1])})
        return
    for t in threads:
        inv.print(f"THREAD {t.tid} ({t.name})" if t.name else f"THREAD {t.tid}")
        try:
            frames = unwind(s, t)
        except MdbError as e:
            s.warn(f"thread {t.tid}: {e}")
        else:
            _print_frames(inv, frames, f"thread {t.tid}", with_fp=opts.verbose,
                          lines=opts.lines)
        inv.print("")


@dcmd("regs", "print general-purpose registers", addr="?", aliases=("$r",),
      help="Print the current thread's registers in mdb's amd64 layout: the general registers "
           "in pairs, the segment registers, %rip with its symbol, %rbp, %rsp, %rflags with "
           "its fields and status flags (upper case when set), then %gsbase and %fsbase. "
           "Given an address, print the registers of the thread with that id (0tTID in "
           "decimal). Each register is also a variable: `<rip`, `<rsp`, ...",
      example="$r")
def regs(inv: Invocation):
    if inv.args:
        raise UsageError("$r takes no arguments")
    s = inv.session
    t = _thread(inv, inv.addr if inv.has_addr else None)

    def reg(name: str) -> int:
        try:
            return t.regs[name]
        except KeyError:
            raise MdbError(f"thread {t.tid} has no %{name}") from None

    def q(name: str) -> str:
        return f"0x{reg(name):016x}"

    def w(name: str) -> str:
        return f"0x{reg(name):04x}"

    pairs = (("rax", "r8 "), ("rbx", "r9 "), ("rcx", "r10"), ("rdx", "r11"), ("rsi", "r12"),
             ("rdi", "r13"))
    out = [f"%{a} = {q(a)}\t%{b} = {q(b.strip())}" for a, b in pairs]
    out += [f"{'':25}\t%r14 = {q('r14')}", f"{'':25}\t%r15 = {q('r15')}", ""]
    out += [f"%cs = {w('cs')}\t%fs = {w('fs')}\t%gs = {w('gs')}",
            f"%ds = {w('ds')}\t%es = {w('es')}\t%ss = {w('ss')}", ""]
    rip = reg("rip")
    out += [f"%rip = {q('rip')} {s.format_addr(rip) if s.symbols.lookup_addr(rip) else ''}"
            .rstrip(),
            f"%rbp = {q('rbp')}", f"%rsp = {q('rsp')}", ""]
    fl = reg("eflags")
    fields = " ".join(f"{n}={(fl >> sh) & m}" for n, sh, m in FLAG_FIELDS)
    status = ",".join(n if fl >> bit & 1 else n.lower() for n, bit in FLAG_BITS)
    out += [f"%rflags = 0x{fl:08x}", f"  {fields} iopl=0x{(fl >> 12) & 3:x}",
            f"  status=<{status}>", ""]
    out += [f"%gsbase = {q('gs_base')}", f"%fsbase = {q('fs_base')}"]
    for line in out:
        inv.print(line)


def _thread_row(inv: Invocation, t, current: bool) -> str:
    try:
        pc = inv.session.format_addr(t.regs["rip"])
    except (KeyError, MdbError):
        pc = "?"
    return f"{'*' if current else ' '}{t.tid:>7} {t.name or '-':<16} {t.state or '-':<16} {pc}"


THREADS_HEADER = f" {'TID':>7} {'NAME':<16} {'STATE':<16} PC"


@dcmd("threads", "list the threads of the target",
      help="One line per thread: its id (decimal, as /proc and gdb show it), its name, its "
           "state (live: the scheduler state seen before mdbpy stopped the process; core: as "
           "recorded) and its pc as sym+off. A `*` marks the current thread, whose registers "
           "$r, $c and the register variables (<rip, ...) use; select another with "
           "`0tTID::thread`. Piped, the thread ids are passed on.",
      example="::threads")
def threads(inv: Invocation):
    if inv.args:
        raise UsageError("::threads takes no arguments")
    s = inv.session
    cur = s.current_thread()
    ts = s.target.threads()
    if inv.piped_out:
        for t in ts:
            inv.print(radix_str(t.tid, s.radix, prefix=True))
        return
    inv.print(THREADS_HEADER)
    for t in ts:
        inv.print(_thread_row(inv, t, cur is not None and t.tid == cur.tid))


@dcmd("thread", "select the current thread, or show it", addr="?",
      help="With an address, make the thread with that id current: $r, $c, $C and the "
           "register variables (<rip, <rsp, ...) then use its registers. Thread ids are "
           "numbers like any other, in the current radix: type 0t7201 for decimal 7201. "
           "Without an address, print the current thread as ::threads does.",
      example="0t7201::thread")
def thread(inv: Invocation):
    if inv.args:
        raise UsageError("::thread takes no arguments")
    s = inv.session
    if inv.has_addr:
        s.thread = _thread(inv, inv.addr).tid
        return
    t = _thread(inv)
    inv.print(THREADS_HEADER)
    inv.print(_thread_row(inv, t, True))
