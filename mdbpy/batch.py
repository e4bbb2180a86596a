"""`mdbpy batch`: one command script over many cores, each in its own process, as JSON Lines,
and an aggregate of the whole fleet (docs/batch.md).

Every core runs in a fresh `python -m mdbpy --json -S -e SCRIPT CORE`. A separate process
per core is what makes the batch robust: a core that crashes mdbpy, hangs it or makes it eat
memory costs that one record, never the batch, and the limits are the kernel's (a kill after
the time limit, RLIMIT_AS for memory), not cooperative checks inside mdbpy. The records are the
CLI's own JSON documents (mdbpy/jsonout.py), so a batch record says exactly what `mdbpy --json`
says for one core.

The child sets its own memory limit before it imports anything (BOOT), so starting it needs no
preexec_fn and is safe from any thread: the local pool is a pool of threads, each waiting on
its child, and the same run_one runs unchanged on a Dask cluster's workers (`--dask ADDRESS`,
whose workers are threads too). Every child runs in a session of its own (a `!cmd` shell and its
children go with it); when the batch is interrupted (Ctrl-C, SIGTERM, an exception) the local
pool kills every child still running before it returns.
"""

from __future__ import annotations

import glob
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

from mdbpy.errors import UsageError

EXAMPLES = 3  # example cores kept per aggregate group
CRASH_FRAMES = 5  # innermost frames of the signalled thread that make a crash's signature
STATUSES = ("ok", "error", "timeout", "oom")
# what the child prints when an allocation failed under RLIMIT_AS; CPython's parser, out of
# memory while it compiles one of mdbpy's modules, says SyntaxError (mdbpy's own source is
# valid, and nothing a script says reaches Python's parser)
OOM_SIGNS = ("MemoryError", "Cannot allocate memory", "Unable to allocate", "bad_alloc",
             "out of memory", "failed to map segment", "SyntaxError")


@dataclass(frozen=True)
class Job:
    """One core's work: what the worker process needs, picklable for the pool."""

    core: str
    script: str | None  # -e text, or None when script_file is used
    script_file: str | None
    timeout: float | None  # seconds; None: no limit
    memory: int | None  # MiB of address space; None: no limit
    sysroot: str | None = None


def expand_inputs(words: list[str]) -> list[str]:
    """The cores named by CORE, GLOB or @LISTFILE words (a list file: one path or glob a line,
    `#` comments), sorted and without duplicates, so the records come in the same order on
    every run. A glob that matches nothing or an unreadable list file is a usage error (the
    batch would silently do less than asked); a plain path is kept even when it does not exist,
    and its record says why it could not be opened."""
    out: set[str] = set()
    for w in words:
        if w.startswith("@"):
            try:
                with open(w[1:]) as f:
                    lines = [ln.strip() for ln in f]
            except OSError as e:
                raise UsageError(f"cannot read list file {w[1:]}: {e.strerror}") from None
            out.update(expand_inputs([ln for ln in lines if ln and not ln.startswith("#")]))
        elif glob.has_magic(w):
            found = [p for p in glob.glob(w) if os.path.isfile(p)]
            if not found:
                raise UsageError(f"no file matches {w}")
            out.update(found)
        else:
            out.add(w)
    return sorted(out)


# `python -m mdbpy` would look for mdbpy in the current directory first (a batch runs where
# the cores are, among files nobody vetted): the child drops that sys.path entry before it
# imports anything of mdbpy's (with -c it is always the first, ''). With a memory limit it
# first sets RLIMIT_AS on itself (LIMIT: the bytes), so the limit covers all it will map.
BOOT = "import sys; del sys.path[0]; import mdbpy.__main__ as m; sys.exit(m.main())"
LIMIT = "import resource; resource.setrlimit(resource.RLIMIT_AS, ({0}, {0})); "


def boot(memory: int | None) -> str:
    """The child's -c program: BOOT, under a limit of `memory` MiB when one is given."""
    return (LIMIT.format(memory << 20) if memory else "") + BOOT


def command(job: Job) -> list[str]:
    """The child's argv: the CLI itself, --json, no ~/.mdbpyrc (-S: every core gets the same
    commands, whoever runs the batch), then the core (as ./-name when its name starts with `-`:
    after `--` the CLI takes a program to run)."""
    argv = [sys.executable, "-c", boot(job.memory), "--json", "-S"]
    if job.sysroot:
        argv += ["-R", job.sysroot]
    argv += ["-f", job.script_file] if job.script_file else ["-e", job.script or ""]
    return argv + [os.path.join(".", job.core) if job.core.startswith("-") else job.core]


def run_one(job: Job, running: Running | None = None) -> dict:
    """Run the script over one core in a fresh process and return its record. Never raises
    for anything the core or mdbpy does: that is what the record's status says. The child
    is in `running` while it runs, for the pool to kill when the batch is interrupted."""
    start = time.monotonic()
    timed_out = False
    try:
        proc = subprocess.Popen(command(job), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
    except OSError as e:
        return _record(job, "error", None, time.monotonic() - start, b"", b"",
                       f"cannot start mdbpy: {e.strerror}")
    if running is not None:
        running.add(proc)
    try:
        out, err = proc.communicate(timeout=job.timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(proc)  # its own session: a `!cmd` shell and its children go too
        out, err = proc.communicate()
    finally:
        if running is not None:
            running.discard(proc)
    return classify(job, proc.returncode, time.monotonic() - start, out, err, timed_out)


class Running:
    """The children running now, shared by the pool's threads: killed, each with its whole
    session, when the batch stops early."""

    def __init__(self):
        import threading

        self._lock = threading.Lock()
        self._procs: set[subprocess.Popen] = set()
        self.stopped = False

    def add(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._procs.add(proc)
            stopped = self.stopped
        if stopped:  # started as the batch was being stopped: it goes at once
            _kill_group(proc)

    def discard(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._procs.discard(proc)

    def kill_all(self) -> None:
        with self._lock:
            self.stopped = True
            procs = list(self._procs)
        for p in procs:
            _kill_group(p)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def classify(job: Job, rc: int, seconds: float, out: bytes, err: bytes,
             timed_out: bool = False) -> dict:
    """The record of a finished child. Status: `timeout` when it was killed at the time limit;
    `oom` when, under a memory limit, it reported an allocation failure or died by a signal;
    `error` when its exit status is not 0 or mdbpy said the core is truncated (its results are
    kept, but left out of the aggregate: memory missing from a core can hide the pointers that
    keep buffers alive, so its leaks may be false); `ok` otherwise."""
    messages = _messages(err)
    truncated = next((m for m in messages if re.search(r"^core file .* is truncated", m)), None)
    if timed_out:
        status, error = "timeout", f"timed out after {job.timeout:g} s"
    elif job.memory and (rc < 0 or any(s in m for m in messages for s in OOM_SIGNS)):
        status, error = "oom", f"out of memory (limit {job.memory} MiB)"
    elif rc != 0:
        status = "error"
        error = truncated or (messages[-1] if messages else _exit_text(rc))
    elif truncated:
        status, error = "error", truncated
    else:
        status, error = "ok", None
    return _record(job, status, rc, seconds, out, err, error, messages)


def _record(job: Job, status: str, rc: int | None, seconds: float, out: bytes, err: bytes,
            error: str | None, messages: list[str] | None = None) -> dict:
    """One JSON Lines record: the CLI's JSON documents as `results`, its other stdout lines as
    `output` (dcmds that are not JSON-capable print text), its stderr lines as `messages`."""
    results, output = [], []
    for line in out.decode(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                results.append(json.loads(line))
                continue
            except ValueError:
                pass
        output.append(line)
    return {"core": job.core, "status": status, "error": error, "exit_status": rc,
            "seconds": round(seconds, 3), "results": results, "output": output,
            "messages": messages if messages is not None else _messages(err)}


def _messages(err: bytes) -> list[str]:
    """mdbpy's stderr lines (each one message), without the `mdbpy: ` prefix."""
    return [ln.removeprefix("mdbpy: ") for ln in err.decode(errors="replace").splitlines()
            if ln.strip()]


def _exit_text(rc: int) -> str:
    if rc < 0:
        return f"killed by {signal.Signals(-rc).name}"
    return f"exit status {rc}"


def run(jobs: list[Job], workers: int, sink) -> list[dict]:
    """Run the jobs on a pool of `workers` threads, each waiting on its child; each record is
    passed to sink(record) as soon as it and every record before it are done (in the jobs'
    order, so the output is the same on every run), and all of them are returned for the
    aggregate. Interrupted (KeyboardInterrupt, SystemExit from SIGTERM, a failing sink), it
    starts no more children and kills those running before it lets the exception go on."""
    from concurrent.futures import ThreadPoolExecutor

    records = []
    running = Running()
    pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="mdbpy-batch")
    try:
        for rec in pool.map(lambda job: run_one(job, running), jobs):
            sink(rec)
            records.append(rec)
    except BaseException:
        running.kill_all()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return records


def run_dask(jobs: list[Job], address: str, sink) -> list[dict]:
    """Run the jobs on the Dask cluster at `address` (dask.distributed's scheduler), as run()
    does locally: the same run_one on the workers, the records passed to sink in the jobs'
    order. The workers must have this mdbpy installed and see the cores at the same paths.
    An interrupted batch cancels what has not started; children already running on the
    workers end at their time limit."""
    try:
        from distributed import Client
    except ImportError:
        raise UsageError("--dask needs dask.distributed: pip install 'mdbpy[dask]'") from None
    try:
        client = Client(address, timeout=30)
    except OSError as e:
        raise UsageError(f"cannot reach the Dask scheduler at {address}: {e}") from None
    records = []
    try:
        futures = client.map(run_one, jobs, pure=False)
        try:
            for f in futures:
                rec = f.result()
                sink(rec)
                records.append(rec)
        except BaseException:
            client.cancel(futures)
            raise
    finally:
        client.close()
    return records


def aggregate(records: list[dict]) -> dict:
    """The fleet's summary: how many cores ended in each status; the leaks of the `ok` cores
    grouped by signature (kind, cache, buffer size, caller), each with its cores, buffers,
    bytes and example cores, most cores first; their crashes (where the script ran
    `::stacks`) grouped by signal and innermost frames; and the failures grouped by message,
    the core's path and the numbers in it made generic, so one cause across many cores is one
    group."""
    status = {s: 0 for s in STATUSES}
    leaks: dict[tuple, dict] = {}
    crashes: dict[tuple, dict] = {}
    errors: dict[str, dict] = {}
    for rec in records:
        status[rec["status"]] = status.get(rec["status"], 0) + 1
        if rec["status"] == "ok":
            _add_leaks(leaks, rec)
            _add_crash(crashes, rec)
        elif rec["error"]:
            key = re.sub(r"0x[0-9a-fA-F]+|\d+", "N", rec["error"].replace(rec["core"], "CORE"))
            g = errors.setdefault(key, {"message": key, "status": rec["status"], "cores": 0,
                                        "examples": []})
            _count_core(g, rec["core"])
    order = sorted(leaks.values(), key=lambda g: (-g["cores"], -g["buffers"],
                                                   json.dumps(g["signature"])))
    return {"cores": len(records), "status": status, "leaks": order,
            "crashes": sorted(crashes.values(), key=lambda g: (-g["cores"],
                                                               json.dumps(g["signature"]))),
            "errors": sorted(errors.values(), key=lambda g: (-g["cores"], g["message"]))}


def _add_crash(groups: dict, rec: dict) -> None:
    """A core of a crash (its `::stacks` names the thread a signal ended the process in)
    counts in the group of its signature: the signal and that thread's innermost
    CRASH_FRAMES frames by function, offsets dropped (the same code reached at another
    instruction of the same functions is the same crash)."""
    for doc in rec["results"]:
        died = doc.get("signal") if doc.get("command") == "stacks" else None
        if not died:
            continue
        thread = next((t for t in doc.get("threads", ()) if t.get("tid") == died["tid"]), None)
        frames = [f["name"].split("+0x", 1)[0] for f in (thread or {}).get("frames") or ()]
        sig = {"signal": died["name"], "frames": frames[:CRASH_FRAMES]}
        g = groups.setdefault(json.dumps(sig), {"signature": sig, "cores": 0, "examples": []})
        _count_core(g, rec["core"])
        return


def _add_leaks(groups: dict, rec: dict) -> None:
    seen = set()
    for doc in rec["results"]:
        if doc.get("command") != "findleaks":
            continue
        for row in doc.get("leaks", ()):
            sig = {"kind": row.get("kind"), "cache": row.get("cache"),
                   "size": row.get("size"), "caller": row.get("caller_name")}
            key = tuple(sig.values())
            g = groups.setdefault(key, {"signature": sig, "cores": 0, "buffers": 0,
                                        "bytes": 0, "examples": []})
            g["buffers"] += row.get("count") or 0
            g["bytes"] += row.get("bytes") or 0
            if key not in seen:  # a core counts once per group, however many rows it has
                seen.add(key)
                _count_core(g, rec["core"])


def _count_core(group: dict, core: str) -> None:
    group["cores"] += 1
    if len(group["examples"]) < EXAMPLES:
        group["examples"].append(core)


def summary(agg: dict) -> str:
    """One line for stderr: how the batch went."""
    parts = [f"{n} {s}" for s, n in agg["status"].items() if n]
    return f"batch: {agg['cores']} cores: {', '.join(parts) or 'none'}"
