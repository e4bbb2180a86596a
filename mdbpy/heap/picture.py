"""Heap pictures: the occupancy of a heap as a colour map, so fragmentation and damage show at
a glance.

Built once over the allocator interface: Allocator.buffers() gives every buffer with its state
and group; the caller passes the leaked spans (the last ::findleaks) and the corrupt ones
(Allocator.verify() problems, and the regions the walks did not trust). A picture has one cell
per buffer, or one per N bytes of the heap regions, where a cell shared by several things shows
the worst of them (corrupt, then leaked), else its buffers (allocated or free, the larger
part), else metadata.

It is drawn as terminal text (ANSI colour blocks, or characters a pipe or a test can read
back), as SVG (a rect per cell with a <title> tooltip) or as PNG, written here with zlib and
struct so no image library is needed.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

from mdbpy.errors import MdbError
from mdbpy.heap import model
from mdbpy.heap.roots import merge_ranges

# cell states, from the least to the most urgent
OTHER, META, FREE, ALLOC, LEAK, CORRUPT = range(6)

MAX_CELLS = 1 << 20  # text and PNG: beyond this a picture says nothing a coarser one would not
MAX_SVG_CELLS = 1 << 17  # one rect and tooltip each: a browser still opens it
MAX_PIXELS = 1 << 24  # a PNG's cells shrink to keep it this small
BACKGROUND = (0xFF, 0xFF, 0xFF)


@dataclass(frozen=True)
class Style:
    """How one state is drawn: its name, its plain character, its colour and what it means."""

    name: str
    char: str
    rgb: tuple[int, int, int]
    meaning: str

    @property
    def hex(self) -> str:
        return "#%02x%02x%02x" % self.rgb


STYLES = (
    Style("other", "-", (0x50, 0x50, 0x50), "no buffer: headers, red zones, slack, top"),
    Style("metadata", "m", (0x8E, 0x6C, 0xC9), "the allocator's own structures"),
    Style("free", ".", (0xCF, 0xCF, 0xCF), "free buffer"),
    Style("allocated", "#", (0x3A, 0x7B, 0xD5), "allocated buffer"),
    Style("leaked", "L", (0xFF, 0xA5, 0x00), "allocated, reached from no root (::findleaks)"),
    Style("corrupt", "X", (0xD0, 0x10, 0x50), "damaged (verify) or not trusted by the walk"),
)
LEGEND_ORDER = (ALLOC, FREE, LEAK, CORRUPT, META, OTHER)


@dataclass
class Picture:
    """One allocator's cells in drawing order, and the cell index where each row starts.

    Cell k covers [start[k], end[k]); in a picture per buffer it is buffer k, named in
    tooltips by groups[group[k]]. notes are the lines that say what the picture is made of.
    """

    title: str
    start: object  # np.ndarray uint64
    end: object  # np.ndarray uint64
    state: object  # np.ndarray uint8
    rows: list[int]
    per_buffer: bool
    group: object = None  # np.ndarray int32, per buffer
    groups: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.state)

    def row_slices(self):
        ends = self.rows[1:] + [len(self)]
        return [slice(a, b) for a, b in zip(self.rows, ends)]

    def counts(self) -> list[int]:
        import numpy as np

        return np.bincount(self.state, minlength=len(STYLES)).tolist()

    def tooltip(self, k: int) -> str:
        a, b = int(self.start[k]), int(self.end[k])
        what = STYLES[int(self.state[k])].name
        if self.per_buffer:
            g = int(self.group[k])
            name = self.groups[g] if 0 <= g < len(self.groups) else "?"
            return f"{a:#x}, {b - a} bytes, {name}: {what}"
        return f"[{a:#x}, {b:#x}): {what}"


# -- marking --------------------------------------------------------------------------------
def group_label(g) -> str:
    """A group as ::heap_stats names it: a (name, address) pair by its name, else as text."""
    return str(g[0]) if isinstance(g, tuple) else str(g)


def select(alloc: model.Allocator, table: model.BufferTable, name: str | None = None,
           addr: int | None = None):
    """The mask of the buffers of the group called `name` (a cache, a size class) or whose
    group descriptor (a cache, an arena) is at `addr`."""
    import numpy as np

    mask = np.ones(len(table), bool)
    if name is not None:
        want = [k for k, g in enumerate(table.groups) if group_label(g) == name]
        mask &= np.isin(table.group, np.asarray(want, np.int32))
    if addr is not None:
        mask &= alloc.group_addrs(table) == np.uint64(addr)
    return mask


def named(table: model.BufferTable, spans: list[tuple[int, int]]):
    """The mask of the buffers a [start, end) span names: those whose base lies in it or whose
    control address (a chunk header, a bufctl) is its start; for a span that names none, the
    buffer its start falls in. Not every buffer a span touches: a glibc buffer's usable size
    reaches into the next chunk's header, and the next chunk is not part of its leak."""
    import numpy as np

    n = len(table)
    if not n or not spans:
        return np.zeros(n, bool)
    ms, me = _arrays(spans)
    k = np.searchsorted(ms, table.base, side="right").astype(np.int64) - 1
    mask = (k >= 0) & (table.base < me[np.maximum(k, 0)])
    s = np.fromiter((a for a, _ in spans), np.uint64, len(spans))
    e = np.fromiter((b for _, b in spans), np.uint64, len(spans))
    by_ctl = np.isin(table.ctl, s) & (table.ctl != 0)
    mask |= by_ctl
    bases = np.searchsorted(table.base, e, side="left") - np.searchsorted(table.base, s,
                                                                          side="left")
    none = (bases == 0) & ~np.isin(s, table.ctl[by_ctl])
    j = np.searchsorted(table.base, s[none], side="right").astype(np.int64) - 1
    ok = (j >= 0) & (s[none] < table.ends[np.maximum(j, 0)])
    mask[j[ok]] = True
    return mask


def buffer_states(table: model.BufferTable, leaks, corrupt):
    """Each buffer's state: allocated or free, else leaked or corrupt where a span names it."""
    import numpy as np

    states = np.where(table.state == model.ALLOC, ALLOC, FREE).astype(np.uint8)
    states[named(table, leaks)] = LEAK
    states[named(table, corrupt)] = CORRUPT
    return states


# -- cells ----------------------------------------------------------------------------------
def _row_starts(breaks: list[int], n: int, width: int) -> list[int]:
    """Rows of `width` cells, a new row also at each break (a region's first cell)."""
    rows: list[int] = []
    for a, b in zip(breaks, breaks[1:] + [n]):
        rows.extend(range(a, b, width))
    return rows


def by_buffer(title: str, table: model.BufferTable, states, width: int) -> Picture:
    """One cell per buffer, in address order."""
    return Picture(title, table.base, table.ends, states,
                   _row_starts([0], len(table), width), True, table.group,
                   [group_label(g) for g in table.groups])


def _segments(starts, ends, unit: int, gap: int) -> list[tuple[int, int]]:
    """[start, end) ranges (uint64 arrays) widened to whole cells and joined where less than
    `gap` bytes part them (a range from a damaged heap that ends near 2**64 is cut short so
    cell addresses cannot wrap)."""
    import numpy as np

    u = np.uint64(unit)
    a = starts - starts % u
    b = np.minimum(ends + (u - ends % u) % u, np.uint64((1 << 64) - 2 * unit))
    keep = a < b
    order = np.argsort(a[keep], kind="stable")
    a, b = a[keep][order], b[keep][order]
    if not len(a):
        return []
    reach = np.maximum.accumulate(b)
    new = np.ones(len(a), bool)
    new[1:] = (a[1:] > reach[:-1]) & (a[1:] - reach[:-1] >= np.uint64(gap))
    first = np.flatnonzero(new)
    last = np.append(first[1:] - 1, len(a) - 1)
    return list(zip(a[first].tolist(), reach[last].tolist()))


def _arrays(ranges):
    """(starts, ends) of [start, end) pairs, merged so they are sorted and disjoint."""
    import numpy as np

    m = merge_ranges(ranges)
    return (np.fromiter((a for a, _ in m), np.uint64, len(m)),
            np.fromiter((b for _, b in m), np.uint64, len(m)))


def _covered(s, e, x):
    """Bytes of the sorted, disjoint ranges [s, e) below each address of x."""
    import numpy as np

    if not len(s):
        return np.zeros(len(x), np.uint64)
    before = np.concatenate(([0], np.cumsum(e - s)[:-1])).astype(np.uint64)
    k = np.searchsorted(s, x, side="right").astype(np.int64) - 1
    kk = np.maximum(k, 0)
    part = np.minimum(x, e[kk]) - s[kk]
    return np.where(k >= 0, before[kk] + part, np.uint64(0))


def _byte_cells(table: model.BufferTable, regions, unit: int,
                width: int) -> tuple[list[tuple[int, int]], list[int]]:
    """The [start, end) runs of whole `unit`-byte cells over the regions and buffers (runs
    closer than a row apart joined), and the number of cells in each."""
    import numpy as np

    rs, re_ = _arrays(regions)
    segs = _segments(np.concatenate([rs, table.base]), np.concatenate([re_, table.ends]), unit,
                     width * unit)
    return segs, [(b - a) // unit for a, b in segs]


def by_bytes(title: str, table: model.BufferTable, states, regions, unit: int, width: int, *,
             meta=(), leaks=(), corrupt=()) -> Picture:
    """One cell per `unit` bytes of the regions and buffers, a row starting at each region.
    A cell touched by a corrupt or leaked span is corrupt or leaked; else one holding buffer
    bytes is allocated or free, whichever has more, so no buffer vanishes among headers and
    red zones; else metadata, else other."""
    import numpy as np

    ends = table.ends
    segs, counts = _byte_cells(table, regions, unit, width)
    n = sum(counts)
    start = np.concatenate([np.uint64(a) + np.arange(c, dtype=np.uint64) * np.uint64(unit)
                            for (a, _), c in zip(segs, counts)] or [np.zeros(0, np.uint64)])
    end = start + np.uint64(unit)

    def held(s, e):
        return (_covered(s, e, end) - _covered(s, e, start)).astype(np.int64)

    def of(*wanted):
        sel = np.isin(states, wanted)
        return table.base[sel], ends[sel]

    alloc, free = held(*of(ALLOC, LEAK, CORRUPT)), held(*of(FREE))
    md = held(*_arrays(meta))
    most = np.where(alloc + free > 0, np.where(alloc >= free, ALLOC, FREE),
                    np.where(md > 0, META, OTHER))
    leaked = held(*_arrays(leaks)) > 0
    bad = (held(*of(CORRUPT)) > 0) | (held(*_arrays(corrupt)) > 0)
    state = np.where(bad, CORRUPT, np.where(leaked, LEAK, most)).astype(np.uint8)
    breaks = np.cumsum([0] + counts[:-1]).tolist() if counts else []
    return Picture(title, start, end, state, _row_starts(breaks, n, width), False)


def _selected(alloc: model.Allocator, name: str | None, addr: int | None):
    """(buffers, heap regions) of the group selected by name or address (all without one),
    the regions cut to the span of the selected buffers."""
    table = alloc.buffers()
    regions = alloc.heap_regions()
    if name is not None or addr is not None:
        table = table.select(select(alloc, table, name, addr))
        if len(table):
            lo, hi = int(table.base[0]), int(table.base[-1] + table.size[-1])
            regions = [(max(a, lo), min(b, hi)) for a, b in regions if a < hi and b > lo]
    return table, regions


def check_size(alloc: model.Allocator, *, name: str | None = None, addr: int | None = None,
               unit: int | None = None, width: int = 64, svg: bool = False) -> None:
    """Refuse, before anything is marked, a picture with more cells than it is worth
    (MAX_CELLS; MAX_SVG_CELLS for an SVG): counting costs one pass over the buffer table, so
    ::heapmap asks before it runs ::findleaks or verify for a picture it would not draw. The
    message names the numbers and the smallest power-of-two `-b` whose picture fits."""
    limit = MAX_SVG_CELLS if svg else MAX_CELLS
    table, regions = _selected(alloc, name, addr)

    def cells(u: int) -> int:
        return sum(_byte_cells(table, regions, u, width)[1])

    n = len(table) if unit is None else cells(unit)
    if n <= limit:
        return
    covered = cells(1)  # bytes under some region or buffer: no picture has fewer cells
    fit = 16
    while fit < covered // limit:
        fit *= 2
    while cells(fit) > limit and fit < 1 << 60:
        fit *= 2
    what = f"{n} buffers is too many cells" if unit is None else \
        f"{n} cells of {unit:#x} bytes is too many"
    ways = [f"-b {fit:#x} ({cells(fit)} cells)"]
    if name is None and addr is None:
        ways.append("-c for one cache")
    if svg:
        ways.append("a PNG")
    ways = ", ".join(ways[:-1]) + ", or " + ways[-1] if len(ways) > 1 else ways[0]
    raise MdbError(f"heapmap: {what}{' for an SVG' if svg else ''} (at most {limit}); "
                   f"use {ways}")


def draw(alloc: model.Allocator, *, leaks=(), corrupt=(), name: str | None = None,
         addr: int | None = None, unit: int | None = None, width: int = 64) -> Picture | None:
    """The picture of one allocator's heap (or of the group selected by name or address), one
    cell per buffer, or per `unit` bytes; None when the selection holds no buffer. A picture
    of more than MAX_CELLS cells is refused (check_size).

    leaks and corrupt are [start, end) spans; the picture's notes say what it holds."""
    table, regions = _selected(alloc, name, addr)
    if (name is not None or addr is not None) and not len(table):
        return None
    check_size(alloc, name=name, addr=addr, unit=unit, width=width)
    states = buffer_states(table, leaks, corrupt)
    what = name if name is not None else (f"{addr:#x}" if addr is not None else "")
    title = f"{alloc.name}{' ' + what if what else ''}: {len(table)} buffers"
    if unit is None:
        pic = by_buffer(title, table, states, width)
        pic.notes.append(f"one cell per buffer, {width} per row")
    else:
        pic = by_bytes(title, table, states, regions, unit, width,
                       meta=alloc.metadata_regions(), leaks=leaks, corrupt=corrupt)
        pic.notes.append(f"one cell per {unit:#x} bytes, {width} per row")
    return pic


# -- text -----------------------------------------------------------------------------------
def _ansi(rgb: tuple[int, int, int], depth: str) -> str:
    """The escape that sets the foreground: 24-bit, or the nearest of xterm's 6x6x6 cube."""
    if depth == "truecolor":
        return "\x1b[38;2;%d;%d;%dm" % rgb
    r, g, b = (round(c / 255 * 5) for c in rgb)
    return f"\x1b[38;5;{16 + 36 * r + 6 * g + b}m"


def _cells_text(states, depth: str | None) -> str:
    if depth is None:
        return "".join(STYLES[s].char for s in states)
    out, cur = [], None
    for s in states:
        if s != cur:
            out.append(_ansi(STYLES[s].rgb, depth))
            cur = s
        out.append("\u2588")
    return "".join(out) + "\x1b[0m"


def legend(counts: list[int], depth: str | None = None) -> str:
    """`# allocated 12  . free 100  ...`: each state's mark, name and number of cells."""
    return "  ".join(f"{_cells_text([k], depth)} {STYLES[k].name} {counts[k]}"
                     for k in LEGEND_ORDER)


def render_text(pic: Picture, depth: str | None = None) -> list[str]:
    """The lines of a picture: title and notes, `start-end  cells` per row, the legend. As
    od does, a run of rows equal to the one before them is shown as one `*`.

    depth: None for plain characters, '256' or 'truecolor' for ANSI colour blocks."""
    lines = [pic.title, *pic.notes]
    rows = pic.row_slices()
    w = max((len(f"{int(pic.end[r.stop - 1]):x}") for r in rows), default=1)
    prev = None
    for r in rows:
        cells = pic.state[r].tolist()
        if cells == prev:
            if lines[-1] != "*":
                lines.append("*")
            continue
        prev = cells
        a, b = int(pic.start[r.start]), int(pic.end[r.stop - 1])
        lines.append(f"{a:>{w}x}-{b:<{w}x}  {_cells_text(cells, depth)}")
    lines.append(legend(pic.counts(), depth))
    return lines


# -- SVG ------------------------------------------------------------------------------------
CELL, PITCH, LINE, CHAR = 9, 10, 16, 7  # px: a cell, a cell and its gap, a text line, a glyph


def _clean(text: str) -> str:
    """Text from the target made safe for XML 1.0 and PNG tEXt: printable ASCII only."""
    return "".join(c if 32 <= ord(c) < 127 else "?" for c in text)


def render_svg(pics: list[Picture], header: list[str]) -> str:
    """An SVG document: the header lines, each picture's rows with their address labels and a
    rect per cell (its <title> the cell's address, size, group and state), then the legend."""
    from xml.sax.saxutils import escape

    cells = sum(len(p) for p in pics)
    if cells > MAX_SVG_CELLS:
        raise MdbError(f"heapmap: {cells} cells is too many for an SVG (at most "
                       f"{MAX_SVG_CELLS}); use -b, -c, or a PNG")
    width = max((r.stop - r.start for p in pics for r in p.row_slices()), default=1)
    label = max((len(f"{int(p.end[-1]):x}") for p in pics if len(p)), default=1) * 2 + 1
    x0 = (label + 2) * CHAR
    body: list[str] = []
    y = 0

    def text(s: str, x: int = 0) -> None:
        nonlocal y
        body.append(f'<text x="{x}" y="{y + LINE - 4}">{escape(_clean(s))}</text>')

    for line in header:
        text(line)
        y += LINE
    total = [0] * len(STYLES)
    for p in pics:
        for line in (p.title, *p.notes):
            text(line)
            y += LINE
        for r in p.row_slices():
            a, b = int(p.start[r.start]), int(p.end[r.stop - 1])
            body.append(f'<text x="0" y="{y + CELL}">{a:x}-{b:x}</text>')
            for j, k in enumerate(range(r.start, r.stop)):
                st = STYLES[int(p.state[k])]
                body.append(f'<rect x="{x0 + j * PITCH}" y="{y}" width="{CELL}" '
                            f'height="{CELL}" fill="{st.hex}" data-addr="{int(p.start[k]):#x}">'
                            f'<title>{escape(_clean(p.tooltip(k)))}</title></rect>')
            y += PITCH
        total = [t + c for t, c in zip(total, p.counts())]
        y += LINE // 2
    for k in LEGEND_ORDER:
        st = STYLES[k]
        body.append(f'<rect x="0" y="{y + 3}" width="{CELL}" height="{CELL}" fill="{st.hex}" '
                    f'class="legend"><title>{escape(st.meaning)}</title></rect>')
        text(f"{st.name} {total[k]}: {st.meaning}", 2 * PITCH)
        y += LINE
    w = x0 + width * PITCH + CHAR
    w = max(w, max((len(s) for s in header), default=0) * CHAR)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{y}" '
            f'font-family="monospace" font-size="11">\n'
            f'<title>{escape(_clean(header[0] if header else "heapmap"))}</title>\n'
            f'<rect width="100%" height="100%" fill="#ffffff"/>\n' + "\n".join(body) +
            "\n</svg>\n")


# -- PNG ------------------------------------------------------------------------------------
def grid(pics: list[Picture], width: int):
    """The state of each cell position as a (rows, width) array, 255 where no cell is (the end
    of a short row, the blank row between two pictures)."""
    import numpy as np

    rows = sum(len(p.rows) for p in pics) + max(len(pics) - 1, 0)
    out = np.full((rows, width), 255, np.uint8)
    y = 0
    for p in pics:
        for r in p.row_slices():
            out[y, :r.stop - r.start] = p.state[r]
            y += 1
        y += 1
    return out


def cell_pixels(cells: int) -> int:
    """Pixels per cell side: 8, less for big pictures, so the image stays under MAX_PIXELS."""
    import math

    return max(1, min(8, math.isqrt(MAX_PIXELS // max(cells, 1))))


def render_png(pics: list[Picture], width: int, header: list[str]) -> bytes:
    """A PNG (8-bit RGB) of the cells, `cell_pixels` square each with a one-pixel white gap
    when there is room; the header and the legend go into tEXt chunks."""
    import numpy as np

    g = grid(pics, width)
    px = cell_pixels(g.size)
    palette = np.array([s.rgb for s in STYLES] + [BACKGROUND] * (256 - len(STYLES)), np.uint8)
    img = palette[g]
    img = np.repeat(np.repeat(img, px, axis=0), px, axis=1)
    if px >= 4:
        img[px - 1::px, :] = BACKGROUND
        img[:, px - 1::px] = BACKGROUND
    counts = [sum(c) for c in zip(*(p.counts() for p in pics))] if pics else [0] * len(STYLES)
    text = "\n".join(header + [f"{s.name} {s.hex} {n}: {s.meaning}"
                               for s, n in zip(STYLES, counts)])
    return encode_png(img, text)


def encode_png(img, text: str) -> bytes:
    """An (h, w, 3) uint8 image as a PNG (8-bit RGB), with `text` in a tEXt Description
    chunk; written with zlib and struct, so no image library is needed (the heap diff's bar
    chart uses it too)."""
    import numpy as np

    h, w = img.shape[:2]
    raw = np.concatenate([np.zeros((h, 1), np.uint8), img.reshape(h, w * 3)], axis=1)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data +
                struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    return (b"\x89PNG\r\n\x1a\n" +
            chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) +
            chunk(b"tEXt", b"Description\0" + _clean(text.replace("\n", "; ")).encode()) +
            chunk(b"IDAT", zlib.compress(raw.tobytes(), 6)) + chunk(b"IEND", b""))
