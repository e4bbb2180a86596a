"""debuginfod: with $DEBUGINFOD_URLS set, a stripped object's debug file is fetched by build-id
into elfutils' cache (the one gdb uses) and read from there by later runs, mdbpy's and gdb's,
with or without the server. Served here by a debuginfod of our own on 127.0.0.1 (an ephemeral
port) that hands out the real debug files of /usr/lib/debug/.build-id (libc6-dbg's), while
mdbpy's view of the system debug directories is hidden, so libc's symbols can only come
through debuginfod. A server that has nothing (404), one that is not there, one that never
answers and one that sends the wrong file each cost exactly one line, and glibc is then
located by the heuristics. No test reaches any network but 127.0.0.1."""

from __future__ import annotations

import filecmp
import http.server
import os
import shutil
import socket
import subprocess
import threading
from pathlib import Path

import pytest
from support import compile_fixture
from test_ptmalloc_heap import _planted, opened, run

from mdbpy.symbols.debuginfo import debuginfod_cache_dir
from mdbpy.symbols.elf import build_id_of

LIBC = "/lib/x86_64-linux-gnu/libc.so.6"
SYSTEM_BUILD_IDS = Path("/usr/lib/debug/.build-id")
FLAGS = ("-g", "-O0", "-Wno-use-after-free")


def system_debug_file(build_id: str) -> Path:
    return SYSTEM_BUILD_IDS / build_id[:2] / f"{build_id[2:]}.debug"


@pytest.fixture(scope="module")
def libc_build_id() -> str:
    bid = build_id_of(LIBC)
    if not bid or not system_debug_file(bid).is_file():
        pytest.skip("libc's debug file (libc6-dbg) is not installed")
    return bid


class Debuginfod:
    """An HTTP server on 127.0.0.1 answering GET /buildid/ID/debuginfo: with the file
    `files(ID)` names (None: 404); `requests` lists the paths asked."""

    def __init__(self, files):
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.requests.append(self.path)
                parts = self.path.split("/")
                path = (files(parts[2]) if len(parts) == 4 and parts[1] == "buildid"
                        and parts[3] == "debuginfo" else None)
                if path is None:
                    self.send_error(404)
                    return
                data = Path(path).read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def real_files(build_id: str):
    p = system_debug_file(build_id)
    return str(p) if p.is_file() else None


@pytest.fixture
def no_debug_files(tmp_path, monkeypatch):
    """The system debug directories hidden, a fresh symbol cache and debuginfod cache (its
    place gdb's default, under $HOME), and no proxy between us and 127.0.0.1."""
    monkeypatch.setenv("MDBPY_SYSTEM_DEBUG_DIRS", "")
    monkeypatch.setenv("MDBPY_CACHE_DIR", str(tmp_path / "symcache"))
    monkeypatch.delenv("DEBUGINFOD_CACHE_PATH", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for v in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy",
              "ALL_PROXY"):
        monkeypatch.delenv(v, raising=False)
    return tmp_path


@pytest.fixture(scope="module")
def leaks(build_dir):
    exe = compile_fixture("glibc_heap", build_dir, flags=FLAGS)
    yield from _planted(exe, build_dir, "leaks")


def heuristic_result(s, stats: str) -> None:
    out = run(s, "::ptmalloc")
    assert "(heuristic)" in out and "(symbols)" not in out
    assert run(s, "::malloc_stats") == stats


def test_cache_is_where_gdb_looks(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.delenv("DEBUGINFOD_CACHE_PATH", raising=False)
    assert debuginfod_cache_dir() == str(tmp_path / ".cache" / "debuginfod_client")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert debuginfod_cache_dir() == str(tmp_path / "xdg" / "debuginfod_client")
    (tmp_path / ".debuginfod_client_cache").mkdir()  # elfutils' old place wins when it exists
    assert debuginfod_cache_dir() == str(tmp_path / ".debuginfod_client_cache")
    monkeypatch.setenv("DEBUGINFOD_CACHE_PATH", str(tmp_path / "explicit"))
    assert debuginfod_cache_dir() == str(tmp_path / "explicit")


@pytest.mark.parametrize("kind", ("live", "core"))
def test_libc_symbols_come_through_debuginfod(leaks, libc_build_id, no_debug_files,
                                              monkeypatch, kind):
    stats = leaks[1]
    server = Debuginfod(real_files)
    try:
        monkeypatch.setenv("DEBUGINFOD_URLS", server.url)
        with opened(leaks, kind) as s:
            out = run(s, "::ptmalloc")
            assert "main_arena" in out and "(symbols)" in out and "(heuristic)" not in out
            assert run(s, "::malloc_stats") == stats
            err = s.err.getvalue().splitlines()
    finally:
        server.close()
    url = f"{server.url}/buildid/{libc_build_id}/debuginfo"
    mib = os.path.getsize(system_debug_file(libc_build_id)) / (1 << 20)
    assert f"mdbpy: debuginfod: downloading the debug file of libc.so.6 ({mib:.1f} MiB) " \
           f"from {url}" in err
    # the one line of each download (ld.so's too: the server has it), nothing else
    assert all(e.startswith("mdbpy: debuginfod: downloading the debug file of ") for e in err)
    assert server.requests.count(f"/buildid/{libc_build_id}/debuginfo") == 1
    cached = no_debug_files / "home" / ".cache" / "debuginfod_client" / libc_build_id / \
        "debuginfo"
    assert filecmp.cmp(cached, system_debug_file(libc_build_id), shallow=False)
    assert [p.name for p in cached.parent.iterdir()] == ["debuginfo"]  # no temporary left

    if kind == "core" and shutil.which("gdb"):
        # gdb finds it there too (its own debug directory hidden, no server to ask)
        p = subprocess.run(["gdb", "-nx", "-batch", "-iex", "set debug-file-directory /none",
                            "-iex", "set debuginfod enabled on", "-ex", "p &main_arena",
                            str(leaks[3]), str(leaks[2])], capture_output=True, text=True,
                           timeout=120, env=dict(os.environ, DEBUGINFOD_URLS=server.url))
        assert "<main_arena>" in p.stdout, p.stdout + p.stderr

    # a later run, with a fresh symbol cache: from the debuginfod cache, the server gone
    # (still named in $DEBUGINFOD_URLS, then not named at all), without a word
    for urls in (server.url, None):
        if urls:
            monkeypatch.setenv("DEBUGINFOD_URLS", urls)
        else:
            monkeypatch.delenv("DEBUGINFOD_URLS")
        monkeypatch.setenv("MDBPY_CACHE_DIR", str(no_debug_files / f"again-{bool(urls)}"))
        with opened(leaks, kind) as s:
            assert "(symbols)" in run(s, "::ptmalloc")
            assert run(s, "::malloc_stats") == stats
            libc = s.symbols.object_named("libc.so.6")
            assert libc.find_debug_file() == str(cached)
            assert s.err.getvalue() == ""


def test_a_server_without_the_file_costs_one_line(leaks, libc_build_id, no_debug_files,
                                                  monkeypatch):
    server = Debuginfod(lambda _bid: None)
    try:
        monkeypatch.setenv("DEBUGINFOD_URLS", server.url)
        with opened(leaks, "core") as s:
            heuristic_result(s, leaks[1])
            run(s, "::findleaks; ::stacks")
            assert s.err.getvalue().splitlines() == [
                f"mdbpy: debuginfod: no debug file for libc.so.6 (build-id {libc_build_id}): "
                f"{server.url}: HTTP 404; going on without it (other objects the servers "
                "lack are not named)"]
    finally:
        server.close()
    assert not (no_debug_files / "home" / ".cache" / "debuginfod_client" /
                libc_build_id).exists()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unreachable_server_costs_one_line(leaks, libc_build_id, no_debug_files,
                                              monkeypatch):
    url = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("DEBUGINFOD_URLS", url)
    with opened(leaks, "core") as s:
        heuristic_result(s, leaks[1])
        run(s, "::findleaks; ::stacks")
        assert s.err.getvalue().splitlines() == [
            f"mdbpy: debuginfod: {url} is unreachable (Connection refused); it is not asked "
            "again"]


def test_a_silent_server_times_out_in_one_line(leaks, libc_build_id, no_debug_files,
                                               monkeypatch):
    with socket.socket() as sock:  # accepts connections (the backlog), never answers
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        monkeypatch.setenv("DEBUGINFOD_URLS", url)
        monkeypatch.setenv("DEBUGINFOD_TIMEOUT", "1")
        with opened(leaks, "core") as s:
            heuristic_result(s, leaks[1])
            assert s.err.getvalue().splitlines() == [
                f"mdbpy: debuginfod: {url} is unreachable (no answer in 1 s); it is not asked "
                "again"]


@pytest.mark.parametrize("fault", ("wrong", "large"))
def test_a_file_that_is_not_the_debug_file_is_refused(leaks, libc_build_id, no_debug_files,
                                                      monkeypatch, fault):
    """Another object's debug file sent for libc's build-id, or a file larger than
    $DEBUGINFOD_MAXSIZE: refused in one line, and nothing is left in the cache."""
    other = next(p for p in SYSTEM_BUILD_IDS.glob("*/*.debug")
                 if p != system_debug_file(libc_build_id))
    server = Debuginfod(lambda bid: (str(other) if bid == libc_build_id else None)
                        if fault == "wrong" else real_files(bid))
    if fault == "large":
        monkeypatch.setenv("DEBUGINFOD_MAXSIZE", "4096")
    size = os.path.getsize(system_debug_file(libc_build_id))
    why = ("the file sent is not its debug file (another build-id)" if fault == "wrong" else
           f"the file is {size} bytes, more than 4096")
    try:
        monkeypatch.setenv("DEBUGINFOD_URLS", server.url)
        with opened(leaks, "core") as s:
            heuristic_result(s, leaks[1])
            err = s.err.getvalue().splitlines()
            if fault == "wrong":  # the file arrived (its progress line) and was refused
                assert err.pop(0).startswith("mdbpy: debuginfod: downloading the debug file "
                                             "of libc.so.6 ")
            assert err == [
                f"mdbpy: debuginfod: no debug file for libc.so.6 (build-id {libc_build_id}): "
                f"{server.url}: {why}; going on without it (other objects the servers lack "
                "are not named)"]
    finally:
        server.close()
    d = no_debug_files / "home" / ".cache" / "debuginfod_client" / libc_build_id
    assert not d.exists() or not list(d.iterdir())
