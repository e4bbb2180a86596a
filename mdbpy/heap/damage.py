"""What an allocator's walks met as garbage, for every allocator: one record type and one log.

A debugger is pointed at heaps that are already broken: a smashed slab pointer, a free list
made cyclic by a double free, a wild link. Every walk is bounded and cycle-safe; when it meets
garbage it records a Damage (where, what, and the memory it can no longer trust) and goes on
with what it can still trust. Each damage is printed once per stop of the target as a warning
(`umem: cache 0x... slab list: cycle at 0x...`), and its region is what the allocator's
untrusted() gives ::findleaks, which names it instead of reporting a silently incomplete count.

Two ways of keeping them, one record: walks that return what they met (ptmalloc's, whose
records ::ptmalloc_verify lists) keep lists of Damage and call warn(); walks that run deep
inside lazily built state (umem's, the simulator's) report into the session's DamageLog.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_WARNINGS = 20  # damage warnings printed per allocator and stop; the rest are counted
MAX_REGIONS = 1000  # damaged regions a log keeps for findleaks, whatever the damage


@dataclass(frozen=True)
class Damage:
    """owner: whose structure ('arena 0x...', 'tcache 0x...'; '' when text says it); addr:
    the chunk or word concerned (verify's address); text: what was met, e.g. 'fastbin[2]:
    cycle at 0x...'; [start, end): the memory not trusted because of it (empty when nothing
    is lost, e.g. a recovered ring)."""

    owner: str
    addr: int
    text: str
    start: int
    end: int

    @property
    def what(self) -> str:
        return f"{self.owner} {self.text}" if self.owner else self.text


def warn_once(session, message: str, seen_key) -> None:
    """Print message as a warning once per stop of the target (the session cache, which
    holds the messages shown, is dropped at each stop)."""
    shown = session.cache.setdefault(seen_key, set())
    if message not in shown:
        shown.add(message)
        session.warn(message)


def warn(session, prefix: str, damage: list[Damage]) -> None:
    """Print each damage as a `prefix: owner text` warning, once per stop of the target."""
    for d in damage:
        warn_once(session, f"{prefix}: {d.what}", (prefix, "damage warned"))


class DamageLog:
    """The damage one allocator's walks met in one stop of the target, each `why` kept and
    warned once (a second reader of the same state says nothing new), at most MAX_REGIONS
    kept and MAX_WARNINGS printed: a heap smashed end to end gives a count, not a flood."""

    def __init__(self, session, prefix: str):
        self.session = session
        self.prefix = prefix
        self.found: dict[str, Damage] = {}
        self.more = 0

    @classmethod
    def of(cls, session, prefix: str) -> DamageLog:
        """The session's log for one allocator (dropped with the session cache at a stop)."""
        key = (prefix, "damage log")
        log = session.cache.get(key)
        if log is None:
            log = session.cache[key] = cls(session, prefix)
        return log

    def report(self, start: int, end: int, why: str) -> None:
        if why in self.found:
            return
        if len(self.found) >= MAX_REGIONS:
            self.more += 1
            return
        self.found[why] = Damage("", start, why, start, end)
        shown = self.session.cache.setdefault((self.prefix, "damage warned"), set())
        if why in shown:
            return
        shown.add(why)
        if len(shown) <= MAX_WARNINGS:
            self.session.warn(f"{self.prefix}: {why}")
        elif len(shown) == MAX_WARNINGS + 1:
            self.session.warn(f"{self.prefix}: more damage found; ::findleaks lists every "
                              "region")

    def untrusted(self) -> list[tuple[int, int, str]]:
        """[start, end, why] of every damage kept, and a count of the ones that were not."""
        out = [(d.start, d.end, d.text) for d in self.found.values()]
        if self.more:
            out.append((0, 0, f"{self.more} more damaged structures"))
        return out
