"""::heapmap, the heap picture: on the demo (the simulator's ground truth), a real glibc core and
a synthetic libumem heap, the leaked and corrupt buffers are drawn in their colours; the plain
text cells, the SVG rects and the PNG pixels are read back and compared buffer by buffer."""

from __future__ import annotations

import io
import os
import re
import struct
import xml.etree.ElementTree as ET
import zlib
from types import SimpleNamespace

import numpy as np
import pytest
from support import compile_fixture, gcore, run_mdbpy, start_fixture

from mdbpy.heap import picture as P
from mdbpy.heap.model import ALLOC
from mdbpy.lang.engine import Engine
from mdbpy.session import Session

SVG = "{http://www.w3.org/2000/svg}"
ROW = re.compile(r"([0-9a-f]+)-([0-9a-f]+)  (\S+)$")
LEGEND = "# allocated {}  . free {}  L leaked {}  X corrupt {}  m metadata {}  - other {}"


class Harness:
    """A session on a target with an engine; run() returns one command line's output."""

    def __init__(self, session: Session):
        self.session = session
        self.engine = Engine(session)

    def __call__(self, cmd: str) -> str:
        for f in (self.session.out, self.session.err):
            f.seek(0)
            f.truncate()
        self.engine.run_string(cmd)
        return self.session.out.getvalue()

    def err(self) -> str:
        return self.session.err.getvalue()

    def table(self):
        (alloc,) = self.session.allocators()
        return alloc.buffers()


def rows(text: str) -> list[tuple[int, int, str]]:
    """(start, end, cells) of each drawn row."""
    return [(int(m[1], 16), int(m[2], 16), m[3]) for m in map(ROW.match, text.splitlines())
            if m]


def cells(text: str) -> str:
    return "".join(c for _a, _b, c in rows(text))


def expected(table, leaked=(), corrupt=()) -> str:
    """The cells a picture per buffer must show: # or . by state, L and X where planted."""
    out = []
    for i in range(len(table)):
        base = int(table.base[i])
        out.append("X" if base in corrupt else "L" if base in leaked else
                   "#" if table.state[i] == ALLOC else ".")
    return "".join(out)


def cell_at(text: str, addr: int, unit: int) -> str:
    """The character of the byte cell holding addr."""
    for a, b, c in rows(text):
        if a <= addr < b:
            return c[(addr - a) // unit]
    raise AssertionError(f"{addr:x} is in no drawn row")


# -- the demo -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """(harness, truth) on the demo's program and core, as `mdbpy --demo` opens them."""
    from mdbpy.sim.build import build, write
    from mdbpy.sim.demo import SCENARIO
    from mdbpy.target.core import CoreTarget

    r = build(SCENARIO.read_text())
    prog, core, _ = write(r, str(tmp_path_factory.mktemp("demo")))
    s = Session(CoreTarget(core, exe=prog), out=io.StringIO(), err=io.StringIO())
    yield Harness(s), r.truth
    s.close()


def planted(truth):
    leaked = {x["address"] for x in truth["leaks"]}
    corrupt = {x["address"] for x in truth["corrupt"]}
    return leaked, corrupt


def test_text_shows_the_planted_leak_and_corruption(demo):
    h, truth = demo
    leaked, corrupt = planted(truth)
    assert len(leaked) == 1 and len(corrupt) == 3
    t = h.table()
    h.session.cache.clear()
    before = h("::heapmap")
    assert before.splitlines()[:4] == [
        "sim: 126 buffers", "one cell per buffer, 64 per row",
        "leaks: not searched (run ::findleaks, or use -l)", "corruption: not checked (use -v)"]
    assert cells(before) == expected(t)
    out = h("::heapmap -lv")
    assert out.splitlines()[2:4] == ["leaks: 1 from ::findleaks",
                                     "corruption: 3 problems in 3 buffers"]
    assert cells(out) == expected(t, leaked, corrupt)
    (r1, r2) = rows(out)
    assert r1[:2] == (int(t.base[0]), int(t.base[63] + t.size[63]))
    assert r2[:2] == (int(t.base[64]), int(t.base[-1] + t.size[-1]))
    assert out.splitlines()[-1] == LEGEND.format(7, 115, 1, 3, 0, 0)
    # both results are kept: a later picture shows them without running anything
    assert h("::heapmap") == out


def test_byte_cells(demo):
    h, truth = demo
    leaked, corrupt = planted(truth)
    (alloc,) = h.session.allocators()
    (lo, _hi), = alloc.heap_regions()
    out = h("::heapmap -lv -b 40")
    assert out.splitlines()[1] == "one cell per 0x40 bytes, 64 per row"
    assert rows(out)[0][0] == lo
    for a in leaked:
        assert [cell_at(out, a + k, 0x40) for k in (0, 0x40, 0x7F)] == ["L"] * 3
    for a in corrupt:
        assert cell_at(out, a, 0x40) == "X"
    t = h.table()
    live = [int(b) for b, st in zip(t.base, t.state) if st == ALLOC
            and int(b) not in leaked | corrupt]
    assert {cell_at(out, a, 0x40) for a in live} == {"#"}
    # a run of equal rows (the empty tail of a slab page) is drawn once, then `*`
    assert "*" in out.splitlines()


def test_one_cache(demo):
    h, truth = demo
    _, corrupt = planted(truth)
    h("::heapmap -lv")
    out = h("::heapmap -c session")
    t = h.table()
    sel = t.select(t.group == t.groups.index("session"))
    assert out.splitlines()[0] == "sim session: 16 buffers"
    assert cells(out) == expected(sel, (), corrupt)
    cache = next(c for c in h.session.allocators()[0].caches() if c.name == "session")
    assert cells(h(f"::heapmap -a {cache.addr:x}")) == cells(out)
    assert h("::heapmap -c nosuch") == ""
    assert h.err() == "mdbpy: heapmap: no buffers in nosuch (see ::heap_stats)\n"


def test_svg_rects_have_the_state_colours(demo, tmp_path):
    h, truth = demo
    leaked, corrupt = planted(truth)
    path = tmp_path / "heap.svg"
    out = h(f"::heapmap -lv -o {path}")
    assert out.splitlines() == [f"{path}: 126 cells", LEGEND.format(7, 115, 1, 3, 0, 0)]
    root = ET.parse(path).getroot()
    rects = {r.get("data-addr"): r for r in root.iter(f"{SVG}rect") if r.get("data-addr")}
    t = h.table()
    assert sorted(int(a, 16) for a in rects) == [int(b) for b in t.base]
    (leak,) = leaked
    assert rects[f"{leak:#x}"].get("fill") == P.STYLES[P.LEAK].hex == "#ffa500"
    assert rects[f"{leak:#x}"].find(f"{SVG}title").text == \
        f"{leak:#x}, 128 bytes, kmalloc-128: leaked"
    assert {rects[f"{a:#x}"].get("fill") for a in corrupt} == {P.STYLES[P.CORRUPT].hex}
    others = {r.get("fill") for a, r in rects.items() if int(a, 16) not in leaked | corrupt}
    assert others == {P.STYLES[P.ALLOC].hex, P.STYLES[P.FREE].hex}
    legend = [r.find(f"{SVG}title").text for r in root.iter(f"{SVG}rect")
              if r.get("class") == "legend"]
    assert legend == [P.STYLES[k].meaning for k in P.LEGEND_ORDER]


def png_pixels(data: bytes):
    """(width, height, rows of RGB bytes, {chunk kind: data}) of an 8-bit RGB PNG written
    without filters, every chunk's CRC checked."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, k = {}, 8
    while k < len(data):
        n, kind = struct.unpack(">I4s", data[k:k + 8])
        body = data[k + 8:k + 8 + n]
        assert struct.unpack(">I", data[k + 8 + n:k + 12 + n])[0] == zlib.crc32(kind + body)
        chunks[kind] = body
        k += 12 + n
    w, h, depth, ctype, _c, _f, _i = struct.unpack(">IIBBBBB", chunks[b"IHDR"])
    assert (depth, ctype) == (8, 2)
    raw = zlib.decompress(chunks[b"IDAT"])
    lines = [raw[y * (3 * w + 1):(y + 1) * (3 * w + 1)] for y in range(h)]
    assert {ln[0] for ln in lines} == {0}
    return w, h, [ln[1:] for ln in lines], chunks


def test_png_pixels_have_the_state_colours(demo, tmp_path):
    h, truth = demo
    leaked, corrupt = planted(truth)
    path = tmp_path / "heap.png"
    h(f"::heapmap -lv -o {path}")
    w, height, lines, chunks = png_pixels(path.read_bytes())
    px = P.cell_pixels(2 * 64)
    assert (w, height, px) == (64 * px, 2 * px, 8)
    t = h.table()

    def pixel(i):
        y, x = divmod(i, 64)
        line = lines[y * px]
        return tuple(line[3 * x * px:3 * x * px + 3])

    index = {int(b): i for i, b in enumerate(t.base)}
    assert [pixel(index[a]) for a in leaked] == [P.STYLES[P.LEAK].rgb]
    assert {pixel(index[a]) for a in corrupt} == {P.STYLES[P.CORRUPT].rgb}
    assert pixel(len(t)) == P.BACKGROUND  # after the last cell of the short second row
    assert lines[px - 1][:3] == bytes(P.BACKGROUND)  # the gap below a cell
    assert b"leaked #ffa500 1: allocated, reached from no root" in chunks[b"tEXt"]


def test_colour_on_a_terminal(demo, monkeypatch):
    h, _ = demo
    tty = SimpleNamespace(out=SimpleNamespace(isatty=lambda: True), session=h.session)
    from mdbpy_commands.core.picture import color_depth

    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("COLORTERM", "truecolor")
    assert color_depth(tty) == "truecolor"
    monkeypatch.delenv("COLORTERM")
    assert color_depth(tty) == "256"
    monkeypatch.setenv("NO_COLOR", "1")
    assert color_depth(tty) is None
    assert color_depth(SimpleNamespace(out=io.StringIO(), session=h.session)) is None
    pic = P.Picture("t", np.array([0, 8], np.uint64), np.array([8, 16], np.uint64),
                    np.array([P.LEAK, P.CORRUPT], np.uint8), [0], False)
    block = "\u2588"
    assert P.render_text(pic, "256")[1] == \
        f" 0-10  \x1b[38;5;214m{block}\x1b[38;5;162m{block}\x1b[0m"
    assert P.render_text(pic, "truecolor")[1] == \
        f" 0-10  \x1b[38;2;255;165;0m{block}\x1b[38;2;208;16;80m{block}\x1b[0m"
    assert P.render_text(pic)[1] == " 0-10  LX"


def test_errors_are_one_line(demo, tmp_path, monkeypatch):
    h, _ = demo
    for cmd, msg in [
            ("::heapmap -o x.gif", "heapmap: x.gif: the file must end in .svg or .png"),
            ("::heapmap -w 0", "heapmap: width must be 1 to 0t1024"),
            ("::heapmap -b 0", "heapmap: bytes per cell must be at least 1"),
            ("::heapmap extra", "unexpected argument 'extra'"),
            (f"::heapmap -o {tmp_path}/no/such/dir.svg",
             f"heapmap: cannot write {tmp_path}/no/such/dir.svg: No such file or directory")]:
        assert h(cmd) == ""
        assert h.err().splitlines()[0] == f"mdbpy: {msg}"
    monkeypatch.setattr(P, "MAX_CELLS", 100)
    h("::heapmap")
    assert h.err() == ("mdbpy: heapmap: 126 buffers is too many cells (at most 100); use "
                       "-b 0x400 (80 cells), or -c for one cache\n")
    h("::heapmap -b 40")
    assert h.err() == ("mdbpy: heapmap: 1280 cells of 0x40 bytes is too many (at most 100); "
                       "use -b 0x400 (80 cells), or -c for one cache\n")
    legend = h("::heapmap -b 400").splitlines()[-1]  # the suggestion fits: 80 cells
    assert h.err() == "" and sum(map(int, re.findall(r"\d+", legend))) == 80
    monkeypatch.setattr(P, "MAX_SVG_CELLS", 10)
    monkeypatch.setattr(P, "MAX_CELLS", 1000)
    h(f"::heapmap -o {tmp_path}/big.svg")
    assert h.err() == ("mdbpy: heapmap: 126 buffers is too many cells for an SVG (at most 10); "
                       "use -b 0x2000 (10 cells), -c for one cache, or a PNG\n")


def test_cli_demo_plain_when_piped():
    p = run_mdbpy("-S", "--demo", input="::findleaks\n::heapmap -v\n$q\n")
    assert p.returncode == 0, p.stderr
    out = p.stdout.splitlines()
    i = out.index("sim: 126 buffers")
    assert out[i + 2:i + 4] == ["leaks: 1 from ::findleaks",
                                "corruption: 3 problems in 3 buffers"]
    assert "\x1b" not in p.stdout and "L" in cells("\n".join(out[i:]))


# -- glibc malloc, a real core --------------------------------------------------------------
@pytest.fixture(scope="module")
def glibc_cores(build_dir):
    """{mode: (facts, session harness)} of the glibc_heap fixture's leaks and corrupt runs,
    cored by gcore and killed."""
    from mdbpy.target.core import open_file_target

    exe = compile_fixture("glibc_heap", build_dir, flags=("-g", "-O0", "-Wno-use-after-free"),
                          out_name="glibc_heap_picture")
    out = {}
    for mode, tunables in (("leaks", None), ("corrupt", "glibc.malloc.perturb=90")):
        env = dict(os.environ)
        if tunables:
            env["GLIBC_TUNABLES"] = tunables
        r = start_fixture(exe, mode, env=env)
        try:
            core = gcore(r.pid, build_dir / f"picture-{mode}")
            facts = dict(r.info)
        finally:
            r.stop()
        s = Session(open_file_target(str(core), exe=str(exe)), out=io.StringIO(),
                    err=io.StringIO())
        out[mode] = ({k: int(v, 16) for k, v in facts.items()
                      if k.startswith(("leak_", "thread_leak", "uaf_", "smashed"))},
                     Harness(s))
    yield out
    for _facts, h in out.values():
        h.session.close()


def test_glibc_leaks(glibc_cores):
    facts, h = glibc_cores["leaks"]
    out = h("::heapmap -lv")
    assert out.splitlines()[2:4] == ["leaks: 9 from ::findleaks", "corruption: heap is clean"]
    t = h.table()
    leaked = {facts[k] for k in ("leak_string", "leak_cycle_a", "leak_cycle_b", "leak_widget",
                                 "thread_leak")}
    leaked |= {facts["leak_mmapped"] + 16} | {facts["leak_list"] - 0x30 * k for k in range(3)}
    assert cells(out) == expected(t, leaked)
    assert out.splitlines()[-1].split()[8] == "9"  # L leaked 9


def test_glibc_one_arena(glibc_cores):
    """-a selects a glibc arena's chunks: the arena is each chunk's, not its group's (a size
    class), so it is looked up for all the chunks at once (Allocator.group_addrs); mmapped
    chunks belong to no arena."""
    import numpy as np

    facts, h = glibc_cores["leaks"]
    (alloc,) = h.session.allocators()
    t = alloc.buffers()
    addrs = alloc.group_addrs(t)
    assert addrs.tolist() == [alloc.group_addr(t, i) for i in range(len(t))]
    arenas = [a.addr for a in alloc.state.arenas]
    assert len(arenas) == 2 and set(addrs.tolist()) == {0, *arenas}
    whole = cells(h("::heapmap"))  # the same cells, leaks marked or not alike
    for a in arenas:
        mine = addrs == np.uint64(a)
        out = h(f"::heapmap -a {a:x}")
        assert out.splitlines()[0] == f"ptmalloc {a:#x}: {int(mine.sum())} buffers"
        assert cells(out) == "".join(c for c, m in zip(whole, mine) if m)


def test_glibc_corruption(glibc_cores):
    facts, h = glibc_cores["corrupt"]
    out = h("::heapmap -v")
    t = h.table()
    bad = {facts["uaf_tcache"], facts["uaf_fast"], facts["smashed"]}
    # verify names chunk headers: the buffers whose control address they are, not the buffer
    # before them whose usable size reaches into the header
    marked = {i for i, c in enumerate(cells(out)) if c == "X"}
    assert marked == {i for i, c in enumerate(t.ctl) if int(c) in bad}
    assert {int(t.ctl[i]) for i in marked} >= {facts["uaf_tcache"], facts["uaf_fast"]}
    # a byte cell shows the smashed header whether or not the walk kept its chunk
    assert cell_at(h("::heapmap -b 10"), facts["smashed"], 0x10) == "X"


# -- libumem, synthetic ---------------------------------------------------------------------
def test_umem_leaks_and_corruption():
    from umem_synth import leaky_heap

    u, t = leaky_heap()
    h = Harness(u.session(out=io.StringIO(), err=io.StringIO()))
    out = h("::heapmap -lv")
    table = h.table()
    leaked = {t[k] for k in ("L1", "L2", "L3", "P1", "O1")}
    assert cells(out) == expected(table, leaked, {t["C1"], t["F"]})
    c32 = t["caches"]["umem_alloc_32"].addr
    one = h(f"::heapmap -a {c32:x}")
    assert one.splitlines()[0] == f"umem {c32:#x}: 64 buffers"
    assert cells(one).count("L") == 2 and cells(one) == cells(h("::heapmap -c umem_alloc_32"))


def test_doc_page_examples(tmp_path):
    """docs/heapmap.md's ```mdb blocks print what the page says (test_docs' convention)."""
    from test_docs import page_results

    results = page_results("heapmap.md", tmp_path)
    assert len(results) == 3
    for line, cmd, want, got in results:
        assert got == want, f"docs/heapmap.md:{line}: {cmd}"
