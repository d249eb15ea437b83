"""Merges: text configuration three ways (merge3), package databases per package (deb822)."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field

import merge3
from debian._deb822_repro import (  # the round-trip-safe parser (python-debian 1.x)
    Deb822ParagraphElement,
    SyntaxOrParseError,
    parse_deb822_file,
)

from lamina.errors import IntegrityError

#: dpkg's package database: the one a layer merges per package (``plan``), reads its
#: packages from (``capture``) and carries (``packs``).
DPKG_STATUS = "/var/lib/dpkg/status"


@dataclass(frozen=True)
class TextMerge:
    clean: bool
    text: bytes


def is_text(data: bytes) -> bool:
    if b"\0" in data[:8192] or len(data) > 4 * 1024 * 1024:
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def merge_text(base: bytes, ours: bytes, theirs: bytes) -> TextMerge:
    """``ours``: the endpoint's edited copy; ``theirs``: the new layer version."""
    m = merge3.Merge3(
        base.decode().splitlines(keepends=True),
        ours.decode().splitlines(keepends=True),
        theirs.decode().splitlines(keepends=True),
    )
    clean = all(g[0] != "conflict" for g in m.merge_groups())
    if not clean:
        return TextMerge(False, ours)
    return TextMerge(True, "".join(m.merge_lines()).encode())


# --- dpkg's status database ---------------------------------------------------------
# Parsed with python-debian's round-trip-safe deb822 parser: continuation lines, field
# order, comments and trailing spaces stay as dpkg wrote them, so an unchanged package
# database renders to the same bytes (tests/layers/test_merge.py checks the host's own).


@dataclass(frozen=True)
class Stanza:
    """One package's paragraph of dpkg's status file, and the fields Lamina reads from it.

    Two stanzas are the same when their text is: the fields are read from the text."""

    #: the paragraph as dpkg wrote it, ending with a newline, without the blank line after it
    text: str
    name: str = field(compare=False)
    arch: str = field(compare=False, default="")
    status: str = field(compare=False, default="")
    version: str = field(compare=False, default="")

    @property
    def key(self) -> str:
        """``name:arch``, or ``name`` for an ``all`` (or unstated) architecture."""
        return f"{self.name}:{self.arch}" if self.arch and self.arch != "all" else self.name


#: package key (``name:arch``, or ``name``) -> its stanza
Stanzas = dict[str, Stanza]


def _field(p: Deb822ParagraphElement, name: str) -> str:
    value = p.get(name)
    return value.strip() if isinstance(value, str) else ""


#: A plan reads one layer's database several times (old and new assignments): parse it
#: once. Keyed by digest, so the cache keeps no file bytes beyond the stanzas.
_PARSED: OrderedDict[bytes, tuple[Stanza, ...]] = OrderedDict()
_PARSED_MAX = 4
_PARSED_LOCK = threading.Lock()


def _parse(data: bytes) -> tuple[Stanza, ...]:
    digest = hashlib.sha256(data).digest()
    with _PARSED_LOCK:
        hit = _PARSED.get(digest)
    if hit is None:
        hit = _parse_uncached(data)
        with _PARSED_LOCK:
            _PARSED[digest] = hit
            while len(_PARSED) > _PARSED_MAX:
                _PARSED.popitem(last=False)
    return hit


def _parse_uncached(data: bytes) -> tuple[Stanza, ...]:
    text = data.decode("utf-8", errors="surrogateescape")
    try:
        paragraphs = list(parse_deb822_file(text.splitlines(keepends=True)))
        out = []
        for p in paragraphs:
            name = _field(p, "Package")
            if not name:
                continue  # not a package's paragraph (dpkg writes none such)
            body = p.dump()
            out.append(
                Stanza(
                    body if body.endswith("\n") else body + "\n",
                    name,
                    _field(p, "Architecture"),
                    _field(p, "Status"),
                    _field(p, "Version"),
                )
            )
    except (SyntaxOrParseError, ValueError) as e:  # ValueError: a field given twice
        raise IntegrityError(f"dpkg status database is not in deb822 format: {e}") from e
    return tuple(out)


def parse_dpkg_status(data: bytes) -> Stanzas:
    """Package key -> its stanza. A file dpkg could not read is an ``IntegrityError``;
    of two stanzas for one package, the later wins (as in dpkg)."""
    return {s.key: s for s in _parse(data)}


#: dpkg's status of an installed package
INSTALLED = "install ok installed"


def installed(stanzas: Stanzas) -> dict[str, str]:
    """Installed packages -> version."""
    return {s.name: s.version for s in stanzas.values() if s.status == INSTALLED}


def carry(wanted: Stanzas, here: Mapping[str, str]) -> tuple[Stanzas, list[dict[str, str]]]:
    """Which of a CVD's packages (``wanted``) a machine that has installed ``here``
    (name -> version) takes: the ones it has not installed; and a conflict row for each
    it has at another version, which keeps the machine's. The one rule of the dry run
    (``server/services/migration``) and of the staging (``agent/staging/migrate``)."""
    carried = {k: s for k, s in wanted.items() if s.name not in here}
    conflicts = [
        {"package": s.name, "cvd": s.version, "new": here[s.name], "wins": "new"}
        for s in wanted.values()
        if s.name in here and here[s.name] != s.version
    ]
    return carried, conflicts


def render_dpkg_status(stanzas: Stanzas) -> bytes:
    """The status file, in dpkg's order (by name, then architecture)."""
    ordered = sorted(stanzas.values(), key=lambda s: (s.name, s.arch))
    return "".join(f"{s.text}\n" for s in ordered).encode("utf-8", errors="surrogateescape")


def merge_dpkg_status(layers: list[Stanzas], endpoint: Stanzas, owned_before: set[str]) -> Stanzas:
    """Layers' packages in assigned order (later wins), plus the endpoint's own packages:
    those no previous layer owned (installed by the user) stay listed."""
    out: Stanzas = {}
    for layer in layers:
        out.update(layer)
    for key, stanza in endpoint.items():
        if key not in out and key not in owned_before:
            out[key] = stanza
    return out


def merge_dpkg_live(base: Stanzas, live: Stanzas, planned: Stanzas) -> Stanzas:
    """Per package, three ways: the server planned from ``base`` (the last snapshot);
    the endpoint is at ``live`` now. A package the endpoint did not change since
    takes the plan's stanza; one the plan left as it was keeps the endpoint's;
    changed on both sides, the plan (the layer) wins."""
    out: Stanzas = {}
    for key in sorted(set(base) | set(live) | set(planned)):
        b, now, p = base.get(key), live.get(key), planned.get(key)
        v = p if now == b or p != b else now
        if v is not None:
            out[key] = v
    return out
