"""::heap_snapshot and ::heapdiff: save the heap of this moment, and say what grew since a saved
one (the engines are mdbpy.heap.snapshot, mdbpy.heap.diff and mdbpy.heap.growthplot).

The diff's options are declared once, DIFF_OPTS, and read by diff_settings(): `mdbpy diff A B`
(mdbpy/cli.py) parses its words with the same declaration, so the dcmd and the command line
cannot disagree on what an option means.
"""

from __future__ import annotations

import os

from mdbpy.dcmd import STR, Operand, Opt, dcmd, parse_options
from mdbpy.errors import MdbError, UsageError
from mdbpy.jsonout import emit, wants_json

DIFF_OPTS = (
    Opt("a", "axis", STR, "only this axis: size, cache, caller, stack or type; the plot shows "
        "it (default: caller where stacks are kept, else type after ::typegraph, else size)"),
    Opt("n", "top", STR, "rows per axis, and bars in the plot (decimal; default 10; 0: all)",
        default="10"),
    Opt("o", "plot", STR, "also write the top growers as horizontal bars: an SVG or a PNG, by "
        "the file's extension", metavar="file"),
)


def diff_settings(opts) -> tuple[tuple[str, ...] | None, int, str | None]:
    """(the axes asked for or None for the default ones, rows per axis, the plot file) of the
    parsed DIFF_OPTS, each checked."""
    from mdbpy.heap.diff import AXES

    axis, plot = opts.axis, opts.plot
    if axis is not None and axis not in AXES:
        raise UsageError(f"heapdiff: unknown axis '{axis}' (axes: {', '.join(AXES)})")
    try:
        top = int(opts.top, 10)
    except ValueError:
        top = -1
    if top < 0:
        raise UsageError(f"heapdiff: -n takes a number of rows, not '{opts.top}'")
    if plot and os.path.splitext(plot)[1].lower() not in (".svg", ".png"):
        raise UsageError(f"heapdiff: {plot}: the plot must end in .svg or .png")
    return ((axis,) if axis else None), top, plot


def diff_output(d, axes, top: int, plot: str | None, as_json: bool) -> tuple[list[str], dict]:
    """(text lines, JSON document) of a diff as asked: the text tables, or with as_json the
    document (and no lines); writes the plot file first, whose line ends the text."""
    from mdbpy.heap.diff import AXES, TEXT_AXES, text_lines

    lines: list[str] = []
    if plot:
        lines.append(write_plot(d, axes[0] if axes else d.primary(), top, plot))
    if as_json:
        doc = d.as_dict(axes or AXES, top)
        doc["plot"] = plot
        return [], doc
    return text_lines(d, axes or TEXT_AXES, top) + ([""] + lines if lines else []), {}


def write_plot(d, axis: str, top: int, path: str) -> str:
    """Write the bars of the top growers of `axis`; the line that says so."""
    from mdbpy.heap import growthplot

    rows = d.axes[axis][:top or None]
    title = (f"heap growth by {axis}: {d.before.get('path') or d.before.get('target')} -> "
             f"{d.after.get('path') or d.after.get('target')}")
    data = (growthplot.render_svg(rows, title).encode() if path.lower().endswith(".svg")
            else growthplot.render_png(rows, title))
    try:
        with open(path, "wb") as f:
            f.write(data)
    except OSError as e:
        raise MdbError(f"heapdiff: cannot write {path}: {e.strerror}") from None
    return f"{path}: {len(rows)} bars of growth by {axis}"


def parse_diff_words(words: list) -> tuple[object, list]:
    """The command line's words after `mdbpy diff`, read with the dcmd's DIFF_OPTS."""
    return parse_options(words, DIFF_OPTS, 10)


@dcmd("heap_snapshot", "save a snapshot of the heap to a file", operands=[Operand("file")],
      example="::heap_snapshot /tmp/before.npz", help="""\
Write every allocator's buffers, allocated and free, to file (a numpy .npz, compressed; the
format is docs/snapshots.md): per buffer its address, size, state, allocator and cache (as
::heap_stats names it), the allocation stack where the allocator records one (libumem with
UMEM_DEBUG=audit, the simulator; the stacks kept once with their symbolized frames and their
callers) and its type where ::typegraph has run (a snapshot never builds the graph); with the
totals, the target and the time. ::heapdiff and `mdbpy diff` compare snapshots.""")
def heap_snapshot(inv):
    from mdbpy.heap import snapshot

    if len(inv.operands) != 1 or inv.has_addr:
        raise UsageError("usage: ::heap_snapshot file")
    path = str(inv.operands[0])
    snap = snapshot.take(inv.session)
    snap.save(path)
    if wants_json(inv):
        emit(inv, "heap_snapshot", path=path, **snap.totals(), allocators=snap.allocators,
             stacks=len(snap.stack_caller), types=len(snap.types))
        return 0
    inv.print(f"{path}: {snap.describe()}")
    return 0


@dcmd("heapdiff", "report what the heap grew by since a snapshot", opts=DIFF_OPTS,
      operands=[Operand("file")], example="::heapdiff -o /tmp/growth.svg /tmp/before.npz",
      help="""\
Compare the heap now with the snapshot in file (::heap_snapshot): the buffers allocated now
and not then are new, those allocated then and not now are freed (the same buffer is at the
same address with the same size, allocator, cache and caller). One table per axis: by size,
by cache, by caller (the first frame of the allocation stack outside the allocator) and by
type, the last two where stacks or types are known, each row with its net bytes and buffers,
new and freed, sorted by net growth; -a stack prints each stack's frames. `mdbpy diff A B`
compares two snapshots or cores from the command line.""")
def heapdiff(inv):
    from mdbpy.heap import snapshot
    from mdbpy.heap.diff import compare

    if len(inv.operands) != 1 or inv.has_addr:
        raise UsageError("usage: ::heapdiff [-a axis] [-n top] [-o file] file")
    axes, top, plot = diff_settings(inv.opts)
    before = snapshot.load(str(inv.operands[0]))
    d = compare(before, snapshot.take(inv.session))
    lines, doc = diff_output(d, axes, top, plot, wants_json(inv))
    if doc:
        emit(inv, "heapdiff", **doc)
    for line in lines:
        inv.print(line)
    return 0

