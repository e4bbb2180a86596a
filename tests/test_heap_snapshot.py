"""Heap snapshots and diffs (issue 24 point 2): ::heap_snapshot, ::heapdiff and `mdbpy diff`.

A glibc fixture grows by a known set between two points (500 72-byte records from grow_cache(),
40 4000-byte blobs from grow_blobs(), 100 of its 24-byte records freed): the diff, live and
between the two snapshot files, shows exactly that growth in text, JSON and the plot. A
simulated heap, whose allocator keeps stacks, checks the by-caller grouping against the
simulator's ground truth. A snapshot read back equals the heap mdbpy reads, and a damaged,
cut or newer snapshot is one line and a failure.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from support import compile_fixture, engine_session, read_line, run_in, run_mdbpy


def chunk(request: int) -> int:
    """glibc's chunk size for malloc(request) on x86-64 (what ::heap_stats names a class)."""
    return max(32, (request + 8 + 15) & ~15)


def usable(request: int) -> int:
    """The buffer size mdbpy reports for a malloc(request) chunk (its usable size)."""
    return chunk(request) - 8


def one_error(r) -> str:
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


@pytest.fixture(scope="module")
def grown(tmp_path_factory):
    """The fixture snapshotted at A (live), grown, snapshotted at B (live), still running at B;
    ::typegraph runs before each snapshot, so the types are known."""
    tmp = tmp_path_factory.mktemp("growth")
    exe = compile_fixture("heap_growth", tmp)
    import subprocess

    proc = subprocess.Popen([str(exe)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = read_line(proc, 20)
        assert line.startswith("READY"), line
        info = dict(kv.split("=") for kv in line.split()[1:])
        a, b = tmp / "A.npz", tmp / "B.npz"
        r = run_mdbpy("-S", "-p", proc.pid, "-e", f"::typegraph; ::heap_snapshot {a}")
        assert r.returncode == 0, r.stderr
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert read_line(proc, 20).strip() == "B"
        r = run_mdbpy("-S", "-p", proc.pid, "-e", f"::typegraph; ::heap_snapshot {b}")
        assert r.returncode == 0, r.stderr
        assert f"{b}: " in r.stdout
        yield proc, {k: int(v) for k, v in info.items()}, a, b, tmp
    finally:
        proc.kill()
        proc.wait()


def expected(info) -> dict[str, list[tuple[str, int, int]]]:
    """The rows each axis must show, in order: (key, net buffers, net bytes)."""
    blob, rec, small = info["blob_size"], info["rec_size"], info["small_size"]
    grow = [(blob, info["blobs"], "struct blob"), (rec, info["cache"], "struct rec")]
    rows = {"size": [(str(usable(n)), k, k * usable(n)) for n, k, _ in grow],
            "cache": [(str(chunk(n)), k, k * usable(n)) for n, k, _ in grow],
            "type": [(t, k, k * usable(n)) for n, k, t in grow]}
    freed = info["freed"]
    for axis, key in (("size", str(usable(small))), ("cache", str(chunk(small))),
                      ("type", "struct small")):
        rows[axis].append((key, -freed, -freed * usable(small)))
    return rows


def table(text: str, axis: str) -> list[tuple[str, int, int]]:
    """(key, net buffers, net bytes) of each row of the BY <AXIS> table of ::heapdiff's text:
    the key is all but the six numbers (NET BYTES, NET, NEW, NEW BYTES, FREED, FREED BYTES)."""
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(f"BY {axis.upper()} "))
    out = []
    for ln in lines[start + 2:]:
        if not ln.strip() or ln.startswith("..."):
            break
        words = ln.split()
        out.append((" ".join(words[:-6]), int(words[-5]), int(words[-6])))
    return out


def check_text(text: str, info) -> None:
    want = expected(info)
    for axis in ("size", "cache", "type"):
        assert table(text, axis) == want[axis], (axis, text)
    assert "BY CALLER" not in text  # glibc keeps no stacks: no caller table


def check_json(doc: dict, info) -> None:
    want = expected(info)
    assert doc["command"] == "heapdiff"
    for axis in ("size", "cache", "type"):
        assert [(r["key"], r["net"], r["net_bytes"]) for r in doc["by"][axis]] == want[axis]
    first = doc["by"]["size"][0]
    assert (first["new"], first["new_bytes"], first["freed"], first["freed_bytes"]) == (
        info["blobs"], info["blobs"] * usable(info["blob_size"]), 0, 0)
    added = sum(k * usable(n) for n, k in ((info["blob_size"], info["blobs"]),
                                           (info["rec_size"], info["cache"])))
    assert doc["total"] == {"key": "total", "new": info["blobs"] + info["cache"],
                            "new_bytes": added, "freed": info["freed"],
                            "freed_bytes": info["freed"] * usable(info["small_size"]),
                            "net": info["blobs"] + info["cache"] - info["freed"],
                            "net_bytes": added - info["freed"] * usable(info["small_size"])}
    assert doc["by"]["caller"] == [{"key": "<no stack>", "new": info["blobs"] + info["cache"],
                                    "new_bytes": added, "freed": info["freed"],
                                    "freed_bytes": info["freed"] * usable(info["small_size"]),
                                    "net": doc["total"]["net"],
                                    "net_bytes": doc["total"]["net_bytes"]}]


def test_heapdiff_live_shows_exactly_the_growth(grown):
    proc, info, a, _b, tmp = grown
    r = run_mdbpy("-S", "-p", proc.pid, "-e", f"::typegraph; ::heapdiff -o {tmp}/live.svg {a}")
    assert r.returncode == 0, r.stderr
    check_text(r.stdout, info)
    r = run_mdbpy("-S", "--json", "-p", proc.pid, "-e", f"::typegraph; ::heapdiff {a}")
    assert r.returncode == 0, r.stderr
    check_json(json.loads(r.stdout.splitlines()[-1]), info)


def test_mdbpy_diff_of_two_snapshots(grown):
    _proc, info, a, b, tmp = grown
    svg, png = tmp / "growth.svg", tmp / "growth.png"
    r = run_mdbpy("diff", a, b, "--svg", svg)
    assert r.returncode == 0, r.stderr
    check_text(r.stdout, info)
    assert f"{svg}: 3 bars of growth by type" in r.stdout
    r = run_mdbpy("diff", "--json", a, b)
    assert r.returncode == 0, r.stderr
    check_json(json.loads(r.stdout), info)
    # the plot: one bar per grower, the top grower first, named
    text = svg.read_text()
    assert text.startswith("<svg") and text.count('class="bar"') == 3
    first = text.index("struct blob")
    assert first < text.index("struct rec") < text.index("struct small")
    assert f"struct blob: +{info['blobs'] * usable(info['blob_size'])} bytes" in text
    r = run_mdbpy("diff", a, b, "--png", png, "-a", "size", "-n", "1")
    assert r.returncode == 0, r.stderr
    data = png.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert f"{usable(info['blob_size'])}: +".encode() in data  # the caption, in tEXt
    assert table(r.stdout, "size") == expected(info)["size"][:1]


def test_snapshot_round_trip_equals_the_buffer_table(grown, tmp_path):
    from mdbpy.heap.picture import group_label
    from mdbpy.heap.snapshot import COLUMNS, load

    proc, _info, _a, _b, _tmp = grown
    path = tmp_path / "now.npz"
    with engine_session(proc.pid) as s:
        out = run_in(s, "::typegraph; ::heap_snapshot " + str(path))
        assert f"{path}: " in out, s.err.getvalue()
        snap = load(str(path))
        allocs = s.allocators()
        tables = [a.buffers() for a in allocs]
        graph = s.cache[("types", "typegraph")]
    assert set(snap.cols) == set(COLUMNS)
    assert snap.allocators == [a.name for a in allocs] == ["ptmalloc"]
    cat = lambda f: np.concatenate([f(k, t) for k, t in enumerate(tables)])  # noqa: E731
    assert np.array_equal(snap.addr, cat(lambda k, t: t.base))
    assert np.array_equal(snap.size, cat(lambda k, t: t.size))
    assert np.array_equal(snap.state, cat(lambda k, t: t.state))
    assert np.array_equal(snap.kind, cat(lambda k, t: t.kind))
    assert np.array_equal(snap.allocator, cat(lambda k, t: np.full(len(t), k)))
    groups = [group_label(t.groups[g]) for t in tables for g in t.group.tolist()]
    assert list(snap.labels("groups")[snap.group]) == groups
    assert np.all(snap.stack == -1) and len(snap.stack_pcs) == 0  # glibc records no stacks
    # the type of each allocated buffer is the typegraph's, nothing for the free ones
    types = []
    for addr, st in zip(snap.addr.tolist(), snap.state.tolist()):
        p = graph.whattype(addr) if st == 1 else None
        types.append(p.type if p is not None and p.type is not None else "<unknown>")
    assert list(snap.labels("types")[snap.type]) == types
    t = snap.totals()
    assert snap.meta["totals"] == t and snap.meta["pid"] == proc.pid
    assert snap.meta["format"] == "1.0" and snap.meta["exe"].endswith("heap_growth")
    assert t["allocated"] == int((snap.state == 1).sum())


def _rewrite(src, dst, **changes) -> None:
    with np.load(src, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays.update(changes)
    with open(dst, "wb") as f:
        np.savez(f, **arrays)


def _every_flipped_window_is_refused(data: bytes, tmp_path) -> None:
    """Damage anywhere in the file is either refused as one MdbError or lands in bytes no
    reader looks at (a timestamp in a zip header) and changes nothing read: never another
    exception and never different data. Where a fixed offset lands depends on the
    snapshot's size (paths, pids), so windows of several lengths are flipped across the
    start of every member (zip and array headers), through the column data and over the
    central directory."""
    import io
    import zipfile

    from mdbpy.errors import MdbError
    from mdbpy.heap import snapshot

    with zipfile.ZipFile(io.BytesIO(data)) as z:
        starts = [m.header_offset for m in z.infolist()]
    offsets = {o + d for o in starts for d in range(0, 256, 8)}
    offsets |= set(range(0, len(data), max(64, len(data) // 128)))
    path = tmp_path / "window.npz"
    path.write_bytes(data)
    whole = snapshot.load(str(path))
    for off in sorted(offsets):
        for width in (1, 16, 200):
            path.write_bytes(data[:off] + bytes(x ^ 0xFF for x in data[off:off + width])
                             + data[off + width:])
            try:
                got = snapshot.load(str(path))
            except MdbError as e:
                assert "window.npz" in str(e) and "\n" not in str(e), (off, width, e)
                continue
            assert got.meta == whole.meta and got.types == whole.types, (off, width)
            assert all(np.array_equal(got.cols[c], whole.cols[c]) for c in whole.cols), \
                (off, width)


def test_bad_snapshots_are_one_line_and_a_failure(grown, tmp_path):
    _proc, _info, _a, b, _tmp = grown
    data = b.read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[:len(data) // 2])
    (tmp_path / "garbage.npz").write_bytes(b"not a snapshot at all\n" * 10)
    (tmp_path / "flipped.npz").write_bytes(data[:200] + bytes(x ^ 0xFF for x in data[200:400])
                                           + data[400:])
    with np.load(b, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        addr = z["addr"]
    _rewrite(b, tmp_path / "newer.npz", meta=np.array(json.dumps({**meta, "format": "2.0"})))
    _rewrite(b, tmp_path / "minor.npz", meta=np.array(json.dumps({**meta, "format": "1.7"})))
    _rewrite(b, tmp_path / "short.npz", size=np.zeros(len(addr) - 1, np.uint64))
    _rewrite(b, tmp_path / "pickled.npz", groups=np.array([{"x": 1}], dtype=object))
    _rewrite(b, tmp_path / "nometa.npz", meta=np.array("{}"))
    for name in ("cut", "garbage", "flipped", "newer", "short", "pickled", "nometa"):
        path = tmp_path / f"{name}.npz"
        r = run_mdbpy("diff", path, b)
        assert r.returncode == 1, (name, r.stdout, r.stderr)
        line = one_error(r)
        assert line.startswith("mdbpy: ") and str(path) in line, line
        if name == "newer":
            assert "snapshot format 2.0 is newer" in line and "upgrade mdbpy" in line
        else:
            assert "not a readable mdbpy heap snapshot" in line, line
        r = run_mdbpy("-S", "-p", _proc.pid, "-e", f"::heapdiff {path}")
        assert r.returncode == 1 and str(path) in one_error(r), (name, r.stderr)
    _every_flipped_window_is_refused(data, tmp_path)
    r = run_mdbpy("diff", tmp_path / "minor.npz", b)  # a newer minor version is read
    assert r.returncode == 0, r.stderr
    r = run_mdbpy("diff", b)
    assert r.returncode == 2 and "diff takes two snapshots or cores" in r.stderr
    r = run_mdbpy("diff", "-a", "colour", b, b)
    assert r.returncode == 2 and "unknown axis 'colour'" in r.stderr
    r = run_mdbpy("diff", tmp_path / "missing.npz", b)
    assert r.returncode == 1 and "missing.npz" in one_error(r)


# -- the simulator: stacks, so callers ------------------------------------------------------
def scenario(grow: bool) -> str:
    """main allocates 20 24-byte buffers, setup() 5 conns; grown, grow_cache() allocates 30
    conns, grow_blobs() 6 1000-byte buffers, and main frees 10 of its own."""
    lines = ["program growth", "pid 100", "seed 1", "cache conn 96", "thread main", "call main"]
    lines += [f"s{i} = kmalloc 24" for i in range(20)]
    lines += ["call setup"] + [f"c{i} = alloc conn" for i in range(5)] + ["ret"]
    if grow:
        lines += ["call grow_cache"] + [f"g{i} = alloc conn" for i in range(30)] + ["ret"]
        lines += ["call grow_blobs"] + [f"b{i} = kmalloc 1000" for i in range(6)] + ["ret"]
        lines += [f"free s{i}" for i in range(10)]
    return "\n".join(lines) + "\n"


def test_sim_diff_groups_by_caller_as_the_ground_truth_says(tmp_path):
    from mdbpy.sim.build import build, write

    (_pa, ca, ta), (pb, cb, tb) = (write(build(scenario(g)), str(tmp_path / n))
                                   for g, n in ((False, "a"), (True, "b")))
    truth_a, truth_b = (json.load(open(t)) for t in (ta, tb))
    # ground truth of the new buffers: the objects of the grown program's returned frames
    # (its leaks) that the first program did not have, by the function that allocated them
    # (mdbpy's size of a buffer is its cache's object size: conn's 96, kmalloc-N's N)
    old = {x["address"] for x in truth_a["leaks"]}
    want: dict[str, list[int]] = {}
    for x in truth_b["leaks"]:
        if x["address"] not in old:
            w = want.setdefault(x["alloc_stack"][0], [0, 0])
            w[0] += 1
            w[1] += 96 if x["cache"] == "conn" else int(x["cache"].split("-")[1])
    assert want == {"grow_cache": [30, 30 * 96], "grow_blobs": [6, 6 * 1024]}
    r = run_mdbpy("diff", "--json", "-n", "0", ca, cb)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    rows = [(g["key"], g["new"], g["new_bytes"], g["freed"], g["freed_bytes"])
            for g in doc["by"]["caller"]]
    assert rows == [("grow_blobs", *want["grow_blobs"], 0, 0),
                    ("grow_cache", *want["grow_cache"], 0, 0), ("main", 0, 0, 10, 10 * 32)]
    assert [(g["key"], g["net"]) for g in doc["by"]["cache"]] == [
        ("kmalloc-1024", 6), ("conn", 30), ("kmalloc-32", -10)]
    stacks = doc["by"]["stack"]
    assert len(stacks) == 46  # a call site per statement: one stack per buffer
    assert all(g["stack_names"][-1].startswith("_start+") for g in stacks)
    assert {g["stack_names"][0].split("+")[0] for g in stacks} == {"grow_blobs", "grow_cache",
                                                                    "main"}
    # ::heapdiff in the grown program against a snapshot of the first; the plot's bars are the
    # callers
    snap = tmp_path / "a.npz"
    r = run_mdbpy("-S", _pa, ca, "-e", f"::heap_snapshot {snap}")
    assert r.returncode == 0 and "25 allocated" in r.stdout and "25 stacks" in r.stdout
    svg = tmp_path / "callers.svg"
    r = run_mdbpy("-S", pb, cb, "-e", f"::heapdiff -o {svg} {snap}")
    assert r.returncode == 0, r.stderr
    assert table(r.stdout, "caller") == [("grow_blobs", 6, 6144), ("grow_cache", 30, 2880),
                                         ("main", -10, -320)]
    text = svg.read_text()
    assert text.index("grow_blobs: +6144 bytes") < text.index("grow_cache") < text.index("main")


def test_png_is_a_valid_image(grown, tmp_path):
    """The PNG's chunks are well formed (lengths and CRCs), so any viewer opens it."""
    import zlib

    _proc, _info, a, b, _tmp = grown
    png = tmp_path / "g.png"
    assert run_mdbpy("diff", "-o", png, a, b).returncode == 0
    data = png.read_bytes()[8:]
    kinds = []
    while data:
        n, = struct.unpack(">I", data[:4])
        kind, body, crc = data[4:8], data[8:8 + n], data[8 + n:12 + n]
        assert struct.unpack(">I", crc)[0] == zlib.crc32(kind + body) & 0xFFFFFFFF
        kinds.append(kind)
        data = data[12 + n:]
    assert kinds == [b"IHDR", b"tEXt", b"IDAT", b"IEND"]


def test_series_of_a_live_process_shows_the_trend(tmp_path):
    """-p PID --every S --count 2: a snapshot, the growth while the process runs, another,
    then the trend; the snapshots are in the --snapshots directory."""
    import subprocess

    from support import mdbpy_cmd

    from mdbpy.heap.snapshot import load

    exe = compile_fixture("heap_growth", tmp_path)
    proc = subprocess.Popen([str(exe)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    series = tmp_path / "series"
    mdb = None
    try:
        info = dict(kv.split("=") for kv in read_line(proc, 20).split()[1:])
        mdb = subprocess.Popen(mdbpy_cmd("-S", "-p", proc.pid, "--every", "2", "--count", "2",
                                         "--snapshots", series), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        assert read_line(mdb, 60).startswith(f"{series}/snapshot-000.npz: ")
        proc.stdin.write("go\n")  # grown during the two seconds between the snapshots
        proc.stdin.flush()
        assert read_line(proc, 20).strip() == "B"
        out, err = mdb.communicate(timeout=120)
        assert mdb.returncode == 0, err
    finally:
        if mdb is not None and mdb.poll() is None:
            mdb.kill()
        proc.kill()
        proc.wait()
    first, last = (load(str(series / f"snapshot-00{k}.npz")).totals() for k in (0, 1))
    grown = int(info["blobs"]) * usable(4000) + int(info["cache"]) * usable(72) - \
        int(info["freed"]) * usable(24)
    assert last["allocated_bytes"] - first["allocated_bytes"] == grown
    lines = out.splitlines()
    assert lines[0].startswith(f"{series}/snapshot-001.npz: ")
    assert lines[-5].split()[-1] == f"+{grown}"  # SINCE FIRST of the last snapshot
    assert lines[-1].split() == [str(usable(72)), f"+{int(info['cache']) * usable(72)}", "0",
                                 str(int(info["cache"]) * usable(72))]
    assert lines[-2].split()[0] == str(usable(4000))
    r = run_mdbpy("-p", proc.pid, "--every", "1")
    assert r.returncode == 2 and "--every and --count go together" in r.stderr
