"""README's first command: `mdbpy --demo` builds the simulated program, opens its core, finds
the planted leak, and removes its files when the session ends."""

from __future__ import annotations

import os
import re

from support import run_mdbpy


def test_demo_runs_and_cleans_up():
    r = run_mdbpy("-S", "--demo", input="::status\n::threads\n::stacks\n::heap_verify -q\n"
                   "::findleaks\n$q\n")
    assert r.returncode == 0, r.stderr
    assert "four planted bugs" in r.stderr
    prog = re.search(r"the core of (\S+),", r.stderr).group(1)
    assert os.path.basename(prog) == "confsrv"
    out = r.stdout.splitlines()
    assert out[0] == f"debugging core file of confsrv (64-bit) from {prog}.core"
    assert out[1] == f"file: {prog}"
    threads = [line.split() for line in out if re.match(r"[* ] +424[23] ", line)]
    assert [(t[-4], t[-1]) for t in threads] == [("4242", "serve+0x4"),
                                                  ("4243", "worker_loop+0x4")]
    i = out.index("THREAD 4242")
    assert out[i:i + 8] == ["THREAD 4242", "serve+0x4()", "main+0xe()", "_start+0x9()", "",
                            "THREAD 4243", "worker_loop+0x4()", "start_thread+0x9()"]
    bugs = [line for line in out if line.startswith("BUG ")]
    assert bugs == ["BUG kmalloc-256: Object already free", "BUG kmalloc-16: Redzone overwritten",
                    "BUG session: Poison overwritten"]
    assert "sim: 3 problems in 3 buffers" in out
    leak = [line for line in out if line.endswith("parse_line+0x9")]
    assert len(leak) == 1 and leak[0].split()[1] == "1"
    assert out[-1].split() == ["Total", "1", "buffer,", "128", "bytes"]
    assert not os.path.exists(os.path.dirname(prog)), "the demo's files outlive the session"
