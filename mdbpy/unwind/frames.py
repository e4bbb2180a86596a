"""The unwinder: a thread's registers -> its call frames, innermost first.

Each step looks up the CFI row for the frame's pc in the load object that contains it
(session.symbols.object_for_addr; the kernel's vDSO, which is no file, from the target's memory)
and computes the CFA and the caller's registers from it. Where
no CFI covers a pc it follows the frame-pointer chain instead ([rbp] is the caller's rbp,
[rbp+8] the return address). For every frame but the innermost, and except right above a signal
frame, the pc is a return address, so the row is looked up at pc-1: a call that ends a function
(noreturn) leaves a return address past the function's end. Each Frame says which kind its pc
is (`ret`), so that its printers name it the same way (Frame.named_at).

Target memory is untrusted: the walk stops and marks the last frame `truncated` with the reason
on an unreadable address, a pc outside executable memory, a frame address that does not
increase (a cycle), or MAX_DEPTH frames. It ends cleanly, not truncated, at pc 0 or where the CFI
says the return address is undefined (_start, clone3).
"""

from __future__ import annotations

from dataclasses import dataclass

from mdbpy.errors import MdbError, ReadError
from mdbpy.symbols.table import named_at
from mdbpy.unwind.cfi import (DWARF_REGS, MASK, RA, UnwindError, cfi_for, eval_expr,
                              vdso_cfi)

MAX_DEPTH = 1024
CALLEE_SAVED = ("rbx", "rbp", "r12", "r13", "r14", "r15")  # preserved across calls (psABI)


@dataclass
class Frame:
    """One frame: its pc (a return address except innermost), its registers as far as they are
    known (callee-saved ones carry over; caller-saved ones are lost above frame 0), the CFA
    once its caller was found, and why the walk stopped here if it stopped early."""

    pc: int
    sp: int
    regs: dict
    cfa: int | None = None
    truncated: str | None = None
    signal: bool = False  # the frame is a signal trampoline (its caller was interrupted)
    ret: bool = False  # pc is a return address: named by the call before it (pc-1)
    tail_call: bool = False  # rebuilt from call sites (mdbpy/types/frames.py), not unwound

    @property
    def named_at(self) -> int:
        """The address that names this frame (its symbol, its source line): pc-1 for a return
        address, else pc (mdbpy.symbols.table.named_at)."""
        return named_at(self.pc, self.ret)

    @property
    def fp(self) -> int:
        """mdb's frame pointer column: CFA-16, where a conventional prologue saves rbp (so it
        equals rbp in frame-pointer code); the frame's rbp when the CFA is unknown."""
        if self.cfa is not None:
            return (self.cfa - 16) & MASK
        return self.regs.get("rbp", 0)


def unwind(session, thread, max_depth: int = MAX_DEPTH) -> list[Frame]:
    """The frames of a Thread (mdbpy.target.base.Thread), innermost first."""
    try:  # a register-less thread's regs may raise its own one-line reason instead
        thread.regs["rip"], thread.regs["rsp"]
    except KeyError:
        raise MdbError(f"no registers for thread {thread.tid}") from None
    return unwind_regs(session, thread.regs, max_depth=max_depth)


def unwind_from_fp(session, fp: int, thread=None) -> list[Frame]:
    """mdb's `addr$c`: the frames above the frame whose frame pointer is `fp`.

    When `fp` is the frame pointer of one of `thread`'s frames (as $C prints it), the walk
    continues from that frame with every register it recovered; otherwise `fp` is taken as a
    saved-rbp slot: the return address at fp+8, the caller's rbp at fp, its sp at fp+16.
    """
    if thread is not None and "rip" in thread.regs:
        frames = unwind(session, thread)
        for i, f in enumerate(frames):
            if f.cfa is not None and f.fp == fp:
                return frames[i + 1:]
    mem = session.mem
    regs = {"rip": mem.read_u64(fp + 8), "rsp": (fp + 16) & MASK, "rbp": mem.read_u64(fp)}
    return unwind_regs(session, regs, exact_pc=False)


def unwind_regs(session, regs: dict, exact_pc: bool = True,
                max_depth: int = MAX_DEPTH) -> list[Frame]:
    """The frames from a register set. `exact_pc` is False when rip is a return address."""
    regs = {k: v & MASK for k, v in regs.items()}
    frames: list[Frame] = []
    seen: set[tuple[int, int]] = set()
    exact = exact_pc
    while True:
        f = Frame(regs["rip"], regs.get("rsp", 0), regs, ret=not exact)
        frames.append(f)
        mapping = session.mem.mapping_at(f.pc)
        if mapping is None or not mapping.executable:
            f.truncated = f"pc 0x{f.pc:x} is not in executable memory"
            break
        try:
            step = _step(session, regs, exact)
        except ReadError as e:
            f.truncated = f"cannot read the stack at 0x{e.addr:x}"
            break
        except UnwindError as e:
            f.truncated = str(e)
            break
        if step is None:
            break
        f.cfa, caller, f.signal = step
        if f.signal:  # a trampoline's pc is where the handler returns: its first instruction
            f.ret = False
        if caller is None:
            break
        f.truncated = _implausible(f, frames[-2] if len(frames) > 1 else None, seen)
        if f.truncated:
            break
        if caller.get("rip", 0) == 0:
            break
        if len(frames) >= max_depth:
            f.truncated = f"stopped at the maximum depth of {max_depth} frames"
            break
        regs = caller
        exact = f.signal
    return frames


def _implausible(f: Frame, prev: Frame | None, seen: set) -> str | None:
    """Why the caller found for `f` cannot be trusted, or None. A CFA is above the frame's sp
    and above the previous frame's CFA, except across a signal frame (sigaltstack)."""
    if prev is not None and prev.signal:
        if (f.pc, f.cfa) in seen:
            return f"frame 0x{f.fp:x} repeats: the stack has a cycle"
    elif f.cfa <= f.sp or (prev is not None and f.cfa <= prev.cfa):
        return f"frame address 0x{f.cfa:x} does not increase: corrupt stack or a cycle"
    seen.add((f.pc, f.cfa))
    return None


def _row(session, addr: int):
    obj = session.symbols.object_for_addr(addr)
    if obj is not None:
        cfi, bias = cfi_for(session, obj), obj.bias
    else:
        cfi, bias = vdso_cfi(session, addr) or (None, 0)
    return cfi.row((addr - bias) & MASK) if cfi is not None else None


def _step(session, regs: dict, exact: bool):
    """(CFA, caller's registers, is-signal-frame) for the frame `regs`; the caller is None at
    the outermost frame (return address undefined), and the whole result None at the end of a
    frame-pointer chain."""
    pc = regs["rip"]
    row = _row(session, pc if exact else pc - 1)
    if row is None:
        return _fp_step(session.mem, regs)
    mem = session.mem

    def reg(n: int) -> int:
        name = DWARF_REGS[n] if 0 <= n < len(DWARF_REGS) else f"#{n}"
        if name not in regs:
            raise UnwindError(f"unwinding 0x{pc:x} needs %{name}, unknown in this frame")
        return regs[name]

    if row.cfa_expr is not None:
        cfa = eval_expr(row.cfa_expr, reg, mem.read_u64)
    elif row.cfa_reg is not None:
        cfa = (reg(row.cfa_reg) + row.cfa_offset) & MASK
    else:
        raise UnwindError(f"the CFI for 0x{pc:x} defines no CFA")
    ra = row.rules.get(RA)
    if ra is None or ra[0] == "undefined":
        return cfa, None, row.signal
    caller = {n: regs[n] for n in CALLEE_SAVED if n in regs}
    caller["rsp"] = cfa
    for regno, (kind, arg) in row.rules.items():
        if not 0 <= regno < len(DWARF_REGS):
            continue  # vector and other registers: not tracked
        name = DWARF_REGS[regno]
        if kind == "undefined":
            caller.pop(name, None)
        elif kind == "same":
            if name in regs:
                caller[name] = regs[name]
        elif kind == "offset":
            caller[name] = mem.read_u64((cfa + arg) & MASK)
        elif kind == "val_offset":
            caller[name] = (cfa + arg) & MASK
        elif kind == "register":
            caller[name] = reg(arg)
        elif kind == "expr":
            caller[name] = mem.read_u64(eval_expr(arg, reg, mem.read_u64, (cfa,)))
        else:  # val_expr
            caller[name] = eval_expr(arg, reg, mem.read_u64, (cfa,))
    return cfa, caller, row.signal


def _fp_step(mem, regs: dict):
    """The frame-pointer chain, for code without CFI; rbp 0 ends the chain (as _start sets)."""
    rbp = regs.get("rbp", 0)
    if rbp == 0:
        return None
    return ((rbp + 16) & MASK,
            {"rbp": mem.read_u64(rbp), "rip": mem.read_u64((rbp + 8) & MASK),
             "rsp": (rbp + 16) & MASK},
            False)
