"""Tab completion from the session: dcmds, walkers, `$` verbs, a dcmd's option letters (from
its declaration, with their help), variables, symbols and the module names ::load takes.

Everything offered comes from the registry and the symbol table of the session, so a dmod loaded
with ::load is completable at once and a dcmd hidden by its enabled() predicate is not offered;
::load's names are the installed modules (mdbpy.dcmd.installed(), as everything that lists
modules), read on the first TAB after ::load, not at start-up. What is being typed is told by
the language's own parser (mdbpy/lang/spans.py: the same reading colours the line), never by
patterns of its own: a word in a format list is no symbol, `:c` after `$<<` is no verb.
Symbol names are completed by binary search over a sorted, de-duplicated name list built once
per set of load objects: a libc with debug symbols holds tens of thousands of names and TAB must
stay instant. The list of candidates is capped (MAX_SYMBOLS) for the same reason.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator

from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document

MAX_SYMBOLS = 200  # symbol candidates shown for one TAB
MIN_SYMBOL_PREFIX = 2  # shorter prefixes match too much of a libc to be useful

# Symbol types that name nothing an expression can use.
_SKIP_TYPES = frozenset({"file", "section", "undefined"})


class MdbCompleter(Completer):
    """A prompt_toolkit Completer over one Session (see the module docstring)."""

    def __init__(self, session):
        self.session = session
        self._index_key: tuple | None = None
        self._index: dict[str | None, list[str]] = {}

    def get_completions(self, document: Document,
                        complete_event: CompleteEvent) -> Iterator[Completion]:
        stage, kind, word = _context(document.text_before_cursor)
        if kind == "dcmd":
            yield from _matching(word[2:], self._dcmds(dollar=False))
        elif kind == "verb" or word == "$":
            yield from _matching(word, ((n, d) for n, d in self._dcmds(dollar=True)
                                        if n.startswith("$")))
        elif kind == "variable" and word.startswith("<"):
            yield from _matching(word[1:], ((v, "variable") for v in sorted(
                self.session.vars)))
        elif stage is not None and word.startswith("-"):
            yield from _matching(word, self._options(stage.removeprefix("::")))
        elif stage == "::walk":
            yield from _matching(word, self._walkers())
        elif stage == "::help":
            yield from _matching(word.removeprefix("::"), self._dcmds(dollar=True))
        elif stage == "::load":
            from mdbpy.dcmd import installed

            yield from _matching(word, ((n, ep.value) for n, ep in installed().items()))
        elif kind == "name" and len(word) >= MIN_SYMBOL_PREFIX:
            yield from self._symbols(word)

    # -- sources ----------------------------------------------------------------------------
    def _dcmds(self, dollar: bool) -> Iterator[tuple[str, str]]:
        """(name, description) of every visible dcmd and alias; `$x` names only when asked."""
        for d in self.session.registry.visible_dcmds(self.session):
            for n in (d.name, *d.aliases):
                if dollar or not n.startswith("$"):
                    yield n, d.descr

    def _options(self, name: str) -> Iterator[tuple[str, str]]:
        """(-x, help) of each option the dcmd `name` declares (none when it parses its words
        itself or is unknown)."""
        d = self.session.registry.dcmds.get(name)
        if d is not None and d.getopt:
            for o in d.opts:
                yield "-" + o.letter, o.help

    def _walkers(self) -> Iterator[tuple[str, str]]:
        for w in self.session.registry.visible_walkers(self.session):
            yield w.name, w.descr

    def _symbols(self, word: str) -> Iterator[Completion]:
        """Names starting with `word`; `obj`prefix` searches one object; a word that starts an
        object's name also offers `obj`` so the user can go on into that object."""
        objects = self.session.symbols.objects()
        self._refresh_index(objects)
        if "`" in word:
            obj_name, prefix = word.split("`", 1)
            obj = self.session.symbols.object_named(obj_name)
            if obj is None:
                return
            names = self._index.get(obj.name, [])
            lead = obj_name + "`"
        else:
            prefix, names, lead = word, self._index[None], ""
            for o in objects:
                if o.name.startswith(word) and o.symbols:
                    yield Completion(o.name + "`", -len(word), display_meta="load object")
        for name in _prefixed(names, prefix, MAX_SYMBOLS):
            yield Completion(lead + name, -len(word))

    def _refresh_index(self, objects) -> None:
        """Rebuild the sorted name lists when the set of load objects has changed."""
        key = tuple((id(o), len(o.symbols)) for o in objects)
        if key == self._index_key:
            return
        index: dict[str | None, list[str]] = {}
        every: set[str] = set()
        for o in objects:
            names = {s.name for s in o.symbols if s.name and s.type not in _SKIP_TYPES}
            index[o.name] = sorted(names)
            every |= names
        index[None] = sorted(every)
        self._index, self._index_key = index, key


def _context(text: str) -> tuple[str | None, str, str]:
    """(stage, kind, word) at the end of text, as the language's parser reads it
    (mdbpy/lang/spans.py, the REPL's colours too): the dcmd or verb of the pipeline stage
    being typed (None outside one), the kind of the piece at the cursor ('space' after a
    blank) and its text."""
    from mdbpy.lang.spans import spans

    stage, last = None, None
    for a, b, k in spans(text):
        if k in ("dcmd", "verb"):
            stage = text[a:b]
        elif k in ("pipe", "end"):
            stage = None
        last = (a, b, k)
    if last is None or last[2] == "space":
        return stage, "space", ""
    a, b, k = last
    if k in ("dcmd", "verb"):
        stage = None  # the name itself is being typed
    return stage, k, text[a:b]


def _prefixed(names: list[str], prefix: str, limit: int) -> list[str]:
    """The first `limit` names of a sorted list that start with prefix (binary search)."""
    i = bisect.bisect_left(names, prefix)
    out = []
    while i < len(names) and len(out) < limit and names[i].startswith(prefix):
        out.append(names[i])
        i += 1
    return out


def _matching(prefix: str, candidates: Iterable[tuple[str, str]]) -> Iterator[Completion]:
    """Completions for the names that start with prefix, each with its description."""
    seen = set()
    for name, descr in candidates:
        if name.startswith(prefix) and name not in seen:
            seen.add(name)
            yield Completion(name, -len(prefix), display_meta=descr)
