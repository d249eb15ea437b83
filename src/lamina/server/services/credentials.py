"""Device credentials this server process verified, by their token's hash: an agent's
requests after its first are authenticated without a database read or a worker thread.

Revocation must be honoured at once: an entry is only a copy of the ``devices`` row the
credential matched, so every write that may change what ``authenticate`` answers (a
device's status, credential or name; a device inserted or deleted) empties the cache,
both when its statement runs and again once its transaction has ended. An answer read
from the database is kept only if no such write ran or was in flight since before it was
read (``generation``, ``keep``): a lookup that raced a revocation is answered, as it
would have been without the cache, and not remembered.

Only on SQLite, where this process is the database's one writer (``db.engine``: its
writers take the engine's turn, and an admin's command does not write devices). With
PostgreSQL two servers share the database, and one's revocation would not reach the
other's cache: there every request reads the row, as before. Should two servers be run
against one SQLite file anyway, an entry is trusted for :data:`KNOWN_SECONDS` at most,
so a revocation through the other reaches this one within that time.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, event

from lamina.db.engine import after_writes, is_sqlite
from lamina.server.security import Principal

#: Verified credentials kept at most (then the cache starts again empty).
KNOWN_CREDENTIALS = 100_000
#: How long an entry is trusted. A revocation through this process ends it at once; the
#: bound is for what this process cannot see: another server run against the same SQLite
#: file anyway (one server per SQLite database is the supported shape).
KNOWN_SECONDS = 30.0
#: Columns of ``devices`` an answer of ``authenticate`` depends on.
_ANSWERED_FROM = frozenset({"status", "credential_hash", "hostname", "id"})
_MENTIONS_DEVICES = re.compile(r"\bdevices\b", re.IGNORECASE)
_SIMPLE_UPDATE = re.compile(
    r"UPDATE\s+\"?devices\"?\s+SET\s+(.*?)(?:\s+WHERE\s|\s+RETURNING\s|$)",
    re.IGNORECASE | re.DOTALL,
)
_SET_COLUMN = re.compile(r"\"?(\w+)\"?\s*=")


def writes_credentials(statement: str) -> bool:
    """Whether SQL ``statement`` may change what a device credential authenticates as.

    Conservative: any statement naming ``devices`` that is not a plain ``SELECT`` counts
    (an insert, a delete, a statement behind a comment or a ``WITH``, a schema-qualified
    name), except an ``UPDATE devices SET ...`` whose SET clause is plain ``column = ?``
    assignments (no sub-select, no parenthesis) of none of the columns an answer is read from.
    """
    if _MENTIONS_DEVICES.search(statement) is None:
        return False
    text = statement.lstrip()
    if text[:6].upper() == "SELECT":
        return False
    sets = _SIMPLE_UPDATE.match(text)
    if sets is None or "(" in sets.group(1) or "select" in sets.group(1).lower():
        return True
    columns = {c.lower() for c in _SET_COLUMN.findall(sets.group(1))}
    return not columns or bool(columns & _ANSWERED_FROM)


class DeviceCredentials:
    """Principals of device credentials verified by ``authenticate``, by token hash
    (thread-safe; see the module's docstring for why a revocation is never missed)."""

    def __init__(self, engine: Engine) -> None:
        self._lock = threading.Lock()
        self._known: dict[str, tuple[Principal, float]] = {}
        self._generation = 0
        self._writing = False
        self.enabled = is_sqlite(engine)
        if self.enabled:
            event.listen(engine, "before_cursor_execute", self._on_statement)
            after_writes(engine, self._after_write)

    def get(self, token_hash: str) -> Principal | None:
        entry = self._known.get(token_hash)
        if entry is None or entry[1] < time.monotonic():
            return None
        return entry[0]

    def generation(self) -> int | None:
        """To pass to ``keep``, taken before the database is read; None: keep nothing."""
        with self._lock:
            return None if (self._writing or not self.enabled) else self._generation

    def keep(self, token_hash: str, principal: Principal, generation: int | None) -> None:
        """Remember ``principal``, read after ``generation()`` returned ``generation``,
        unless a write that may change it began since."""
        with self._lock:
            if generation != self._generation or self._writing:
                return
            if len(self._known) >= KNOWN_CREDENTIALS:
                self._known.clear()
            self._known[token_hash] = (principal, time.monotonic() + KNOWN_SECONDS)

    def _forget(self, writing: bool) -> None:
        with self._lock:
            self._known.clear()
            self._generation += 1
            self._writing = writing

    def _on_statement(self, _conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if writes_credentials(statement):
            self._forget(writing=True)

    def _after_write(self) -> None:
        if self._writing:
            self._forget(writing=False)


@dataclass(frozen=True)
class Presented:
    """A device credential as a request presents it, not verified yet: by its token's
    hash, checked against the ``devices`` row it matches (``users.verify_device``, or a
    poll's own query: ``fleet.agent_config``) and then kept in ``known``."""

    token_hash: str
    known: DeviceCredentials | None = None

    def generation(self) -> int | None:
        """``known.generation()``, to take before the row is read."""
        return self.known.generation() if self.known is not None else None
