"""The docs are tested: every ```mdb block of the pages runs, and docs/reference.md is current.

Block convention (docs/getting-started.md says it for readers too): in a fenced block whose
info string is `mdb`, a line starting with `> ` (mdbpy's prompt) is a command, and the lines
after it, up to the next command or the end of the block, are exactly what mdbpy prints for it
(standard output and warnings, as a terminal shows them; trailing blanks ignored). The commands
of one page run in order in one session, as a user would type them, on the demo's core, or on
the scenario of the page's last ```scn block before them. Other blocks (sh, c, python, plain)
are not run.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from support import bundled_modules

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = ("getting-started.md", "language.md", "simulator.md", "umem.md", "glibc.md",
         "new-allocator.md")
# the directory the demo is built in, as the pages show it (the real one is random)
DEMO_DIR = "/tmp/mdbpy-demo-w7b8bouy"


@dataclass
class Block:
    lang: str
    line: int  # of the opening fence, 1-based
    lines: list[str] = field(default_factory=list)

    def steps(self) -> list[tuple[int, str, list[str]]]:
        """(line number, command, expected output lines) of an mdb block."""
        out: list = []
        for i, text in enumerate(self.lines):
            if text.startswith("> "):
                out.append((self.line + 1 + i, text[2:], []))
            elif out:
                out[-1][2].append(text.rstrip())
            elif text.strip():
                raise AssertionError(f"line {self.line + 1 + i}: output before any command")
        return out


def blocks(path: Path) -> list[Block]:
    """The fenced blocks of a Markdown page."""
    found, cur = [], None
    for n, text in enumerate(path.read_text().splitlines(), 1):
        if text.startswith("```"):
            if cur is None:
                cur = Block(text[3:].strip(), n)
            else:
                found.append(cur)
                cur = None
        elif cur is not None:
            cur.lines.append(text)
    assert cur is None, f"{path.name}: unclosed block at line {cur.line}"
    return found


class DocSession:
    """An mdbpy session on a scenario's core, built in a directory the page shows as
    DEMO_DIR; run() returns what a terminal would show for one command."""

    def __init__(self, scenario: str, directory: Path):
        from mdbpy.lang.engine import Engine
        from mdbpy.session import Session
        from mdbpy.sim.build import build, write
        from mdbpy.target.core import open_file_target

        prog, core, _truth = write(build(scenario), str(directory))
        self.dir = str(directory)
        self.buf = io.StringIO()
        self.target = open_file_target(core, exe=prog)
        self.session = Session(self.target, out=self.buf, err=self.buf)
        self.engine = Engine(self.session)

    def run(self, command: str) -> list[str]:
        self.buf.seek(0)
        self.buf.truncate()
        self.engine.run_line(command)
        text = self.buf.getvalue().replace(self.dir, DEMO_DIR)
        return [line.rstrip() for line in text.splitlines()]

    def close(self) -> None:
        self.target.close()


def page_results(page: str, tmp_path: Path):
    """(line, command, expected, got) for every command of a page's mdb blocks."""
    from mdbpy.sim.demo import SCENARIO

    scenario, session, results = SCENARIO.read_text(), None, []
    try:
        for n, b in enumerate(blocks(DOCS / page)):
            if b.lang == "scn":
                scenario = "\n".join(b.lines) + "\n"
                if session is not None:
                    session.close()
                    session = None
            elif b.lang == "mdb":
                if session is None:
                    session = DocSession(scenario, tmp_path / f"block{n}")
                for line, command, expected in b.steps():
                    results.append((line, command, expected, session.run(command)))
    finally:
        if session is not None:
            session.close()
    return results


@pytest.mark.parametrize("page", PAGES)
def test_page_examples_print_what_the_page_says(page, tmp_path):
    results = page_results(page, tmp_path)
    wrong = [f"docs/{page}:{line}: > {cmd}\n  expected:\n" + "\n".join(exp) +
             "\n  got:\n" + "\n".join(got)
             for line, cmd, exp, got in results if exp != got]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("page, least", [("getting-started.md", 15), ("language.md", 30),
                                         ("simulator.md", 3)])
def test_pages_have_examples(page, least):
    assert sum(len(b.steps()) for b in blocks(DOCS / page) if b.lang == "mdb") >= least


def test_reference_is_current():
    from mdbpy.docgen import REFRESH, reference

    committed = (DOCS / "reference.md").read_text()
    assert committed == reference(), f"docs/reference.md is stale: run `{REFRESH}`"


def test_reference_lists_every_bundled_dcmd_and_walker():
    from mdbpy.docgen import registry, shown

    text = (DOCS / "reference.md").read_text()
    reg = registry()
    assert set(reg.dmods) == {"mdb", *bundled_modules()[1:]}  # core is the dmod `mdb`
    for name in reg.dcmds:
        assert f"`{shown(name)}`" in text, name
    for name in reg.walkers:
        assert f"- `{name}`" in text, name


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.md")) + ["../README.md"])
def test_relative_links_point_at_files(page):
    path = (DOCS / page).resolve()
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", path.read_text()):
        assert (path.parent / target).exists(), f"{page}: broken link {target}"
