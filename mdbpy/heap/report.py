"""The text of ::findleaks: mdb's three leak tables (leaky_subr.c), the -d long forms, the -v
statistics (leaky.c), and a progress bar for long scans (prompt_toolkit's).

Leak groups fall into mdb's leak types, printed in this order: MMAP, SBRK and oversize (one
table, `BYTES LEAKED VMEM_SEG CALLER`), buffers without an allocation record (`CACHE LEAKED
BUFFER CALLER`, caller `?`), buffers with one (`CACHE LEAKED BUFCTL CALLER`, the record address
as BUFCTL and the first frame outside the allocator as caller). Within a type, groups sort by the
caller's name, then its pc, then the cache (mdb's leaky_subr_bufctl_cmp).

mdbpy's addition: each -d long form ends with the group's *unreferenced* members, the leaked
buffers no other leaked buffer points to: the heads of leaked structures, where a fix starts.
"""

from __future__ import annotations

import sys
import time

from mdbpy.heap.leaks import Leak, LeakGroup, LeakReport
from mdbpy.heap.model import KIND_MMAP, KIND_OVERSIZE, KIND_SBRK, AllocRecord
from mdbpy.symbols.demangle import readable
from mdbpy.types.graph import known_type

T_MMAP, T_SBRK, T_VMEM, T_CACHE, T_UMEM = range(5)
RULE = "-" * 72
HEADS_SHOWN = 16  # unreferenced members listed per group in -d


def leak_type(g: LeakGroup) -> int:
    if g.kind == KIND_MMAP:
        return T_MMAP
    if g.kind == KIND_SBRK:
        return T_SBRK
    if g.kind == KIND_OVERSIZE:
        return T_VMEM
    return T_UMEM if g.rep.record is not None else T_CACHE


def ctl_addr(leak: Leak) -> int:
    """What mdb calls the leak's control address: the record (bufctl, track), else the buffer."""
    if leak.record is not None and leak.record.addr:
        return leak.record.addr
    return leak.ctl or leak.addr


def caller(alloc, stack) -> int:
    """The first frame not inside the allocator; the last frame if all are; 0 without one."""
    for pc in stack:
        if not alloc.stack_skip(pc):
            return pc
    return stack[-1] if stack else 0


class Entry:
    """A leak group with what the tables print about it."""

    def __init__(self, session, group: LeakGroup):
        self.group = group
        self.type = leak_type(group)
        rep = group.rep
        self.stack = rep.record.stack if rep.record is not None else ()
        self.caller = caller(group.alloc, self.stack)
        # C++ callers as gdb's bt names them (demangled, without parameters)
        self.caller_name = readable(session.format_addr(self.caller, True)).rsplit("+0x", 1)[0] \
            if self.caller else ""
        self.cache_addr = group.alloc.group_addr(group.table, rep.index)
        # CALLER as the tables print it: mdb's %a (of 0, "0": a record with no frames), or
        # `?` where there is no record
        self.caller_text = readable(session.format_addr(self.caller, True)) if self.caller \
            else "0" if rep.record is not None else "?"
        typed = known_type(session, rep.addr)  # where ::typegraph knows it
        self.type_text = typed.spelled if typed is not None else ""

    def sort_key(self):
        data = self.cache_addr if self.type in (T_CACHE, T_UMEM) else self.group.rep.size
        return (self.type, self.caller_name, self.caller, data, self.group.rep.addr)

    def matches(self, session, addr: int | None) -> bool:
        """addr::findleaks: a pc of the stack, or the start of a frame's function."""
        if addr is None:
            return True
        for pc in self.stack:
            if pc == addr:
                return True
            hit = session.symbols.lookup_addr(pc, ret=True)
            if hit is not None and hit[0].addr == addr:
                return True
        return False


def entries(session, report: LeakReport, addr: int | None = None) -> list[Entry]:
    out = [Entry(session, g) for g in report.groups]
    out = [e for e in out if e.matches(session, addr)]
    out.sort(key=Entry.sort_key)
    return out


def _total(n: int, noun: str, nbytes: int) -> str:
    return (f"{'Total':>16s} {n:7d} {noun}{'' if n == 1 else 's'}, "
            f"{nbytes} byte{'' if nbytes == 1 else 's'}")


def sizes(g: LeakGroup) -> str:
    """A group's member size, or `min-max` when they differ (mdb's oversize rows and -d)."""
    lo, hi = min(m.size for m in g.members), max(m.size for m in g.members)
    return str(lo) if lo == hi else f"{lo}-{hi}"


def tables(ents: list[Entry]) -> list[str]:
    """The three tables (each only when it has rows), separated by blank lines."""
    lines: list[str] = []
    big = [e for e in ents if e.type in (T_MMAP, T_SBRK, T_VMEM)]
    if big:
        lines.append(f"{'BYTES':<16s} {'LEAKED':>7s} {'VMEM_SEG':>16s} CALLER")
        n = nbytes = 0
        for e in big:
            g = e.group
            if e.type == T_VMEM:
                lines.append(f"{sizes(g):<16s} {g.count:7d} {ctl_addr(g.rep):16x} "
                             f"{e.caller_text}")
            else:
                nm = "MMAP" if e.type == T_MMAP else "SBRK"
                for k, m in enumerate(g.members):  # mdb's quirk: a row per member
                    lines.append(f"{m.size:<16d} {g.count if k == 0 else 1:7d} "
                                 f"{m.addr:16x} {nm}")
            n += g.count
            nbytes += g.bytes
        lines += [RULE, _total(n, "oversized leak", nbytes)]
    for typ, col in ((T_CACHE, "BUFFER"), (T_UMEM, "BUFCTL")):
        rows = [e for e in ents if e.type == typ]
        if not rows:
            continue
        if lines:
            lines.append("")
        # a TYPE column only when the typegraph knows some representative's type
        tw = max((len(e.type_text) for e in rows), default=0)
        tcol = f"{'TYPE':<{max(tw, 4)}s} " if tw else ""
        lines.append(f"{'CACHE':<16s} {'LEAKED':>7s} {col:>16s} {tcol}CALLER")
        n = nbytes = 0
        for e in rows:
            g = e.group
            shown = g.rep.addr if typ == T_CACHE else ctl_addr(g.rep)
            ty = f"{e.type_text or '-':<{max(tw, 4)}s} " if tw else ""
            lines.append(f"{e.cache_addr:016x} {g.count:7d} {shown:016x} {ty}{e.caller_text}")
            n += g.count
            nbytes += g.bytes
        lines += [RULE, _total(n, "buffer", nbytes)]
    return lines


def record_block(session, rec: AllocRecord, buf: int, cache: int) -> list[str]:
    """A record in the shape of mdb's `::bufctl -v`: two header lines, two value lines, the
    stack indented 17 columns, a blank line."""
    ts = f"{rec.timestamp:x}" if rec.timestamp is not None else "-"
    thread = str(rec.thread) if rec.thread is not None else "-"
    cpu = str(rec.cpu) if rec.cpu is not None else "-"
    lines = [f"{'ADDR':>16s} {'BUFADDR':>16s} {'TIMESTAMP':>16s} {'THREAD':>16s}",
             f"{'':16s} {'CACHE':>16s} {'CPU':>16s}",
             f"{rec.addr or 0:16x} {buf:16x} {ts:>16s} {thread:>16s}",
             f"{'':16s} {cache:16x} {cpu:>16s}"]
    lines += [" " * 17 + readable(session.format_addr(pc, ret=True)) for pc in rec.stack]
    lines.append("")
    return lines


def record_lines(session, alloc, rec: AllocRecord, buf: int, group_addr: int,
                 kind: int) -> list[str]:
    """A record's long form: the allocator's own (Allocator.record_lines), else the generic
    record_block."""
    own = alloc.record_lines(rec, buf, group_addr, kind)
    return own if own is not None else record_block(session, rec, buf, group_addr)


def long_form(session, e: Entry) -> list[str]:
    """-d: one representative in long form, then its group's unreferenced members."""
    g = e.group
    rep = g.rep
    n, nbytes = g.count, g.bytes
    if e.type in (T_MMAP, T_SBRK):
        nm = "mmap(2)" if e.type == T_MMAP else "sbrk(2)"
        lines = [f"{nm} leak: [{m.addr:x}, {m.addr + m.size:x}), {m.size} bytes"
                 for m in g.members]
    else:
        name = g.alloc.oversize_label if e.type == T_VMEM else g.group
        # a vmem_seg is umem's record of an oversize buffer; others (mmapped chunks) keep none
        unit = "vmem_seg" if e.type == T_VMEM and rep.record is not None else "buffer"
        if n == 1:
            head = f"{name} leak: 1 {unit}, {nbytes} bytes"
        else:
            each = sizes(g) if e.type == T_VMEM else rep.size
            head = f"{name} leak: {n} {unit}s, {each} bytes each, {nbytes} bytes total"
        if rep.record is None:  # no allocation record: a sample, as for mdb's CACHE leaks
            who = f"caller {readable(session.format_addr(e.caller, ret=True))}, " \
                if e.caller else ""
            lines = [head + ",", f"    {who}sample addr {rep.addr:x}"]
        else:
            lines = [head] + record_lines(session, g.alloc, rep.record, rep.addr, e.cache_addr,
                                          g.kind)
    lines += printed(session, rep.addr)
    heads = [m.addr for m in g.members if m.unreferenced]
    lines.append(f"    unreferenced (heads of leaked structures): {len(heads)} of {n}")
    lines += [f"        {a:x}" for a in heads[:HEADS_SHOWN]]
    if len(heads) > HEADS_SHOWN:
        lines.append(f"        ... {len(heads) - HEADS_SHOWN} more (::walk leakbuf)")
    return lines


def printed(session, addr: int) -> list[str]:
    """The buffer at addr as ::print shows it, when the typegraph knows it holds one struct
    (an array is left to ::print, whose limits the user sets), indented under its group; []
    otherwise. The struct is printed where the object starts (after the allocator's header
    in the buffer, where there is one). A buffer that cannot be read says so in one line."""
    from mdbpy.errors import MdbError
    from mdbpy.types.printer import PrintOptions, Printer
    from mdbpy.types.space import space_of
    from mdbpy.types.value import Value

    typed = known_type(session, addr)
    if typed is None or typed.type is None or typed.count != 1 or typed.base != addr:
        return []
    try:
        space = space_of(session)
        text = Printer(space, PrintOptions()).render(Value(space, space.lookup(typed.type),
                                                           typed.start))
    except MdbError as e:
        return [f"    as {typed.type}: {e}"]
    return [f"    as {typed.type}:"] + [f"        {line}" for line in text.splitlines()]


def _perc(label: str, v: int, total: int) -> str:
    perc = v * 100 // total if total else 0
    tenths = (v * 1000 // total) % 10 if total else 0
    return f"findleaks: {label:>30s} => {v:<13d} ({perc:2d}.{tenths:1d}%)"


def statistics_lines(v: dict) -> list[str]:
    """The statistics as leaky.c prints them."""
    def line(label, value):
        return f"findleaks: {label:>30s} => {value}"

    total = v["potential_pointers"]
    return [line("maximum buffers", v["maximum_buffers"]),
            line("actual buffers", v["actual_buffers"]),
            "findleaks: ",
            line("potential pointers", total),
            *(_perc(k, v[k], total) for k in ("dismissals", "misses", "dups", "follows")),
            "findleaks: ",
            line("anonymous regions", f"{v['anon_regions']} ({v['anon_bytes']} bytes)"),
            line("anonymous roots", len(v["anon_roots"])),
            *(f"findleaks:     {label}" for label in v["anon_roots"]),
            "findleaks: ",
            f"findleaks: {'peak memory usage':>30s} => {v['peak_kb']} kB",
            f"findleaks: {'elapsed CPU time':>30s} => {v['cpu_seconds']:.1f} seconds",
            f"findleaks: {'elapsed wall time':>30s} => {v['wall_seconds']:.1f} seconds",
            "findleaks: "]


class Progress:
    """The progress(done, total) callback of long scans (findleaks, verify): prompt_toolkit's
    ProgressBar on the terminal stderr goes to, nothing when stderr is not a terminal. The bar
    appears once a scan has run DELAY seconds, so quick commands never flash one, and is
    removed when the scan ends.

    The bar is a prompt_toolkit application of its own, run in a thread. That works in the
    REPL too, because the REPL runs a command only after its prompt application has returned:
    the two applications never run at once. While the bar is shown it owns the keyboard (the
    terminal is in raw mode, so Ctrl-C is a key, not a signal): its cancel callback sends
    SIGINT to the process, which raises KeyboardInterrupt in the scanning main thread, and the
    dcmds turn that into CommandAbort. Without a terminal on stdin, Ctrl-C stays a signal."""

    DELAY = 0.5

    def __init__(self, session, label: str):
        err = session.err
        self.err = err if hasattr(err, "isatty") and err.isatty() else None
        self.label = label
        self.start = time.monotonic()
        self.bar = None
        self.counter = None

    def __call__(self, done: int, total: int) -> None:
        if self.err is None or total <= 0:
            return
        if self.bar is None:
            if time.monotonic() - self.start < self.DELAY:
                return
            self._open()
        self.counter.total = total
        self.counter.items_completed = min(done, total)
        self.bar.invalidate()

    def _open(self) -> None:
        from prompt_toolkit.input import DummyInput, create_input
        from prompt_toolkit.output import create_output
        from prompt_toolkit.shortcuts import ProgressBar
        from prompt_toolkit.shortcuts.progress_bar import formatters as F

        keys = create_input(sys.stdin) if sys.stdin is not None and sys.stdin.isatty() \
            else DummyInput()
        shown = [F.Label(), F.Percentage(), F.Text(" "), F.Bar(), F.Text(" eta "),
                 F.TimeLeft()]  # no item counts: a scan counts bytes
        self.bar = ProgressBar(formatters=shown, output=create_output(stdout=self.err),
                               input=keys)
        self.bar.__enter__()
        self.counter = self.bar(label=self.label + " ", remove_when_done=True)

    def close(self) -> None:
        if self.bar is not None:
            self.counter.done = True
            self.bar.__exit__(None, None, None)
            self.bar = None
