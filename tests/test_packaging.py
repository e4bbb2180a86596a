"""The package installs what the tree holds, and the registry documents every command."""

from __future__ import annotations

import tomllib
from pathlib import Path

from mdbpy.session import Session
from mdbpy.target.synthetic import SyntheticTarget

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_lists_every_package():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    found = set()
    for top, name in (("mdbpy", "mdbpy"), ("commands", "mdbpy_commands")):
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / top)
            found.add(".".join([name, *rel.parts]))
    assert found == listed


def test_every_dcmd_and_walker_is_documented():
    s = Session(SyntheticTarget([(0x1000, bytes(64))]))
    dcmds = list(s.registry.dcmds.values())
    assert dcmds, "the core module registers dcmds"
    for d in dcmds:
        assert d.descr and d.help.strip() and d.example, f"::{d.name} lacks help or example"
    for w in s.registry.walkers.values():
        assert w.descr, f"walker {w.name} lacks a description"
