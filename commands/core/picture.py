"""::heapmap: the occupancy of every allocator's heap (or one cache or arena) as a colour map in
the terminal, or written as an SVG or PNG file (the engine is mdbpy.heap.picture)."""

from __future__ import annotations

import os

from mdbpy.dcmd import NUM, STR, Flag, Opt, dcmd
from mdbpy.errors import CommandAbort, MdbError, UsageError
from mdbpy.heap.model import allocators

from .heap import LEAKS_KEY, run_findleaks, summary

VERIFY_KEY = ("heap", "verify")  # {allocator name: problems} of the last heapmap -v
MAX_WIDTH = 1024


def color_depth(inv) -> str | None:
    """'truecolor' or '256' on a terminal with colour wanted (option `color`, NO_COLOR unset),
    None for plain characters."""
    tty = bool(getattr(inv.out, "isatty", lambda: False)())
    if not tty or os.environ.get("NO_COLOR") or not inv.session.options.get("color", True):
        return None
    return "truecolor" if os.environ.get("COLORTERM") in ("truecolor", "24bit") else "256"


def leak_spans(session, alloc, search: bool) -> tuple[list, str]:
    """([start, end) of each leak of `alloc`, a note): from the cached ::findleaks, run first
    when `search`."""
    if search:
        report = run_findleaks(session)[0]
    else:
        cached = session.cache.get(LEAKS_KEY)
        if cached is None:
            return [], "leaks: not searched (run ::findleaks, or use -l)"
        report = cached[0]
    spans = [(m.addr, m.addr + max(m.size, 1)) for g in report.groups
             if g.alloc.name == alloc.name for m in g.members]
    return spans, f"leaks: {len(spans)} from ::findleaks"


def corrupt_spans(session, alloc, check: bool) -> tuple[list, str]:
    """([start, end) of each problem and untrusted region, a note): verify runs with `check`
    (its result is kept for the next ::heapmap), else the kept result is used."""
    from mdbpy.heap.report import Progress

    kept = session.cache.setdefault(VERIFY_KEY, {})
    if check:
        progress = Progress(session, f"heapmap: verifying {alloc.name}")
        try:
            kept[alloc.name] = alloc.verify(progress)
        except KeyboardInterrupt:
            raise CommandAbort("heapmap: interrupted") from None
        finally:
            progress.close()
    problems = kept.get(alloc.name)
    untrusted = alloc.untrusted()
    spans = [(a, b) for a, b, _why in untrusted]
    if problems is None:
        note = "corruption: not checked (use -v)"
    else:
        spans += [(p.addr, p.addr + max(p.size, 1)) for p in problems]
        note = f"corruption: {summary(problems)}"
    if untrusted:
        note += f"; {len(untrusted)} regions not trusted by the walk"
    return spans, note


@dcmd("heapmap", "draw the heap's occupancy as a colour map", opts=[
    Flag("l", "leaks", "run ::findleaks first if it has not run (else leaks are marked only "
         "after it)"),
    Flag("v", "verify", "run the allocator's verify (as ::heap_verify) and mark what it finds; "
         "the result is kept for later pictures until the target changes"),
    Opt("c", "cache", STR, "only the cache or size class of this name (as ::heap_stats names "
        "it)"),
    Opt("a", "addr", NUM, "only the buffers whose group descriptor is at addr (a cache, a glibc "
        "arena)"),
    Opt("b", "bytes", NUM, "one cell per this many bytes instead of one per buffer"),
    Opt("w", "width", NUM, "cells per row (default 0t64)", default=64),
    Opt("o", "file", STR, "write an SVG (a rect per cell, its tooltip the address, size, group "
        "and state) or a PNG (its legend in a tEXt chunk), by the file's extension (.svg, "
        ".png)")],
      example="::heapmap -lv -o /tmp/heap.svg", help="""\
Draw each allocator's heap as a map of cells, in address order: one cell per buffer (chunk,
slab object), or with -b one cell per that many bytes of the heap regions, so fragmentation
and damage show at a glance. Each row starts with the address range it covers. States:

  #  allocated    .  free       L  leaked (the last ::findleaks)
  X  corrupt (verify's problems, regions the walk did not trust)
  m  allocator metadata         -  other bytes (headers, red zones, slack, top)

A byte cell over several things shows corrupt first, then leaked, then allocated or free
(the larger part), then metadata. On a terminal the cells are colour blocks (256 colours,
24-bit with COLORTERM=truecolor); elsewhere, with NO_COLOR set or option color off, the
characters above. A run of rows equal to the one before them is drawn as one `*`. A legend
with each state's cell count ends the map. Numbers are in the current radix.""")
def heapmap(inv):
    from mdbpy.heap import picture as P

    if inv.has_addr:
        raise UsageError(f"usage: ::heapmap {heapmap.__mdb_dcmd__.usage}")
    inv.no_operands()
    opts = inv.opts
    width = opts.width
    unit = opts.bytes
    if not 1 <= width <= MAX_WIDTH:
        raise UsageError(f"heapmap: width must be 1 to 0t{MAX_WIDTH}")
    if unit is not None and unit < 1:
        raise UsageError("heapmap: bytes per cell must be at least 1")
    out = opts.file
    kind = os.path.splitext(out)[1].lower() if out else ""
    if out and kind not in (".svg", ".png"):
        raise UsageError(f"heapmap: {out}: the file must end in .svg or .png")
    s = inv.session
    pics = []
    found = allocators(s)
    for a in found:  # a picture too big to draw is refused before -l and -v do their work
        P.check_size(a, name=opts.cache, addr=opts.addr, unit=unit, width=width,
                     svg=kind == ".svg")
    for a in found:
        leaks, leak_note = leak_spans(s, a, opts.leaks)
        corrupt, corrupt_note = corrupt_spans(s, a, opts.verify)
        pic = P.draw(a, leaks=leaks, corrupt=corrupt, name=opts.cache, addr=opts.addr,
                     unit=unit, width=width)
        if pic is not None:
            pic.notes += [leak_note, corrupt_note]
            pics.append(pic)
    if not pics:
        want = opts.cache or f"{opts.addr or 0:#x}"
        raise MdbError(f"heapmap: no buffers in {want} (see ::heap_stats)")
    if not out:
        for k, pic in enumerate(pics):
            if k:
                inv.print("")
            for line in P.render_text(pic, color_depth(inv)):
                inv.print(line)
        return 0
    header = [f"heapmap of {s.target.describe()}"]
    data = (P.render_svg(pics, header).encode() if kind == ".svg"
            else P.render_png(pics, width, header))
    try:
        with open(out, "wb") as f:
            f.write(data)
    except OSError as e:
        raise MdbError(f"heapmap: cannot write {out}: {e.strerror}") from None
    counts = [sum(c) for c in zip(*(p.counts() for p in pics))]
    inv.print(f"{out}: {sum(len(p) for p in pics)} cells")
    inv.print(P.legend(counts))
    return 0
