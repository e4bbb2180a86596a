"""JSON output mode (`--json`, `::set -o json`): one JSON document per dcmd invocation.

A JSON-capable dcmd asks wants_json(inv); if so it builds a dict from the same data its text is
printed from and hands it to emit(), which writes it as one line (JSON Lines: several commands
give one parseable document each). Piped invocations stay text: the next stage reads addresses.
Dcmds that are not JSON-capable print their text as usual (documented in docs/json.md).

Table is the shared shape of the listings: rows of named, typed cells and the mdb text they
print as. A dcmd fills it once; lines() renders mdb's text (header, one format line per row,
footer) and rows are the JSON, so the two cannot disagree.
"""

from __future__ import annotations

import json
import string
from collections.abc import Sequence

from mdbpy.output import human_size


def wants_json(inv) -> bool:
    """True when this invocation should print JSON: the json option is on and the output is
    not going into a pipe."""
    return bool(inv.session.options.get("json")) and not inv.piped_out


def emit(inv, command: str, **data) -> None:
    """Write {"command": command, **data} as one line of JSON."""
    inv.out.write(json.dumps({"command": command, **data}, separators=(",", ":")) + "\n")


class _CellFormatter(string.Formatter):
    """str.format plus mdb_printf's %H as the conversion !H (`{memory!H:>8s}`), and !A for an
    address that may be missing (16 hex digits, or `-` for None: `{info!A:16s}`)."""

    def convert_field(self, value, conversion):
        if conversion == "H":
            return human_size(value)
        if conversion == "A":
            return "-" if value is None else f"{value:016x}"
        return super().convert_field(value, conversion)


_CELLS = _CellFormatter()


def cells(fmt: str, *args, **values) -> str:
    """One line formatted as Table rows are (str.format with !H), e.g. a total line."""
    return _CELLS.format(fmt, *args, **values)


class Table:
    """Rows with named cells, and the text they print as.

    row is a format string over the cell names (`"{name:<25s} {bufsize:7d} {memory!H:>8s}"`);
    head and foot are text lines before and after the rows. Cells that the text leaves out
    still go to JSON."""

    def __init__(self, row: str, head: Sequence[str] = (), foot: Sequence[str] = ()):
        self.row = row
        self.head = list(head)
        self.foot = list(foot)
        self.rows: list[dict] = []

    def add(self, **cells) -> dict:
        self.rows.append(cells)
        return cells

    def lines(self) -> list[str]:
        return self.head + [cells(self.row, **r) for r in self.rows] + self.foot

    def print(self, inv) -> None:
        for line in self.lines():
            inv.print(line)

    def show(self, inv, command: str, key: str) -> None:
        """The table as the invocation wants it: one JSON line {"command": command, key:
        rows} when JSON is on and the output is not piped, else the text."""
        if wants_json(inv):
            emit(inv, command, **{key: self.rows})
        else:
            self.print(inv)
