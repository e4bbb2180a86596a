"""README's first command: `mdbpy --demo` builds the example, attaches, and cleans up."""

from __future__ import annotations

import os
import re

from support import run_mdbpy


def test_demo_runs_and_cleans_up():
    r = run_mdbpy("-S", "--demo", input="::threads\n*list_head/JJs\nmain/2i\n$q\n")
    assert r.returncode == 0, r.stderr
    pid = int(re.search(r"attached to PID (\d+)", r.stderr).group(1))
    lines = r.stdout.splitlines()
    assert [line.lstrip("* ").split()[1] for line in lines[1:5]] == [
        "mdbpy-demo", "sleeper", "waiter", "reader"]
    assert all("S (sleeping)" in line for line in lines[1:5])
    assert re.fullmatch(r"0x[0-9a-f]+: +[0-9a-f]+ +1000 +node0", lines[5])
    assert lines[6] == "main:" and lines[7].startswith("main:")
    assert not os.path.exists(f"/proc/{pid}"), "the example process outlives the demo"
