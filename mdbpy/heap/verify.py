"""Heap verification, the allocator-independent half: finding bytes that differ from a fill
pattern across many buffers at once, and printing a Problem.

Allocators with debug fills (red zones, poison, padding) check them the same way: read a slab
(or arena run) in one block, view it as a 2-D array of slots, and compare a column range of every
slot with the pattern in one numpy operation. mismatches() does that comparison; the allocator
module decides which ranges hold which pattern and in whose words a failure is reported.

A Problem prints in the shape of the kernel's slub_debug reports, which name the failure, the
bad range with its first wrong byte, and the stacks that allocated and freed the object:

    BUG kmalloc-64: Redzone overwritten
    INFO: 0x7f0000201048-0x7f000020104b @offset=72. First byte 0x41 instead of 0xcc
    INFO: Object 0x7f0000201008 size 64
    INFO: Allocated in parse_config+0x1c when=0x2a cpu=0 pid=101
            parse_config+0x1c
            main+0x44
"""

from __future__ import annotations

from mdbpy.heap.model import AllocRecord, Problem


def mismatches(slots, lo: int, hi: int, expected, rows=None):
    """Which slots have bytes [lo, hi) different from `expected` (one byte value, or an array
    of hi - lo bytes): (row indexes, first bad column, last bad column), numpy int arrays.

    slots is a 2-D uint8 array (one row per slot); rows, when given, restricts the check to
    those row indexes."""
    import numpy as np

    empty = np.zeros(0, np.int64)
    if hi <= lo or not len(slots):
        return empty, empty, empty
    region = slots[:, lo:hi] if rows is None else slots[rows, lo:hi]
    bad = region != np.asarray(expected, dtype=np.uint8)
    hit = np.nonzero(bad.any(axis=1))[0]
    if not len(hit):
        return empty, empty, empty
    sub = bad[hit]
    first = sub.argmax(axis=1) + lo
    last = (hi - 1) - sub[:, ::-1].argmax(axis=1)
    idx = hit if rows is None else np.asarray(rows)[hit]
    return idx.astype(np.int64), first.astype(np.int64), last.astype(np.int64)


def format_record(session, label: str, rec: AllocRecord, indent: str = "        ") -> list[str]:
    """`INFO: <label> in <caller> when=.. cpu=.. pid=..` and the stack, one frame a line."""
    caller = session.format_addr(rec.stack[0], ret=True) if rec.stack else "?"
    facts = []
    if rec.timestamp is not None:
        facts.append(f"when=0x{rec.timestamp:x}")
    if rec.cpu is not None:
        facts.append(f"cpu={rec.cpu}")
    if rec.thread is not None:
        facts.append(f"pid={rec.thread}")
    lines = [f"INFO: {label} in {caller} {' '.join(facts)}".rstrip()]
    lines += [indent + session.format_addr(pc, ret=True) for pc in rec.stack]
    return lines


def format_problem(session, p: Problem, stacks: bool = True) -> list[str]:
    """The lines reporting one Problem (see the module docstring for the shape)."""
    lines = [f"BUG {p.group}: {p.kind}"]
    if p.bad is not None:
        end = p.bad_end if p.bad_end is not None else p.bad + 1
        info = f"INFO: 0x{p.bad:x}-0x{end - 1:x} @offset={p.bad - p.addr}."
        if p.found is not None and p.expected is not None:
            info += f" First byte 0x{p.found:x} instead of 0x{p.expected:x}"
        lines.append(info)
    obj = f"INFO: Object 0x{p.addr:x}"
    if p.size:
        obj += f" size {p.size}"
    if p.note:
        obj += f": {p.note}"
    lines.append(obj)
    if stacks:
        for label, rec in p.records:
            lines += format_record(session, label, rec)
    return lines
