"""`mdbpy batch` over a small fleet of simulated cores: healthy ones with planted leaks (their
ground truth from the simulator), truncated copies and a file that is no core. One record per
input in path order, exact leak counts, one-line errors, the aggregate's leak sites and error
groups, the time limit, and usage errors."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest

from mdbpy.sim.build import build, write
from support import compile_fixture, gcore, mdbpy_cmd, run_mdbpy, start_fixture

# each site is one function called once per core, allocating one buffer; the buffer leaks
# unless the core's plan keeps it in the site's global
SITES = [("parse_line", "kmalloc 128"), ("open_conn", "alloc conn"),
         ("read_msg", "kmalloc 40"), ("new_item", "kmalloc 16")]
HEALTHY = 44  # simulator cores; with GLIBC glibc cores and 3 broken inputs, a fleet of 50
GLIBC = 3  # copies of one gcore of fixtures/glibc_heap.c `sized GLIBC_CHUNKS`
GLIBC_CHUNKS = 2000  # its leaks: one in a hundred


def scenario(n: int) -> str:
    lines = ["program svc", f"pid {1000 + n}", f"seed {n + 1}", "cache conn 96",
             *(f"global keep{i}" for i in range(len(SITES))), "thread main", "call main"]
    for i, (fn, alloc) in enumerate(SITES):
        leaks = (n >> i) & 1 or i == 0  # parse_line leaks in every core
        lines += [f"call {fn}", f"p = {alloc}", f"store keep{i} = {'null' if leaks else 'p'}",
                  "ret"]
    return "\n".join(lines + ["call wait_for_work"]) + "\n"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """core path -> its truth (None for the broken inputs), and the directory."""
    d = tmp_path_factory.mktemp("fleet")
    cores = {}
    for n in range(HEALTHY):
        _, core, truth = write(build(scenario(n)), str(d / f"h{n}"))
        with open(truth) as f:
            cores[core] = json.load(f)
    for n in (1, 2):  # truncated copies: cut in half
        src = d / f"h{n}" / "svc.core"
        data = src.read_bytes()
        dst = d / f"t{n}.core"
        dst.write_bytes(data[:len(data) // 2])
        cores[str(dst)] = None
    junk = d / "notacore.core"
    junk.write_text("this is not a core file\n")
    cores[str(junk)] = None
    # the second allocator: glibc malloc, a real process's gcore
    exe = compile_fixture("glibc_heap", d, flags=("-g", "-O2", "-Wno-use-after-free"))
    r = start_fixture(exe, "sized", GLIBC_CHUNKS)
    try:
        core = gcore(r.pid, d / "glibc")
    finally:
        r.stop()
    for k in range(GLIBC):
        dst = d / f"g{k}.core"
        dst.write_bytes(core.read_bytes())
        cores[str(dst)] = {"glibc_leaks": GLIBC_CHUNKS // 100}
    return cores, d


def _glibc(truth) -> bool:
    return truth is not None and "glibc_leaks" in truth


@pytest.fixture(scope="module")
def ran(fleet, tmp_path_factory):
    cores, d = fleet
    out = tmp_path_factory.mktemp("out")
    listfile = out / "list"
    listfile.write_text(f"# the truncated ones\n{d}/t*.core\n")
    r = run_mdbpy("batch", "-j", "2", *_fleet_args(d, listfile, out), timeout=600)
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in (out / "r.jsonl").read_text().splitlines()]
    return records, json.loads((out / "agg.json").read_text()), r


def _fleet_args(d, listfile, out) -> list[str]:
    return ["-e", "::findleaks", "-o", str(out / "r.jsonl"), "--aggregate",
            str(out / "agg.json"), f"{d}/h*/svc.core", f"{d}/g*.core", f"@{listfile}",
            str(d / "notacore.core"), str(d / "h0" / "svc.core")]


def test_one_record_per_core_in_path_order(fleet, ran):
    cores, _ = fleet
    records, _, r = ran
    assert [rec["core"] for rec in records] == sorted(cores)  # h0 given twice: one record
    assert len(cores) == 50
    assert r.stderr.strip() == f"mdbpy: batch: 50 cores: {HEALTHY + GLIBC} ok, 3 error"


def test_healthy_cores_report_exactly_their_planted_leaks(fleet, ran):
    cores, _ = fleet
    for rec in ran[0]:
        truth = cores[rec["core"]]
        if truth is None:
            continue
        assert rec["status"] == "ok" and rec["error"] is None and rec["exit_status"] == 0
        (doc,) = rec["results"]
        assert doc["command"] == "findleaks"
        if _glibc(truth):  # no allocation stacks in glibc: the chunks alone
            assert sum(row["count"] for row in doc["leaks"]) == truth["glibc_leaks"]
            assert {row["caller_name"] for row in doc["leaks"]} == {"?"}
            assert doc["totals"]["buffer"]["leaks"] == truth["glibc_leaks"]
            continue
        found = defaultdict(int)
        for row in doc["leaks"]:
            found[(row["cache"], row["caller_name"].split("+")[0])] += row["count"]
        planted = defaultdict(int)
        for leak in truth["leaks"]:
            planted[(leak["cache"], leak["alloc_stack"][0])] += 1
        assert dict(found) == dict(planted) and planted
        assert doc["totals"]["bufctl"]["leaks"] == len(truth["leaks"])


def test_broken_inputs_are_errors_with_one_line(fleet, ran):
    cores, d = fleet
    broken = {rec["core"]: rec for rec in ran[0] if cores[rec["core"]] is None}
    assert len(broken) == 3 and all(r["status"] == "error" for r in broken.values())
    for rec in broken.values():
        assert "\n" not in rec["error"] and rec["error"]
    for n in (1, 2):
        path = str(d / f"t{n}.core")
        assert broken[path]["error"].startswith(f"core file {path} is truncated: ")
    assert broken[str(d / "notacore.core")]["error"] == (
        f"{d}/notacore.core: not an ELF file (only 24 bytes)")


def test_the_aggregate_groups_the_planted_sites(fleet, ran):
    cores, d = fleet
    _, agg, _ = ran
    assert agg["cores"] == len(cores)
    assert agg["status"] == {"ok": HEALTHY + GLIBC, "error": 3, "timeout": 0, "oom": 0}
    # glibc's groups: size classes, each leaking in all three copies
    glibc = [g for g in agg["leaks"] if g["signature"]["cache"].startswith("chunk 0x")]
    copies = sorted(c for c, t in cores.items() if _glibc(t))
    assert glibc and all(g["cores"] == GLIBC and g["examples"] == copies for g in glibc)
    assert sum(g["buffers"] for g in glibc) == GLIBC * GLIBC_CHUNKS // 100
    assert {g["signature"]["caller"] for g in glibc} == {"?"}
    expect = defaultdict(list)  # (cache, function) -> the cores leaking there, sorted
    for core in sorted(c for c, t in cores.items() if t and not _glibc(t)):
        for key in sorted({(x["cache"], x["alloc_stack"][0]) for x in cores[core]["leaks"]}):
            expect[key].append(core)
    got = {(g["signature"]["cache"], g["signature"]["caller"].split("+")[0]): g
           for g in agg["leaks"] if g not in glibc}
    assert got.keys() == expect.keys()
    for key, leaking in expect.items():
        g = got[key]
        assert g["cores"] == g["buffers"] == len(leaking)
        assert g["examples"] == leaking[:3]
        assert g["signature"]["kind"] == "buffer"
    assert got[("kmalloc-128", "parse_line")]["cores"] == HEALTHY
    assert agg["leaks"][0]["signature"]["caller"].startswith("parse_line+")  # most cores first
    sizes = {k: g["signature"]["size"] for k, g in got.items()}
    assert sizes[("kmalloc-64", "read_msg")] == 64 and sizes[("conn", "open_conn")] == 96
    errors = {g["message"]: g for g in agg["errors"]}
    trunc = errors["core file CORE is truncated: N bytes of memory missing"]
    assert trunc["cores"] == 2 and trunc["examples"] == [str(d / "t1.core"), str(d / "t2.core")]
    assert errors["CORE: not an ELF file (only N bytes)"]["cores"] == 1


def test_a_core_past_its_time_limit_is_a_timeout_and_the_batch_goes_on(fleet, tmp_path):
    cores, d = fleet
    core = str(d / "h0" / "svc.core")
    script = tmp_path / "slow.mdb"
    script.write_text("!sleep 5\n")
    r = run_mdbpy("batch", "--timeout", "1", "-f", str(script), core, str(d / "notacore.core"),
                  timeout=30)
    assert r.returncode == 0, r.stderr
    recs = [json.loads(line) for line in r.stdout.splitlines()]
    assert [x["status"] for x in recs] == ["timeout", "error"]
    assert recs[0]["error"] == "timed out after 1 s" and recs[0]["seconds"] < 4


@pytest.mark.parametrize("args, message", [
    ([], "give the commands with -e or -f (one of them)"),
    (["-e", "::status"], "no cores given"),
    (["-e", "::status", "-f", "x", "c"], "give the commands with -e or -f (one of them)"),
    (["-e", "::status", "-j", "0", "c"], "invalid number '0' (at least 1)"),
    (["-e", "::status", "--bogus", "c"], "unknown option '--bogus'"),
    (["-e", "::status", "/nonexistent/*.core"], "no file matches /nonexistent/*.core"),
    (["-e", "::status", "@/nonexistent/list"],
     "cannot read list file /nonexistent/list: No such file or directory"),
])
def test_usage_errors_are_status_2(args, message):
    r = run_mdbpy("batch", *args)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.splitlines()[0] == f"mdbpy: {message}"
    assert r.stderr.splitlines()[1].startswith("usage: mdbpy batch")


def test_records_go_to_stdout_by_default_and_name_missing_files(tmp_path):
    missing = str(tmp_path / "gone.core")
    r = run_mdbpy("batch", "-e", "::status", missing)
    assert r.returncode == 0
    (rec,) = [json.loads(line) for line in r.stdout.splitlines()]
    assert rec["status"] == "error" and rec["core"] == missing
    assert rec["error"] == f"cannot open {missing}: No such file or directory"


def test_the_memory_limit_makes_an_oom_record_and_a_roomy_one_does_not(fleet):
    _, d = fleet
    core = str(d / "h0" / "svc.core")
    recs = {}
    for mib in ("16", "4096"):
        r = run_mdbpy("batch", "--memory", mib, "-e", "::findleaks", core)
        assert r.returncode == 0, r.stderr
        (recs[mib],) = [json.loads(line) for line in r.stdout.splitlines()]
    assert recs["16"]["status"] == "oom" and recs["16"]["error"] == "out of memory (limit 16 MiB)"
    assert recs["4096"]["status"] == "ok" and recs["4096"]["results"][0]["leaks"]


def test_a_batch_run_among_planted_modules_imports_none_of_them(fleet, tmp_path):
    """The cores' directory is nobody's to trust: each core's mdbpy is started so that an
    `mdbpy/` there is never imported (the batch itself runs as the `mdbpy` command)."""
    import subprocess
    import sys
    from pathlib import Path

    _, d = fleet
    (tmp_path / "mdbpy").mkdir()
    (tmp_path / "mdbpy" / "__init__.py").write_text("open('PWNED', 'w')\n")
    script = Path(sys.executable).with_name("mdbpy")
    r = subprocess.run([str(script), "batch", "-e", "::status", str(d / "h0" / "svc.core")],
                       capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    (rec,) = [json.loads(line) for line in r.stdout.splitlines()]
    assert rec["status"] == "ok", rec
    assert not (tmp_path / "PWNED").exists()


def test_a_dask_cluster_gives_the_records_and_aggregate_of_the_local_pool(fleet, ran, tmp_path):
    """The same fleet through `--dask ADDRESS` (a dask.distributed LocalCluster of two worker
    processes): record for record what the local pool wrote, but for the time each took."""
    from distributed import LocalCluster

    _, d = fleet
    listfile = tmp_path / "list"
    listfile.write_text(f"{d}/t*.core\n")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster:
        r = run_mdbpy("batch", "--dask", cluster.scheduler_address,
                      *_fleet_args(d, listfile, tmp_path), timeout=600)
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]

    def timeless(recs):
        return [{k: v for k, v in rec.items() if k != "seconds"} for rec in recs]

    assert timeless(records) == timeless(ran[0])
    assert json.loads((tmp_path / "agg.json").read_text()) == ran[1]
    assert r.stderr == ran[2].stderr


def test_no_dask_scheduler_is_one_line_and_status_2(fleet):
    _, d = fleet
    r = run_mdbpy("batch", "--dask", "tcp://127.0.0.1:9", "-e", "::status",
                  str(d / "h0" / "svc.core"), timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("mdbpy: cannot reach the Dask scheduler at tcp://127.0.0.1:9: ")
    assert r.stderr.count("\n") == 1


def _sessions_alive(sids: set[int]) -> set[int]:
    """The processes (by pid) in any of these sessions that are still running."""
    import os

    alive = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) in sids and fields[0] != "Z":  # fields[3]: the session id
            alive.add(int(pid))
    return alive


@pytest.mark.parametrize("sig, status, line", [
    ("SIGINT", 130, "mdbpy: batch interrupted"),
    ("SIGTERM", 143, "mdbpy: batch terminated by SIGTERM"),
])
def test_an_interrupted_batch_kills_its_running_cores(fleet, tmp_path, sig, status, line):
    """Ctrl-C or SIGTERM to `mdbpy batch` while cores run: it ends at once with one line and
    the shell's status, and nothing it started survives (each core's mdbpy and the shell its
    script started run in sessions of their own, which a terminal's Ctrl-C does not reach)."""
    import os
    import signal
    import subprocess
    import time

    _, d = fleet
    script = tmp_path / "slow.mdb"
    script.write_text("!sleep 60\n")
    cores = [str(d / f"h{n}" / "svc.core") for n in range(4)]
    p = subprocess.Popen(mdbpy_cmd("batch", "-j", "2", "-f", str(script), *cores),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        sids: set[int] = set()
        deadline = time.time() + 60
        while len(sids) < 2:  # both workers' children started, each its own session
            assert time.time() < deadline, "the batch started no cores"
            sids = {int(c) for t in os.listdir(f"/proc/{p.pid}/task")  # the pool's threads'
                    for c in open(f"/proc/{p.pid}/task/{t}/children").read().split()}
            time.sleep(0.05)
        deadline = time.time() + 60
        while len(_sessions_alive(sids)) < 4:  # each child's shell and its sleep are up
            assert time.time() < deadline, "the cores' scripts did not start"
            time.sleep(0.05)
        t0 = time.time()
        p.send_signal(getattr(signal, sig))
        out, err = p.communicate(timeout=30)
        assert time.time() - t0 < 10
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == status and err.splitlines()[-1] == line, err
    deadline = time.time() + 10
    while _sessions_alive(sids):
        assert time.time() < deadline, f"left running: {_sessions_alive(sids)}"
        time.sleep(0.05)
    assert all(json.loads(x)["core"] in cores for x in out.splitlines())


def test_the_aggregate_groups_crashes_by_signal_and_stack(fleet, tmp_path):
    """Cores of crashes (fixtures/batch_crash.c saved by gdb at the fatal signal): two of a
    SIGSEGV at one site, one of a SIGABRT, and a healthy core, through `::stacks`. The
    aggregate's crashes are one group per signal and innermost frames (offsets dropped), most
    cores first; the healthy core is in none."""
    import shutil
    import subprocess

    _, d = fleet
    exe = compile_fixture("batch_crash", tmp_path, flags=("-g", "-O1"))
    cores = {}
    for name, args in (("segv1", []), ("segv2", []), ("abrt", ["abort"])):
        core = tmp_path / f"{name}.core"
        subprocess.run(["gdb", "-q", "-batch", "-nx", "-ex", "run", "-ex", f"gcore {core}",
                        "--args", str(exe), *args], capture_output=True, timeout=120,
                       check=True)
        cores[name] = str(core)
    healthy = tmp_path / "healthy.core"
    shutil.copy(d / "h0" / "svc.core", healthy)
    r = run_mdbpy("batch", "-e", "::stacks", "--aggregate", str(tmp_path / "agg.json"),
                  *cores.values(), str(healthy), timeout=300)
    assert r.returncode == 0, r.stderr
    agg = json.loads((tmp_path / "agg.json").read_text())
    assert agg["status"]["ok"] == 4
    # the SIGABRT core's signature, as mdbpy's own ::stacks names its signalled thread
    doc = json.loads(run_mdbpy("--json", "-S", "-e", "::stacks", str(exe),
                               cores["abrt"]).stdout)
    (thread,) = [t for t in doc["threads"] if t["tid"] == doc["signal"]["tid"]]
    abort_frames = [f["name"].split("+0x")[0] for f in thread["frames"]][:5]
    assert "main" in abort_frames
    assert agg["crashes"] == [
        {"signature": {"signal": "SIGSEGV", "frames": [
            "store_reading", "handle_request", "main", "libc.so.6`__libc_start_call_main",
            "libc.so.6`__libc_start_main"]},
         "cores": 2, "examples": sorted([cores["segv1"], cores["segv2"]])},
        {"signature": {"signal": "SIGABRT", "frames": abort_frames},
         "cores": 1, "examples": [cores["abrt"]]}]


def test_a_parser_out_of_memory_is_oom_not_an_error():
    """Under a tight limit CPython's parser, out of memory while it compiles one of mdbpy's
    modules, says SyntaxError (seen in CI: `expected ':' (core.py, line 278)`): under a
    memory limit that is an `oom`; without one it stays an `error`."""
    from mdbpy import batch

    err = b"mdbpy: internal error: SyntaxError: expected ':' (core.py, line 278)\n"
    for memory, status in ((16, "oom"), (None, "error")):
        job = batch.Job("c.core", "::findleaks", None, None, memory)
        assert batch.classify(job, 1, 0.1, b"", err)["status"] == status
