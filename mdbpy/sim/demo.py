"""`mdbpy --demo`: something real to look at on any machine, no compiler needed.

Builds the bundled scenario (demo.scn: a small config server whose heap holds a leak inside a
helper, a use-after-free write, an overflow and a double free) into a temporary directory and
opens the program and its core exactly as `mdbpy PROG CORE` would. The files are removed when
the session ends.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from mdbpy.target.core import CoreTarget

SCENARIO = Path(__file__).with_name("demo.scn")

HINT = """\
mdbpy demo: the core of {prog}, a simulated config server (two threads, a SLUB heap with
slub_debug) with four planted bugs: a leak inside the helper parse_line, an overflow into a red
zone, a use-after-free write into a freed session, and a double free. Try:
  ::status   ::threads   ::stacks   ::mappings   ::nm   ::slabinfo   ::findleaks
  ::heap_verify   *config_list::walk list | ::eval './JJJ'   ::dcmds   $q
(the planted truth is in {truth})
"""


class _DemoCore(CoreTarget):
    """The demo's core; closing it also removes the directory the demo was built in."""

    def __init__(self, core: str, exe: str, workdir: str):
        super().__init__(core, exe=exe)
        self.workdir = workdir

    def close(self) -> None:
        try:
            super().close()
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)


def open_demo_target() -> CoreTarget:
    from mdbpy.sim.build import build, write

    result = build(SCENARIO.read_text())
    workdir = tempfile.mkdtemp(prefix="mdbpy-demo-")
    try:
        prog, core, truth = write(result, workdir)
        target = _DemoCore(core, prog, workdir)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    sys.stderr.write(HINT.format(prog=prog, truth=truth))
    return target
