"""`mdbpy --demo`: something real to look at on a fresh machine.

Compiles the bundled C example (fixtures/basic.c: globals, a heap linked list, four threads
parked in blocking calls), starts it, and attaches to it. The example process belongs to the
demo: it is killed when the session ends, however it ends.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from mdbpy.errors import MdbError

SOURCE = Path(__file__).resolve().parents[1] / "fixtures" / "basic.c"

HINT = """\
mdbpy demo: attached to PID {pid}, a small C program ({src}) with globals, a linked list
on the heap at {head} (struct node: next, value, char tag[16]) and four threads. Try:
  ::status   ::mappings   ::threads   ::stacks   ::nm -g   main/5i
  list_head/J   *list_head/JJs   *list_head::walk list | ::eval '.+8/J'   0t10*4=D
  ::dcmds   ::help walk   $q
"""
SYS_RT_SIGTIMEDWAIT = 128  # x86_64: where the example's main thread waits


def _wait_parked(pid: int, timeout: float = 5.0) -> None:
    """Wait until the example's main thread sits in sigwait, so the demo starts from a quiet
    process (its threads are already parked when it prints READY)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/syscall") as f:
                if f.read().split(" ", 1)[0] == str(SYS_RT_SIGTIMEDWAIT):
                    return
        except OSError:
            return
        time.sleep(0.01)


def _build(workdir: str) -> str:
    if not SOURCE.exists():
        raise MdbError(f"demo source {SOURCE} not found (run from a source checkout)")
    if shutil.which("gcc") is None:
        raise MdbError("the demo needs gcc (apt-get install gcc)")
    exe = os.path.join(workdir, "mdbpy-demo")
    r = subprocess.run(["gcc", "-g", "-O0", "-pthread", "-o", exe, str(SOURCE)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise MdbError(f"cannot build the demo: {r.stderr.strip().splitlines()[-1]}")
    return exe


def open_demo_target():
    from mdbpy.target.live import LiveTarget

    workdir = tempfile.mkdtemp(prefix="mdbpy-demo-")
    exe = _build(workdir)
    proc = subprocess.Popen([exe], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    m = re.search(r"pid=(\d+) list_head=(\S+)", line)
    if not m:
        proc.kill()
        raise MdbError("the demo program did not start")

    class DemoTarget(LiveTarget):
        """The live example; closing the session also ends the example process."""

        def close(self):
            try:
                super().close()
            finally:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                shutil.rmtree(workdir, ignore_errors=True)

    _wait_parked(proc.pid)
    try:
        target = DemoTarget(proc.pid)
    except BaseException:
        proc.kill()
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    import sys

    sys.stderr.write(HINT.format(pid=proc.pid, src=SOURCE.name, head=m.group(2)))
    return target
