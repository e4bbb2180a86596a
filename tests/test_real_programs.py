"""Real programs, real heaps: Debian's own binaries driven into a known state, then looked at
live (`mdbpy -p PID`) and as a gcore core, each in two modes: with libc's debug symbols
present, and with them hidden as on most users' machines (no libc6-dbg: no system debug
directory and a symbol cache of its own, so the heuristics find malloc's state). Both modes
must give the same exact answers.

  python3    /usr/bin/python3 (CPython 3.11) running tests/real/pyheap.py, idle (one thread)
             and busy (six threads, each with a dict and a list of str and bytes objects,
             some over glibc's mmap threshold, parked on an Event). It plants four leaks
             (strdup and calloc through ctypes, pointers dropped; one an mmapped chunk) and
             keeps other malloc'd blocks alive only through Python objects, which live in
             obmalloc's arenas: anonymous mappings no malloc claims. ::findleaks must report
             exactly the planted four, ::ptmalloc_verify nothing, and ::mallinfo the
             program's own mallinfo2(3) read after its last allocation.
  sqlite3    the CLI, fed SQL through a pipe (a table of 4,000 rows, an index, two queries),
             then blocked reading it.
  memcached  -t 4 -m 64 on a free loopback port, 3,000 keys set (12 B to 2 KB) and a
             seventh of them read back, one deleted.
             valgrind (vgdb `leak_check full` at the same point, run by hand with
             `prlimit --nofile=1036 valgrind memcached ...`: memcached lowers RLIMIT_NOFILE to
             its maxconns, which valgrind refuses unless it equals valgrind's own limit)
             finds 0 bytes definitely lost; its 9 "possibly lost" blocks (2,448 bytes) are
             reached through interior pointers, which findleaks counts.
  nginx      master and one worker, from a config in a temporary directory, after 300
             keep-alive requests (static files, `return`, 404s); both processes are checked.
             The master under valgrind (vgdb at the same point): 0 bytes definitely lost.
             The worker's brk heap grows after the fork, and the kernel does not merge a
             forked process's anonymous mapping with the new part: /proc/PID/maps (and so
             the core) shows its heap as two adjacent [heap] mappings, and the heap must be
             walked across both.
             These programs have no leak, so ::findleaks must report none and
             ::ptmalloc_verify nothing, and mdbpy must warn of nothing (a region findleaks
             does not trust is a warning, and could hide a leak).

Each program is skipped when its binary is missing; .ci/run installs them. Every process is
killed when its fixture ends, and every wait is bounded. Each fixture does all its looking
while its process runs (mdbpy live, gcore, mdbpy on the core, and, when findleaks reports
buffers it should not, a plain scan of the process's memory naming who holds the pointers to
them: tests/real/holders.py), then kills it; the tests assert on what was seen, and a failure
says who holds the false leaks.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from support import gcore, run_mdbpy, start_fixture

REAL = Path(__file__).resolve().parent / "real"
sys.path.insert(0, str(REAL))

import holders  # noqa: E402

pytestmark = pytest.mark.real_program

PYTHON = "/usr/bin/python3"
KINDS = ("live", "core")
MODES = ("symbols", "heuristic")
MALLINFO = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
            "fordblks", "keepcost")
COMMANDS = "::findleaks -d; ::ptmalloc_verify; ::mallinfo"
# warnings that say nothing about the heap: a core's mapped files without a build-id note
BENIGN = re.compile(r"the core holds no build-id for it; using it unverified$")
SYS_READ, SYS_CLOCK_NANOSLEEP = 0, 230


def need(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if not path:
        pytest.skip(f"{name} is not installed (Debian package: see .ci/run)")
    return path


@dataclass
class Look:
    """What one mdbpy run of COMMANDS printed."""

    status: int
    leaks: list | None  # ::findleaks' JSON rows, None if it printed none
    verify: list[str]  # ::ptmalloc_verify's lines
    mallinfo: dict[str, int]
    warnings: list[str]  # stderr lines, less the BENIGN ones

    def members(self) -> list[tuple[str, int]]:
        return sorted((g["kind"], m) for g in self.leaks for m in g["members"])


def look(*target, env=None) -> Look:
    r = run_mdbpy("-S", "--json", *target, "-e", COMMANDS, timeout=180, env=env)
    out = r.stdout.splitlines()
    docs = [json.loads(line) for line in out if line.startswith("{")]
    fl = [d for d in docs if d.get("command") == "findleaks"]
    text = [line for line in out if not line.startswith("{")]
    mallinfo = {k.strip(): int(v) for k, v in (line.split(" = ") for line in text
                                               if re.fullmatch(r"\w+ += \d+", line))}
    verify = [line for line in text if not re.fullmatch(r"\w+ += \d+", line)]
    warnings = [line for line in r.stderr.splitlines() if not BENIGN.search(line)]
    return Look(r.returncode, fl[0]["leaks"] if fl else None, verify, mallinfo, warnings)


@dataclass
class Seen:
    """A program in its state, as mdbpy saw it live and on a core."""

    pid: int
    info: dict = field(default_factory=dict)
    looks: dict = field(default_factory=dict)  # (kind, mode) -> Look
    diagnosis: str = ""  # who holds the unexpected leaks (from the live process)
    facts: dict = field(default_factory=dict)  # what the tests check of the driver itself


def wait_blocked(pid: int, want: dict[int, set[int]] | None = None,
                 timeout: float = 30.0) -> None:
    """Until every thread of pid sits in a system call (in one of want[tid] where given),
    twice in a row 50 ms apart: a quiescent process."""
    deadline = time.time() + timeout
    calm = 0
    while True:
        now = {}
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/syscall") as f:
                    now[int(tid)] = f.read().split()[0]
            except OSError:
                continue
        ok = all(v not in ("running", "-1") and (not want or int(tid) not in want or
                                                 int(v) in want[int(tid)])
                 for tid, v in now.items())
        calm = calm + 1 if ok else 0
        if calm >= 2:
            return
        assert time.time() < deadline, f"process {pid} not quiescent: {now}"
        time.sleep(0.05)


def examine(seen: Seen, exe: str, tmp: Path, label: str, expected: set[int]) -> Seen:
    """Look at seen.pid live and as a core, in both modes; on unexpected leaks, say who
    holds them."""
    hidden = {"MDBPY_SYSTEM_DEBUG_DIRS": "", "MDBPY_CACHE_DIR": str(tmp / f"{label}-cache")}
    envs = {"symbols": None, "heuristic": hidden}
    for mode in MODES:
        seen.looks["live", mode] = look("-p", seen.pid, env=envs[mode])
    core = gcore(seen.pid, tmp / label)
    try:
        for mode in MODES:
            seen.looks["core", mode] = look(exe, core, env=envs[mode])
    finally:
        core.unlink()
    extra = {m: (g, m, s) for mode in MODES for g in seen.looks["live", mode].leaks or ()
             for m, s in zip(g["members"], g["member_sizes"]) if m not in expected}
    if extra:
        seen.diagnosis = diagnose(seen.pid, list(extra.values()))
    return seen


def malloc_chunks(pid: int):
    """Every malloc chunk of a live process with its state (::malloc_chunks), as
    holders.chunk_arrays gives them, or None."""
    r = run_mdbpy("-S", "--json", "-p", pid, "-e", "::malloc_chunks", timeout=180)
    for line in r.stdout.splitlines():
        if line.startswith("{"):
            return holders.chunk_arrays(json.loads(line))
    return None


def diagnose(pid: int, extra) -> str:
    """Who holds the pointers to the unexpected leaks of a live process (holders.py), with
    malloc's chunks to name a holder in malloc memory."""
    chunks = malloc_chunks(pid)
    counts, chains = holders.explain(pid, [m for _, m, _ in extra], [s for _, _, s in extra],
                                     chunks, sample=4)
    kinds: dict[str, int] = {}
    for g, _, _ in extra:
        kinds[g["kind"]] = kinds.get(g["kind"], 0) + 1
    return (f"{len(extra)} unexpected leaks by kind {kinds}; who holds the first pointer of "
            f"each one's chain (live process):\n" + holders.summary(counts, chains))


def assert_leaks(seen: Seen, kind: str, mode: str, want: list[tuple[str, int]],
                 maybe=()) -> None:
    """findleaks reported exactly `want` (kind, buffer) pairs, and any of `maybe`."""
    lk = seen.looks[kind, mode]
    assert lk.leaks is not None, f"::findleaks printed no JSON: {lk.warnings}"
    got = lk.members()
    if not set(want) <= set(got) <= set(want) | set(maybe) or len(got) != len(set(got)):
        extra = sorted(set(got) - set(want) - set(maybe))
        missing = sorted(set(want) - set(got))
        pytest.fail(f"{kind}: {len(extra)} reported that should not be, e.g. "
                    f"{[(k, hex(a)) for k, a in extra[:5]]}; {len(missing)} planted not "
                    f"reported: {[(k, hex(a)) for k, a in missing]}\n{seen.diagnosis}")


def assert_clean(seen: Seen, kind: str, mode: str) -> None:
    """Verify finds nothing, mdbpy warns of nothing, and ::mallinfo is the same without
    symbols as with them."""
    lk = seen.looks[kind, mode]
    assert lk.mallinfo == seen.looks[kind, "symbols"].mallinfo
    assert lk.verify == ["ptmalloc: heap clean"], lk.verify
    assert lk.warnings == [], lk.warnings
    assert lk.status == 0


# -- python3 ----------------------------------------------------------------------------------
PLANTED_KINDS = ("buffer", "buffer", "buffer", "oversize")  # leak3 is an mmapped chunk
PLANTED_SIZES = (0x58, 0x3E8, 0x2710, 256 << 10)  # pyheap.py's
STALE = ("BELOW sp", "malloc chunk (free)", "malloc chunk (top)")  # words no scan reads


@pytest.fixture(scope="module", params=["idle", "busy"])
def python_seen(request, tmp_path_factory):
    if not os.access(PYTHON, os.X_OK):
        pytest.skip(f"{PYTHON} is not installed")
    tmp = tmp_path_factory.mktemp("python")
    r = start_fixture(Path(PYTHON), REAL / "pyheap.py", request.param, timeout=90)
    try:
        threads = int(r.info["threads"])
        wait_blocked(r.pid, {r.pid: {SYS_CLOCK_NANOSLEEP}}, timeout=30)
        tids = [int(t) for t in os.listdir(f"/proc/{r.pid}/task")]
        assert len(tids) == threads + 1
        seen = Seen(r.pid, dict(r.info))
        seen.facts = driver_facts(r, malloc_chunks(r.pid))
        planted = {r.addr(f"leak{k}") for k in range(4)}
        yield examine(seen, PYTHON, tmp, f"python-{request.param}", planted)
    finally:
        r.stop()


def driver_facts(r, chunks) -> dict:
    """What a plain scan of the process says of the driver's blocks: what holds a word
    pointing into each planted leak, and what holds a pointer to each kept block, less the
    words no scan reads (below a stack pointer, in a free malloc chunk)."""
    mem = holders.Memory(r.pid)
    try:
        facts = {}
        for key, size in [(f"leak{k}", s) for k, s in enumerate(PLANTED_SIZES)] + \
                [(f"kept{k}", 16) for k in range(3)]:
            hold, _ = mem.holders([r.addr(key)], [size])
            facts[key] = sorted({d for d in (mem.describe(int(h), chunks) for h in hold)
                                 if not any(x in d for x in STALE)})
        return facts
    finally:
        mem.close()


def test_python_driver_state(python_seen):
    """The driver did what it says: the kept blocks are held only from obmalloc's arenas,
    anonymous mappings (not ones a scan could take for a shared object's bss), never from a
    stack or malloc's memory. (On CPython 3.11: a c_void_p object, the array object, and the
    24-byte buffer of the ctypes Structure.)"""
    f = python_seen.facts
    for k in range(3):
        held = f[f"kept{k}"]
        assert held and all(d.startswith(("obmalloc pool", "anonymous")) for d in held), \
            (k, held)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", KINDS)
def test_python_findleaks_reports_exactly_the_planted_leaks(python_seen, kind, mode):
    """The planted leaks and nothing else. A planted leak that some word of the process
    points into all the same may be kept alive by a conservative scan, so it may be missing:
    the driver never stores a planted pointer, but garbage can spell one (the high bytes of
    a stale pointer under a short string and its NUL, in an obmalloc block) (driver_facts)."""
    info, facts = python_seen.info, python_seen.facts
    planted = [(k, int(info[f"leak{i}"], 16)) for i, k in enumerate(PLANTED_KINDS)]
    held = [p for i, p in enumerate(planted) if facts[f"leak{i}"]]
    assert_leaks(python_seen, kind, mode, [p for p in planted if p not in held], held)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", KINDS)
def test_python_verify_is_clean(python_seen, kind, mode):
    assert_clean(python_seen, kind, mode)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", KINDS)
def test_python_mallinfo_is_the_programs_own(python_seen, kind, mode):
    got = python_seen.looks[kind, mode].mallinfo
    assert got == {k: int(python_seen.info[k]) for k in MALLINFO}


# -- sqlite3 ----------------------------------------------------------------------------------
def read_until(proc: subprocess.Popen, marker: bytes, timeout: float = 60.0) -> bytes:
    """The process's stdout up to and including the line starting with marker."""
    fd = proc.stdout.fileno()
    got = b""
    deadline = time.time() + timeout
    while not re.search(rb"(^|\n)" + re.escape(marker) + rb"[^\n]*\n", got):
        left = deadline - time.time()
        assert left > 0, f"no {marker!r} in time; got {got[-500:]!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 65536)
            assert chunk, f"stdout closed before {marker!r}: {got[-500:]!r}, " \
                          f"stderr {proc.stderr.read()[-2000:]!r}"
            got += chunk
    return got


SQL_ROWS = 4000


def sqlite_script() -> str:
    lines = [".bail on", "CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, val REAL, b BLOB);",
             "BEGIN;"]
    lines += [f"INSERT INTO t(name, val, b) VALUES ('name-{i}-{'x' * (i % 50)}', {i * 1.5}, "
              f"randomblob({i % 300}));" for i in range(SQL_ROWS)]
    lines += ["COMMIT;", "CREATE INDEX t_name ON t(name);",
              "SELECT count(*), sum(val) FROM t WHERE id % 3 = 0;",
              "SELECT substr(name, 1, 8) AS k, count(*) FROM t GROUP BY k ORDER BY 2 DESC, 1 "
              "LIMIT 2;",
              ".print READY"]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def sqlite_seen(tmp_path_factory):
    exe = need("sqlite3")
    tmp = tmp_path_factory.mktemp("sqlite")
    proc = subprocess.Popen([exe, "-batch"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, bufsize=0)
    try:
        # sqlite3 prints nothing before the queries at the end, so the write cannot block
        # on a full stdout pipe; the pipe stays open, and sqlite3 then waits on it
        proc.stdin.write(sqlite_script().encode())
        out = read_until(proc, b"READY")
        assert b"1333|3999000.0\n" in out, out  # ids 3, 6, ... 3999: the table is all there
        wait_blocked(proc.pid, {proc.pid: {SYS_READ}})
        yield examine(Seen(proc.pid), exe, tmp, "sqlite3", set())
    finally:
        proc.kill()
        proc.communicate(timeout=10)


# -- memcached --------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def connect(port: int, proc: subprocess.Popen, timeout: float = 20.0) -> socket.socket:
    deadline = time.time() + timeout
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=10)
        except OSError:
            assert proc.poll() is None, f"server exited: {proc.stderr.read()[-2000:]!r}"
            assert time.time() < deadline, "server did not listen in time"
            time.sleep(0.05)


MC_KEYS = 3000


def memcached_traffic(port: int, proc) -> None:
    with connect(port, proc) as c, c.makefile("rb") as f:
        value = lambda i: b"%06d" % i * (2 + i % 340)  # noqa: E731  (12 B to 2 KB)
        c.sendall(b"".join(b"set key:%d %d 0 %d\r\n%s\r\n" % (i, i, len(value(i)), value(i))
                           for i in range(MC_KEYS)))
        for _ in range(MC_KEYS):
            assert f.readline() == b"STORED\r\n"
        for i in range(0, MC_KEYS, 7):
            c.sendall(b"get key:%d\r\n" % i)
            assert f.readline() == b"VALUE key:%d %d %d\r\n" % (i, i, len(value(i)))
            assert f.read(len(value(i)) + 2) == value(i) + b"\r\n"
            assert f.readline() == b"END\r\n"
        c.sendall(b"delete key:5\r\n")
        assert f.readline() == b"DELETED\r\n"


@pytest.fixture(scope="module")
def memcached_seen(tmp_path_factory):
    exe = need("memcached")
    tmp = tmp_path_factory.mktemp("memcached")
    port = free_port()
    args = [exe, "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-t", "4", "-m", "64"]
    if os.geteuid() == 0:
        args += ["-u", "root"]  # memcached refuses to run as root without -u
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        memcached_traffic(port, proc)
        wait_blocked(proc.pid)
        yield examine(Seen(proc.pid), exe, tmp, "memcached", set())
    finally:
        proc.kill()
        proc.communicate(timeout=10)


# -- nginx ------------------------------------------------------------------------------------
def nginx_conf(d: Path, port: int) -> str:
    # as root the worker would switch to nobody, who cannot read the 0700 temporary directory
    user = "user root;\n" if os.geteuid() == 0 else ""
    temps = "".join(f"    {k}_temp_path {d}/{k};\n" for k in
                    ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""{user}worker_processes 1;
error_log {d}/error.log info;
pid {d}/nginx.pid;
events {{ worker_connections 64; }}
http {{
    access_log {d}/access.log;
{temps}    server {{
        listen 127.0.0.1:{port};
        root {d}/html;
        location /echo {{ return 200 "echo $request_uri\\n"; }}
    }}
}}
"""


def nginx_traffic(port: int, proc) -> None:
    connect(port, proc).close()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        for i in range(300):
            if i % 50 == 49:  # a new connection now and then
                c.close()
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            path = ["/", f"/f{i % 20}.bin", f"/echo?x={i}", f"/missing{i}"][i % 4]
            c.request("GET", path, headers={"X-Test": "y" * (i % 500)})
            resp = c.getresponse()
            body = resp.read()
            assert resp.status == (404 if i % 4 == 3 else 200), (path, resp.status)
            if i % 4 == 1:
                assert len(body) == 1000 * (1 + i % 20)
    finally:
        c.close()


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(x) for x in f.read().split()]


@pytest.fixture(scope="module")
def nginx_seen(tmp_path_factory):
    exe = need("nginx")
    tmp = tmp_path_factory.mktemp("nginx")
    (tmp / "html").mkdir()
    (tmp / "html" / "index.html").write_text("hello\n")
    for i in range(20):
        (tmp / "html" / f"f{i}.bin").write_bytes(os.urandom(1000 * (1 + i)))
    port = free_port()
    (tmp / "nginx.conf").write_text(nginx_conf(tmp, port))
    proc = subprocess.Popen([exe, "-p", str(tmp), "-c", str(tmp / "nginx.conf"), "-g",
                             "daemon off; master_process on;"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        nginx_traffic(port, proc)
        (worker,) = children(proc.pid)
        wait_blocked(proc.pid)
        wait_blocked(worker)
        yield {"master": examine(Seen(proc.pid), exe, tmp, "nginx-master", set()),
               "worker": examine(Seen(worker), exe, tmp, "nginx-worker", set())}
    finally:
        proc.terminate()  # the master stops its worker and reaps it
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        try:  # then whatever is left of its process group (a worker outlives a killed master)
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.communicate(timeout=10)


# -- the programs without leaks ---------------------------------------------------------------
LEAK_FREE = ("sqlite3", "memcached", "nginx master", "nginx worker")


def leak_free(request, program: str):
    """What was seen of one of the programs that have no leak (its module fixture)."""
    name, _, role = program.partition(" ")
    seen = request.getfixturevalue({"sqlite3": "sqlite_seen", "memcached": "memcached_seen",
                                    "nginx": "nginx_seen"}[name])
    return seen[role] if role else seen


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("program", LEAK_FREE)
def test_has_no_leaks(request, program, kind, mode):
    assert_leaks(leak_free(request, program), kind, mode, [])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("program", LEAK_FREE)
def test_verify_is_clean(request, program, kind, mode):
    assert_clean(leak_free(request, program), kind, mode)
