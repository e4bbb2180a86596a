"""JSON output (`--json`, `::set -o json`): each JSON-capable dcmd is run in text and in JSON
mode on the same target (the demo core, the synthetic libumem heap, a gcore of the glibc_heap
fixture), and the parsed document is checked against the text, row by row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support import compile_fixture, gcore, run_mdbpy, start_fixture
from umem_synth import leaky_heap

import mdbpy
from mdbpy.output import human_size


class Both:
    """A Debugger that runs a command twice: as text, and with ::set -o json as a document."""

    def __init__(self, dbg):
        self.dbg = dbg

    def text(self, cmd: str) -> str:
        return self.dbg.run(cmd)

    def doc(self, cmd: str) -> dict:
        self.dbg.run("::set -o json")
        try:
            out = self.dbg.run(cmd)
        finally:
            self.dbg.run("::set +o json")
        assert out.count("\n") == 1, out  # one document, one line
        return json.loads(out)


@pytest.fixture(scope="module")
def demo():
    with mdbpy.demo() as dbg:
        yield Both(dbg)


@pytest.fixture(scope="module")
def umem():
    u, truth = leaky_heap()
    with mdbpy.Debugger(u.session()) as dbg:
        yield Both(dbg)


@pytest.fixture(scope="module")
def glibc_exe(build_dir):
    return compile_fixture("glibc_heap", build_dir, flags=("-g", "-O0", "-Wno-use-after-free"))


def _glibc_core(exe, build_dir, mode, env=None):
    r = start_fixture(exe, mode, env=env)
    try:
        core = gcore(r.pid, Path(build_dir) / f"json-glibc-{mode}")
    finally:
        r.stop()
    with mdbpy.open_core(str(core), str(exe)) as dbg:
        yield Both(dbg)


@pytest.fixture(scope="module")
def glibc(glibc_exe, build_dir):
    """The fixture's leaks mode: leaks, every kind of free list, two arenas."""
    yield from _glibc_core(glibc_exe, build_dir, "leaks")


@pytest.fixture(scope="module")
def glibc_corrupt(glibc_exe, build_dir):
    """The fixture's corrupt mode: a use after free in tcache and fastbin, a smashed header."""
    yield from _glibc_core(glibc_exe, build_dir, "corrupt",
                           {"GLIBC_TUNABLES": "glibc.malloc.perturb=90"})


TARGETS = ("demo", "umem", "glibc")


@pytest.fixture(params=TARGETS)
def target(request):
    return request.getfixturevalue(request.param)


# -- findleaks --------------------------------------------------------------------------------
def leak_tables(text: str):
    """The rows (split into words) and the Total lines of ::findleaks' tables, by table."""
    rows, totals, table = [], {}, None
    for line in text.splitlines():
        words = line.split()
        if not words or line.startswith("-" * 10):
            continue
        if words[0] == "BYTES":
            table = "oversized"
        elif words[0] == "CACHE":
            table = "buffer" if words[2] == "BUFFER" else "bufctl"
        elif words[0] == "Total":
            totals[table] = {"leaks": int(words[1]), "bytes": int(words[-2])}
        else:
            rows.append((table, words))
    return rows, totals


def expected_rows(g: dict) -> list:
    """The text rows of one JSON leak group."""
    if g["table"] != "oversized":
        return [(g["table"], [f"{g['cache_addr']:016x}", str(g["count"]), f"{g['ctl']:016x}",
                              g["caller_name"]])]
    if g["kind"] == "oversize":
        return [("oversized", [str(g["size"]), str(g["count"]), f"{g['ctl']:x}",
                               g["caller_name"]])]
    name = g["kind"].upper()
    sizes = g["member_sizes"]
    return [("oversized", [str(sizes[k]), str(g["count"] if k == 0 else 1), f"{a:x}", name])
            for k, a in enumerate(g["members"])]


def test_findleaks(target):
    text = target.text("::findleaks -f")
    doc = target.doc("::findleaks -d")
    assert doc["command"] == "findleaks" and doc["fresh"] is False
    rows, totals = leak_tables(text)
    assert doc["leaks"], "every target has leaks"
    for g in doc["leaks"]:
        assert g["members"][0] == g["addr"] and set(g["unreferenced"]) <= set(g["members"])
        if g["record"]:
            assert len(g["record"]["stack"]) == len(g["record"]["stack_names"])
    assert rows == [r for g in doc["leaks"] for r in expected_rows(g)]
    assert totals == {k: v for k, v in doc["totals"].items()}
    # without -d the members are left out; the groups are the same
    brief = target.doc("::findleaks")["leaks"]
    lists = ("members", "unreferenced", "member_sizes")
    assert [{k: v for k, v in g.items() if k not in lists or g["kind"] in ("mmap", "sbrk")}
            for g in doc["leaks"]] == brief


def test_findleaks_statistics(demo):
    """-v: the statistics of a fresh scan are its document's `statistics`, leaky.c's lines
    in the text (the counts are the same scan after scan; the times and peak are not)."""
    from mdbpy.heap.report import statistics_lines

    text = [line for line in demo.text("::findleaks -fv").splitlines()
            if line.startswith("findleaks: ")]
    doc = demo.doc("::findleaks -fv")
    stats = doc["statistics"]
    assert doc["fresh"] and "statistics" not in demo.doc("::findleaks")  # only with -v
    assert statistics_lines(stats)[:12] == text[:12] and len(text) == 16
    assert stats["potential_pointers"] == sum(stats[k] for k in ("dismissals", "misses", "dups",
                                                                 "follows"))
    assert stats["follows"] > 0 and stats["actual_buffers"] <= stats["maximum_buffers"]
    assert demo.doc("::findleaks -v")["statistics"] is None  # cached: no scan to report


# -- whatis -----------------------------------------------------------------------------------
def whatis_line(h: dict) -> str:
    a = h["addr"]
    if h["source"] is None:
        return f"{a:x} is unknown"
    if h["source"] == "mappings":
        sym = f"{h['symbol']}, " if h["symbol"] else ""
        return f"{a:x} is {sym}in {h['mapping']} [{h['start']:x},{h['end']:x})"
    where = f"{a:x} is " + (f"{h['base']:x}+{h['offset']:x}, " if h["offset"] else "")
    return f"{where}{h['state']} from {h['cache']}" + (":" if h["record"] else "")


def test_whatis(target):
    leaked = next(g["addr"] for g in target.doc("::findleaks")["leaks"]
                  if g["table"] != "oversized")  # an allocator's buffer
    sym = target.dbg.symbol("main").addr
    addrs = [leaked, leaked + 5, sym + 1, 0x10]
    piped = target.doc("::walk leakbuf | ::whatis")["hits"]
    assert leaked in [h["addr"] for h in piped]
    for a in addrs:
        text = target.text(f"0x{a:x}::whatis").splitlines()
        (hit,) = target.doc(f"0x{a:x}::whatis")["hits"]
        assert hit["addr"] == a
        assert text[0] == whatis_line(hit)
        if hit["record"]:
            rec = hit["record"]
            assert text[-1 - len(rec["stack"]):-1] == [" " * 17 + n for n in rec["stack_names"]]
    kinds = [target.doc(f"0x{a:x}::whatis")["hits"][0]["source"] for a in addrs]
    assert kinds[2:] == ["mappings", None] and kinds[0] == kinds[1] != "mappings"
    every = target.doc(f"0x{leaked:x}::whatis -a")["hits"]
    assert [h["source"] for h in every][-1] == "mappings"
    assert target.text(f"0x{leaked:x}::whatis -a").count(f"{leaked:x} is ") == len(every)


# -- heap_verify, heap_stats ------------------------------------------------------------------
@pytest.mark.parametrize("name", ("demo", "umem", "glibc_corrupt"))
def test_heap_verify(request, name):
    target = request.getfixturevalue(name)
    text = target.text("::heap_verify").splitlines()
    doc = target.doc("::heap_verify")
    bugs = [line for line in text if line.startswith("BUG ")]
    objs = [line.split()[2] for line in text if line.startswith("INFO: Object ")]
    problems = [p for a in doc["allocators"] for p in a["problems"]]
    assert problems, "every target has planted damage"
    assert bugs == [f"BUG {p['group']}: {p['kind']}" for p in problems]
    assert objs == [f"0x{p['addr']:x}" for p in problems]
    summaries = [line for line in text if line.startswith(tuple(
        a["allocator"] + ": " for a in doc["allocators"]))]
    assert summaries == [f"{a['allocator']}: {a['summary']}" for a in doc["allocators"]]
    for p in problems:
        for r in p["records"]:
            assert r["label"] and len(r["stack"]) == len(r["stack_names"])


def test_heap_stats(target):
    text = target.text("::heap_stats").splitlines()
    doc = target.doc("::heap_stats")
    for a in doc["allocators"]:
        start = text.index(f"{a['allocator'] + ' cache':<25s}" + text[0][25:])
        body = text[start + 3:start + 3 + len(a["rows"])]
        assert [[line[:25].rstrip()] + line[26:].split() for line in body] == [
            [r["group"], str(r["bufsize"]), str(r["total"]), str(r["inuse"]), str(r["free"]),
             human_size(r["memory"])] for r in a["rows"]]
        t = a["total"]
        assert text[start + 4 + len(a["rows"])].split() == [
            "Total", str(t["total"]), str(t["inuse"]), str(t["free"]), human_size(t["memory"])]
        assert t["inuse"] == sum(r["inuse"] for r in a["rows"])


# -- stacks -----------------------------------------------------------------------------------
def test_stacks(target):
    text = target.text("::stacks")
    doc = target.doc("::stacks")
    shown = []
    for t in doc["threads"]:
        shown.append(f"THREAD {t['tid']} ({t['name']})" if t["name"] else f"THREAD {t['tid']}")
        shown += [f"{f['name']}()" for f in t["frames"]]
        shown.append("")
    assert text == "\n".join(shown) + "\n"
    assert [t.tid for t in target.dbg.threads()] == [t["tid"] for t in doc["threads"]]


def test_stacks_with_lines_and_frame_pointers(demo):
    text = demo.text("::stacks -v").splitlines()
    doc = demo.doc("::stacks -l")
    frames = [f for t in doc["threads"] for f in t["frames"]]
    assert [line for line in text if line and not line.startswith("THREAD")] == [
        f"{f['fp']:016x} {f['name']}()" for f in frames]


# -- the mode itself --------------------------------------------------------------------------
def test_pipes_stay_text_and_other_dcmds_print_text(demo):
    demo.dbg.run("::set -o json")
    try:
        assert demo.dbg.run("::walk leakbuf | ::whatis -q").startswith("{")
        assert demo.dbg.run("::heap_stats | ::head -n 1") == demo.dbg.run(
            "::set +o json; ::heap_stats | ::head -n 1")
    finally:
        demo.dbg.run("::set +o json")
    assert demo.dbg.run("::set").count("json") == 0


def test_cli_json_flag_one_document_per_command():
    p = run_mdbpy("-S", "--demo", "--json", "-e", "::findleaks; ::heap_stats; ::status")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    docs = [json.loads(line) for line in lines[:2]]
    assert [d["command"] for d in docs] == ["findleaks", "heap_stats"]
    assert docs[0]["leaks"][0]["caller_name"] == "parse_line+0x9"
    assert lines[2].startswith("debugging core file of confsrv")  # not JSON-capable: text
    p = run_mdbpy("-S", "--demo", "-o", "json", "-e", "::set")
    (opts,) = [line for line in p.stdout.splitlines() if "debugger options:" in line]
    assert "json" in opts.split(":")[1].replace(",", " ").split()


# -- the allocators' listings -----------------------------------------------------------------
def rows_of(text: str, skip: int = 1) -> list[list[str]]:
    return [line.split() for line in text.splitlines()[skip:]]


def test_sim_listings(demo):
    caches = demo.doc("::slabinfo")["caches"]
    assert rows_of(demo.text("::slabinfo")) == [
        [c["name"], *map(str, (c["active_objs"], c["num_objs"], c["objsize"], c["objperslab"],
                               c["pagesperslab"])), ":", "slabdata", str(c["active_slabs"]),
         str(c["num_slabs"])] for c in caches]
    rows = demo.doc("::kmem_cache")["caches"]
    assert [r["addr"] for r in rows] == [c["addr"] for c in caches]
    assert rows_of(demo.text("::kmem_cache")) == [
        [f"{r['addr']:016x}", r["name"], r["flag_names"], *map(str, (
            r["object_size"], r["size"], r["slabs"], r["objects"]))] for r in rows]
    one = demo.doc(f"0x{rows[5]['addr']:x}::kmem_cache")["caches"]
    assert one == [rows[5]]


def test_umem_listings(umem):
    caches = umem.doc("::umem_cache")["caches"]
    assert rows_of(umem.text("::umem_cache")) == [
        [f"{c['addr']:016x}", c["name"], f"{c['flags']:04x}", f"{c['cflags']:08x}",
         str(c["bufsize"]), str(c["buftotal"])] for c in caches]
    stat = umem.doc("::umastat")["caches"]
    text = umem.text("::umastat").splitlines()[3:3 + len(stat)]
    assert [line.split() for line in text] == [
        [c["name"], str(c["bufsize"]), str(c["inuse"]), c["ptc"], str(c["total"]),
         human_size(c["memory"]), str(c["alloc"]), str(c["fail"])] for c in stat]
    assert [c["addr"] for c in stat] == [c["addr"] for c in caches]
    # the Total [arena] lines and the vmem table, printed back in their words
    doc, lines = umem.doc("::umastat"), umem.text("::umastat").splitlines()
    totals = [line.split() for line in lines if line.startswith("Total [")]
    assert totals == [["Total", f"[{r['arena']}]", human_size(r["memory"]), str(r["alloc"]),
                       str(r["fail"])] for r in doc["totals"]]
    vmem = lines[next(k for k, x in enumerate(lines) if x.startswith("vmem ")) + 3:-1]
    assert vmem == [f"{'':{4 * r['depth']}s}{r['name']:<{25 - 4 * r['depth']}s} "
                    f"{human_size(r['inuse']):>9s} {human_size(r['total']):>10s} "
                    f"{human_size(r['imported']):>9s} {r['alloc']:9d} {r['fail']:5d} "
                    for r in doc["vmem"]]
    assert {r["name"] for r in doc["vmem"]} >= {"mmap_heap", "umem_oversize"}
    assert any(r["depth"] > 0 for r in doc["vmem"]) and len(doc["totals"]) >= 1


def bins_text(lists: list) -> list[str]:
    return [f"{b['name']}{'' if b['count'] is None else ' count=' + str(b['count'])} "
            f"[{len(b['chunks'])}]: " + " -> ".join(f"0x{c:x}" for c in b["chunks"])
            for b in lists]


@pytest.mark.parametrize("cmd", ("::fastbins", "::unsortedbin", "::smallbins", "::largebins",
                                 "::tcachebins"))
def test_ptmalloc_bins(glibc, cmd):
    text = [line for line in glibc.text(cmd).splitlines() if not line.startswith("    ")]
    doc = glibc.doc(cmd)
    shown = []
    if cmd == "::tcachebins":
        for tc in doc["tcaches"]:
            shown.append(f"tcache 0x{tc['addr']:x} (thread {tc['tid']})")
            shown += bins_text(tc["bins"])
    else:
        for a in doc["arenas"]:
            shown.append(f"arena 0x{a['addr']:x}")
            shown += bins_text(a["bins"])
    assert text == shown
    assert any(b["chunks"] for group in doc.get("tcaches", doc.get("arenas"))
               for b in group["bins"]) or cmd == "::largebins"


def test_ptmalloc_heaps_and_chunks(glibc):
    """::heaps and ::malloc_chunks: each JSON row printed back in the text's format is the
    text's line (a main-arena heap has no heap_info: null in JSON, '-' in the text)."""
    heaps = glibc.doc("::heaps")["heaps"]
    assert glibc.text("::heaps").splitlines()[1:] == [
        f"{h['arena']:016x} {'-' if h['heap_info'] is None else format(h['heap_info'], '016x'):16s}"
        f" {h['start']:016x} {h['end']:016x}" for h in heaps]
    assert [h["heap_info"] is None for h in heaps] == [True, False]  # main arena, thread arena
    for cmd in ("::malloc_chunks", "::malloc_chunks -f"):
        chunks = glibc.doc(cmd)["chunks"]
        assert glibc.text(cmd).splitlines()[1:] == [
            f"{c['addr']:016x} {c['size']:#10x} {c['flags']:5s} {c['state']:6s} "
            f"{c['where'] or ''}".rstrip() for c in chunks]
        states = {c["state"] for c in chunks}
        assert states == ({"free"} if "-f" in cmd else {"inuse", "free", "top", "tcache"})
    assert any(c["where"] == "mmapped" for c in glibc.doc("::malloc_chunks -u")["chunks"])


def test_ptmalloc_arenas(glibc):
    arenas = glibc.doc("::arenas")["arenas"]
    assert len(arenas) == 2
    assert rows_of(glibc.text("::arenas")) == [
        [f"{a['addr']:016x}", str(a["index"]), str(a["heaps"]), f"{a['top']:016x}",
         str(a["system_mem"]), str(a["attached_threads"])] for a in arenas]
