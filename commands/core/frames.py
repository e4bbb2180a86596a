"""A frame's values: ::frame selects a frame of the current thread, ::locals prints its
arguments and locals with their types (gdb's `frame N` and `info args` + `info locals`, in
mdb's ::print shapes). The values come from mdbpy/types/frames.py; docs/types.md shows them.

The selection is kept per thread in the session cache, so it is dropped whenever the target
changes (Session.invalidate) and a newly selected thread starts at frame 0.
"""

from __future__ import annotations

from mdbpy.dcmd import Invocation, Operand, dcmd, to_number
from mdbpy.errors import MdbError, UsageError

from .stack import _thread, frame_line, frame_name
from .types import heap_note

SELECTED = "frames.selected"  # session cache key: {tid: frame number}


def _stack(inv: Invocation):
    """(thread, its unwound frames, the frames as $C lists them: inlined functions too)."""
    from mdbpy.types.frames import shown_frames
    from mdbpy.unwind import unwind

    t = _thread(inv)
    frames = unwind(inv.session, t)
    return t, frames, shown_frames(inv.session, frames)


def selected(session, tid: int) -> int:
    """The frame ::frame selected on thread tid (0: the innermost)."""
    return session.cache.get(SELECTED, {}).get(tid, 0)


@dcmd("frame", "select a stack frame of the current thread, or show it", addr="?",
      operands=[Operand("frame", optional=True)],
      help="Select frame number `frame` of the current thread (0 is the innermost, as $C "
           "lists them, a function inlined at a frame's pc counted as a frame of its own; "
           "given as an address or an argument, in the current radix or with "
           "0t) and print its line as $C does: frame pointer, function and arguments. "
           "::locals then prints that frame's variables. Without a number, print the selected "
           "frame. The selection lasts until another thread is selected or the target changes.",
      example="::frame 2")
def frame(inv: Invocation):
    s = inv.session
    wanted = _frame_number(inv)
    t, frames, shown = _stack(inv)
    if wanted is None:
        n = min(selected(s, t.tid), len(shown) - 1)
    elif 0 <= wanted < len(shown):
        n = s.cache.setdefault(SELECTED, {})[t.tid] = wanted
    else:
        raise MdbError(f"no frame {wanted}: thread {t.tid} has frames 0 to {len(shown) - 1}")
    inv.print(frame_line(s, frames, shown[n]))


def _frame_number(inv: Invocation) -> int | None:
    """The frame number ::frame was given (as its address or its one argument), or None."""
    if len(inv.args) > 1 or (inv.args and inv.has_addr):
        raise UsageError("::frame takes one frame number")
    if inv.has_addr:
        return inv.addr
    return to_number(inv.args[0], inv.session.radix) if inv.args else None


@dcmd("locals", "print the selected frame's arguments and locals",
      help="Print the arguments, then the local variables, of the frame ::frame selected "
           "(frame 0 unless another was), each as ::print -t prints a value: `int n = 0x5`, "
           "a struct's members labelled with the variable's name (`p.a = 0x7`). Locals are "
           "those of the lexical blocks that hold the frame's pc, innermost block first, as "
           "gdb's `bt full` lists them. Values come from each variable's DWARF location at "
           "that pc: in frame 0 any register; above it only the registers the unwinder "
           "recovered (callee-saved ones, and those the CFI restores), so a value living in a "
           "caller-saved register there is `<optimized out>`, never a stale one; a "
           "DW_OP_entry_value is resolved through the caller's call site when it calls this "
           "function and says what it passed. A variable only partly known (some pieces "
           "optimized out) is shown as `<optimized out>` whole; one whose memory cannot be read "
           "as `<unreadable ADDR>`; a pointer to a value that lives in no memory "
           "(DW_OP_implicit_pointer) as `<synthetic pointer>`, as gdb says. A function "
           "inlined at the frame's pc is a frame of its own with its own variables. "
           "Functions without DWARF have nothing to show.",
      example="::frame 1; ::locals")
def locals_(inv: Invocation):
    if inv.args or inv.has_addr:
        raise UsageError("::locals takes no arguments (select the frame with ::frame)")
    from mdbpy.types.frames import frame_variables

    s = inv.session
    t, frames, shown = _stack(inv)
    n = min(selected(s, t.tid), len(shown) - 1)
    found = frame_variables(s, frames, shown[n].index, scope=shown[n].scope)
    if found is None:
        raise MdbError(f"frame {n} ({frame_name(s, frames, shown[n])}): no DWARF describes "
                       f"its function")
    from mdbpy.types.printer import PrintOptions, Printer
    from mdbpy.types.space import space_of

    space = space_of(s)
    printer = Printer(space, PrintOptions(types=True), heap_note(s))
    for v in found:
        if v.value is None:
            tn = v.type.spelled()
            inv.print(f"{tn}{'' if tn.endswith('*') else ' '}{v.name} = <{v.why}>")
        else:
            inv.print(printer.render(v.value, v.name, "."))
