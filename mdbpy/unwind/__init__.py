"""Stack unwinding: DWARF CFI (.eh_frame, .debug_frame) with a frame-pointer fallback.

unwind(session, thread) -> [Frame] is the entry point; the dcmds $c, $C, ::stack and ::stacks
(commands/core/stack.py) print its result.
"""

from mdbpy.unwind.frames import MAX_DEPTH, Frame, unwind, unwind_from_fp, unwind_regs

__all__ = ["MAX_DEPTH", "Frame", "unwind", "unwind_from_fp", "unwind_regs"]
