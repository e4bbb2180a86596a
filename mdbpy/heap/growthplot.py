"""The heap diff as a picture: one horizontal bar per top grower of an axis, its length the net
bytes (growth to the right in blue, shrinkage to the left in grey), labelled with the key and
its numbers.

Drawn the way ::heapmap draws (mdbpy.heap.picture): SVG written as text, PNG encoded with zlib
and struct by picture.encode_png, so a plot needs no image library. A PNG has no font: its
labels go into its tEXt chunk, in the order of the bars.
"""

from __future__ import annotations

from mdbpy.heap.diff import Growth
from mdbpy.heap.picture import _clean, encode_png

GROW, SHRINK = (0x3A, 0x7B, 0xD5), (0xA0, 0xA0, 0xA0)
BAR, PITCH, LINE, CHAR = 14, 20, 16, 7  # px: a bar, a bar and its gap, a text line, a glyph
SPAN = 400  # px of the longest bar


def _hex(rgb) -> str:
    return "#%02x%02x%02x" % rgb


def _caption(g: Growth) -> str:
    return (f"{g.key.splitlines()[0] if g.key else g.key}: {g.net_bytes:+d} bytes, "
            f"{g.net:+d} buffers ({g.new} new, {g.freed} freed)")


def _scale(rows: list[Growth]) -> tuple[int, float]:
    """(the zero line's x in bar units, px per byte): room on the left only for shrinkage."""
    most = max([abs(g.net_bytes) for g in rows] + [1])
    left = max([-g.net_bytes for g in rows] + [0])
    zero = int(SPAN * left / (most + left)) if left else 0
    return zero, (SPAN - zero) / most if left else SPAN / most


def render_svg(rows: list[Growth], title: str) -> str:
    """An SVG document: the title, then per row its caption and its bar, each bar's <title>
    the caption (a tooltip)."""
    from xml.sax.saxutils import escape

    zero, per = _scale(rows)
    body, y = [], LINE
    body.append(f'<text x="0" y="{y - 4}">{escape(_clean(title))}</text>')
    for g in rows:
        cap = escape(_clean(_caption(g)))
        y += LINE
        body.append(f'<text x="0" y="{y - 4}">{cap}</text>')
        w = max(1, round(abs(g.net_bytes) * per))
        x = zero if g.net_bytes >= 0 else zero - w
        fill = _hex(GROW if g.net_bytes >= 0 else SHRINK)
        body.append(f'<rect x="{x}" y="{y}" width="{w}" height="{BAR}" fill="{fill}" '
                    f'class="bar"><title>{cap}</title></rect>')
        y += PITCH
    width = max([SPAN] + [len(_caption(g)) * CHAR for g in rows] + [len(title) * CHAR]) + CHAR
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{y + LINE}" '
            f'font-family="monospace" font-size="11">\n<title>{escape(_clean(title))}</title>\n'
            f'<rect width="100%" height="100%" fill="#ffffff"/>\n' + "\n".join(body) +
            "\n</svg>\n")


def render_png(rows: list[Growth], title: str) -> bytes:
    """A PNG of the bars alone, one per PITCH pixels; the title and captions in tEXt."""
    import numpy as np

    zero, per = _scale(rows)
    img = np.full((max(len(rows), 1) * PITCH, SPAN + 2, 3), 255, np.uint8)
    for k, g in enumerate(rows):
        w = max(1, round(abs(g.net_bytes) * per))
        x = zero if g.net_bytes >= 0 else zero - w
        img[k * PITCH + 3:k * PITCH + 3 + BAR, x + 1:x + 1 + w] = GROW if g.net_bytes >= 0 \
            else SHRINK
    return encode_png(img, "\n".join([title] + [_caption(g) for g in rows]))
