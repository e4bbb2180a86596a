"""The generic heap dcmds, written once over the allocator interface (mdbpy.heap.model) and
answered by whichever allocator modules found their allocator in the target: ::findleaks with
the leak and leakbuf walkers, ::whyalive, ::whatis, ::heap_verify, ::heap_stats and ::layout."""

from __future__ import annotations

from mdbpy.dcmd import STR, Flag, Operand, Opt, dcmd, walker
from mdbpy.errors import CommandAbort, MdbError, UsageError
from mdbpy.heap.model import LEAKS_KEY, allocators
from mdbpy.jsonout import Table, cells, emit, wants_json
from mdbpy.output import radix_str

from .symbols import map_name


# -- findleaks ------------------------------------------------------------------------------
def run_findleaks(session, force: bool = False):
    """(report, statistics, fresh): the cached result, or one mark over every allocator and
    the anonymous memory they leave (mdbpy.heap.leaks). Ctrl-C stops the scan and leaves the
    cache as it was."""
    from mdbpy.heap.leaks import cached_leaks
    from mdbpy.heap.report import Progress

    allocators(session)
    progress = Progress(session, "findleaks: scanning")
    try:
        report, stats, fresh = cached_leaks(session, force, progress)
    except KeyboardInterrupt:
        raise CommandAbort("findleaks: interrupted; no results kept") from None
    finally:
        progress.close()
    if fresh:
        for w in report.warnings:
            session.warn(f"findleaks: {w}")
    return report, stats, fresh


def last_report(session):
    cached = session.cache.get(LEAKS_KEY)
    if cached is None:
        raise MdbError("::findleaks must be run before leaks can be walked")
    return cached[0]


@dcmd("findleaks", "search for potential memory leaks", addr="?", opts=[
    Flag("d", "detail", "detail each representative leak (long); ends with the group's "
         "unreferenced members, the leaked buffers no other leaked buffer points to (heads of "
         "leaked structures)"),
    Flag("f", "force", "throw away cached state, and do a full run"),
    Flag("v", "verbose", "report verbose information about the findleaks run")],
      example="::findleaks -d", help="""\
A conservative garbage collection of the heap: every allocated buffer (and region the allocator
module offers) that no root reaches, transitively, is a leak. Roots are the writable data and
bss of every loaded object, every thread's registers, and every thread's stack from its stack
pointer up; a word pointing anywhere inside a buffer counts. The process is one heap: one mark
runs over every allocator found and over the anonymous memory none of them claims, which is
scanned when reached and is an mmap(2) leak when not (shared, executable or read-only memory,
and the memory beside a thread's TLS area, are scanned as roots instead: -v names them).
Leaks with the same kind, cache and allocation stack are coalesced, the oldest as
representative, and printed in mdb's three tables (oversized/mapped, buffers without and with allocation records) with their Total lines.
The result is cached until -f or until the target changes.

With an address (a pc or a function), only leaks whose stack contains it are shown.

The 'leak' and 'leakbuf' walkers walk the last result; ::whyalive explains what keeps a buffer
alive.""")
def findleaks(inv):
    from mdbpy.heap.report import entries, long_form, statistics_lines, tables

    inv.no_operands()
    opts = inv.opts
    s = inv.session
    report, stats, fresh = run_findleaks(s, opts.force)
    filt = inv.addr if inv.has_addr else None
    ents = entries(s, report, filt)
    if wants_json(inv):
        from mdbpy.results import leak_groups, leak_totals

        groups = leak_groups(s, ents)
        extra = {"statistics": stats if fresh else None} if opts.verbose else {}
        emit(inv, "findleaks", leaks=[g.as_dict(members=opts.detail) for g in groups],
             totals=leak_totals(groups), fresh=fresh, **extra)
        return 0
    if opts.verbose:
        for line in statistics_lines(stats) if fresh else [
                "findleaks: using cached results (use '-f' to force a full run)"]:
            inv.print(line)
    if not ents:
        inv.print(f"findleaks: no memory leaks matching {s.format_addr(filt)} found"
                  if filt is not None else "findleaks: no memory leaks detected")
        return 0
    for line in tables(ents):
        inv.print(line)
    if opts.detail:
        inv.print("")
        for e in ents:
            for line in long_form(s, e):
                inv.print(line)
    return 0


def _walk_leaks(session, addr, buffers: bool):
    from mdbpy.heap.report import ctl_addr

    groups = last_report(session).groups
    if addr:
        hit = [g for g in groups if ctl_addr(g.rep) == addr] or \
              [g for g in groups if any(ctl_addr(m) == addr for m in g.members)]
        if not hit:
            raise MdbError(f"{addr:x} is not a leaked ctl address")
        groups = hit[:1]
    for g in groups:
        for m in g.members:
            yield m.addr if buffers else ctl_addr(m)


@walker("leak", "walk the leaks of the last ::findleaks (their records, bufctls)", help="""\
Every leak of the last ::findleaks: the allocation record's address (bufctl, track) where the
allocator keeps one, else the buffer or region. Started at a leak's control address, only the
members of its group.""")
def walk_leak(session, addr):
    return _walk_leaks(session, addr, False)


@walker("leakbuf", "walk the leaked buffers of the last ::findleaks", help="""\
As the leak walker, but yields the addresses of the leaked buffers themselves.""")
def walk_leakbuf(session, addr):
    return _walk_leaks(session, addr, True)


# -- whyalive -------------------------------------------------------------------------------
@dcmd("whyalive", "explain what keeps a heap buffer alive", addr=":",
      opts=[Flag("f", "force", "run a fresh ::findleaks")],
      example="0x7f0000201010::whyalive", help="""\
The chain of references from a root to the buffer containing addr, as the last ::findleaks
marked it (it runs one if needed): first the root slot (a global as
symbol+offset, a thread's stack slot, or a thread's register), then each buffer on the way
with the offset inside it of the pointer to the next. A buffer nothing reaches is reported
as leaked.""")
def whyalive(inv):
    from mdbpy.heap.leaks import explain

    if not inv.has_addr:
        raise UsageError("usage: addr::whyalive [-f]")
    inv.no_operands()
    s = inv.session
    report, _, _ = run_findleaks(s, inv.opts.force)
    cands = report.candidates
    i = cands.table.find(inv.addr)
    if i is not None:
        base = int(cands.table.base[i])
        head = f"{inv.addr:x} is " + (f"{base:x}+{inv.addr - base:x}, " if inv.addr != base
                                       else "") + f"allocated from {cands.name(i)}"
        chain = explain(report, s.mem, inv.addr)
        if chain is None:
            inv.print(f"{head}: leaked (no path from any root)")
            return 0
        inv.print(f"{head}, reachable through:")
        _, slot, label = chain[0]
        via = f"{s.format_addr(slot)} ({label})" if slot is not None else label
        for b, link, g in chain[1:]:
            inv.print(f"    {via:<40s} -> {b:x} ({g})")
            via = f"{b:x}+{link - b:x}" if link is not None else f"{b:x}"
        return 0
    raise MdbError(f"{inv.addr:x} is not in an allocated heap buffer")


# -- whatis ---------------------------------------------------------------------------------
@dcmd("whatis", "given an address, return information", addr=":", pipe_all=True, opts=[
    Flag("a", "all", "report all information about each address, not just the first source's"),
    Flag("k", "keep_order", "do not re-order the input"),
    Flag("q", "quiet", "quiet; don't print multi-line reports (the record's address is named "
         "instead)"),
    Flag("v", "verbose", "verbose; show each source as it is searched")],
      example="0x7f0000201010::whatis", help="""\
Report where an address comes from: the heap buffer containing it (`<addr> is <base>+<off>,
allocated from <cache>` or `freed from`, followed by its allocation record unless -q), else the
symbol and mapping containing it (`<addr> is sym+off, in <mapping> [base,limit)`), else
`unknown`. Fed from a pipeline, addresses are reported source by source in sorted order.""")
def whatis(inv):
    from mdbpy.heap.whatis import WhatisOptions
    from mdbpy.heap.whatis import whatis as run

    if inv.piped_out:
        raise MdbError("whatis: cannot be output into a pipe")
    if not inv.has_addr:
        raise UsageError("usage: addr::whatis [-akqv]")
    inv.no_operands()
    opts = inv.opts
    wo = WhatisOptions(opts.all, opts.quiet, opts.verbose)
    addrs = list(inv.pipe) if inv.pipe else [inv.addr]
    if wants_json(inv):
        from mdbpy.results import whatis_hits

        order = addrs if opts.keep_order else sorted(addrs)
        emit(inv, "whatis", hits=[h.as_dict() for a in order for h in whatis_hits(
            inv.session, a, wo.all, map_name)])
        return 0
    if opts.keep_order:
        for a in addrs:
            for line in run(inv.session, [a], wo, map_name):
                inv.print(line)
        return 0
    for line in run(inv.session, sorted(addrs), wo, map_name):
        inv.print(line)
    return 0


# -- verify and statistics ------------------------------------------------------------------
def summary(problems) -> str:
    """`N problems in M buffers`, or `heap is clean`."""
    if not problems:
        return "heap is clean"
    n, objs = len(problems), len({p.addr for p in problems})
    return f"{n} problem{'' if n == 1 else 's'} in {objs} buffer{'' if objs == 1 else 's'}"


@dcmd("heap_verify", "check the heap's integrity with the allocator's own checks",
      opts=[Flag("q", "quiet", "omit the stacks")], example="::heap_verify", help="""\
Every allocator in the target checks its heap as its debugging features allow (red zones,
poisoning of free buffers, padding, free lists) and reports each damaged buffer in its own
words (the simulator in slub_debug's: Redzone overwritten, Poison overwritten, Object already
free, Object padding overwritten), with the bad bytes, the first one's value and the expected
one, and the stacks that allocated and freed the buffer. Ends with one summary line per
allocator.""")
def heap_verify(inv):
    from mdbpy.heap.report import Progress
    from mdbpy.heap.verify import format_problem

    if inv.operands or inv.has_addr:
        raise UsageError("usage: ::heap_verify [-q]")
    s = inv.session
    as_json = wants_json(inv)
    found = []
    for a in allocators(s):
        progress = Progress(s, f"heap_verify: {a.name}")
        try:
            problems = a.verify(progress)
        except KeyboardInterrupt:
            raise CommandAbort("heap_verify: interrupted") from None
        finally:
            progress.close()
        if as_json:
            from mdbpy.results import Problem

            found.append({"allocator": a.name, "summary": summary(problems), "problems": [
                Problem.of(s, a.name, p).as_dict() for p in problems]})
            continue
        for p in problems:
            for line in format_problem(s, p, stacks=not inv.opts.quiet):
                inv.print(line)
            inv.print("")
        inv.print(f"{a.name}: {summary(problems)}")
    if as_json:
        emit(inv, "heap_verify", allocators=found)
    return 0


@dcmd("heap_stats", "print per-cache heap statistics of every allocator", opts=[
    Flag("t", "by_type", "by type instead: the allocated buffers and their bytes per type the "
         "typegraph inferred (::typegraph; built if needed), an array counted under its "
         "element type, the buffers of unknown type as one row; largest first"),
    Opt("s", "sort", STR, "with -t, sort by bytes (the default), buffers or type",
        default="bytes", metavar="key")], example="::heap_stats", help="""\
One line per cache, arena or size class of each allocator in the target: its name, buffer
size, buffers in total, in use and free, and the memory it holds (%H, as mdb's ::umastat),
then a total line per allocator. Piped, the group descriptors' addresses.""")
def heap_stats(inv):
    from mdbpy.results import HeapStat

    if inv.opts.by_type and not inv.operands and not inv.has_addr:
        from .typegraph import heap_stats_by_type

        return heap_stats_by_type(inv, str(inv.opts.sort))
    if inv.args or inv.has_addr:
        raise UsageError("usage: ::heap_stats [-t [-s key]]")
    as_json = wants_json(inv)
    found = []
    for a in allocators(inv.session):
        rows = a.stats()
        if inv.piped_out:
            for r in rows:
                if r.addr:
                    inv.print(radix_str(r.addr, prefix=True))
            continue
        rule = f"{'-' * 25} {'-' * 7} {'-' * 8} {'-' * 8} {'-' * 8} {'-' * 8}"
        t = Table("{group:<25s} {bufsize:7d} {total:8d} {inuse:8d} {free:8d} {memory!H:>8s}",
                  head=[f"{a.name + ' cache':<25s} {'buf':>7s} {'buf':>8s} {'buf':>8s} "
                        f"{'buf':>8s} {'memory':>8s}",
                        f"{'name':<25s} {'size':>7s} {'total':>8s} {'in use':>8s} "
                        f"{'free':>8s} {'total':>8s}", rule])
        for r in rows:
            t.add(**HeapStat.of(a.name, r).as_dict())
        total = {k: sum(r[k] for r in t.rows) for k in ("total", "inuse", "free", "memory")}
        t.foot = [rule, cells("{0:<25s} {1:7s} {total:8d} {inuse:8d} {free:8d} {memory!H:>8s}",
                              "Total", "", **total)]
        if as_json:
            found.append({"allocator": a.name, "rows": t.rows, "total": total})
        else:
            t.print(inv)
    if as_json:
        emit(inv, "heap_stats", allocators=found)
    return 0


# -- layout ---------------------------------------------------------------------------------
@dcmd("layout", "list the allocator structures mdbpy reads, or print one",
      operands=[Operand("name", optional=True)],
      example="::layout sim_kmem_cache", help="""\
Without a name, every struct of the loaded allocator modules' layouts with its size and where
its offsets come from (a builtin variant for an ABI and allocator version, or the target's
DWARF). With a name (or module`name), the bound struct: each field's offset, size and type, its
aliases and derived fields, and the allocator source the descriptor follows.""")
def layout(inv):
    from mdbpy.layout.bind import format_layout

    if inv.has_addr or len(inv.args) > 1:
        raise UsageError("usage: ::layout [name]")
    binders = [(a.name, a.binder) for a in allocators(inv.session) if a.binder is not None]
    if not inv.args:
        inv.print(f"{'MODULE':<10s} {'STRUCT':<24s} {'SIZE':>6s} ORIGIN")
        for mod, b in binders:
            for name in b.names():
                st = b[name]
                note = f" (differs from builtin: {len(st.differs)})" if st.differs else ""
                inv.print(f"{mod:<10s} {name:<24s} {st.size:#6x} {st.origin}{note}")
        return 0
    want = str(inv.args[0])
    mod, _, name = want.rpartition("`")
    for m, b in binders:
        if (not mod or mod == m) and name in b.names():
            for line in format_layout(b[name]).splitlines():
                inv.print(line)
            return 0
    raise MdbError(f"no layout named {want} (see ::layout)")
