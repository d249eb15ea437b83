"""Path classes: which class every endpoint path belongs to, by rule sets kept as data.

Classes: ``system``, ``applications``, ``user_data``, ``machine_identity``,
``excluded``. A rule set (JSON, ``lamina_rules: 1``) lists glob patterns per
class and the order in which classes are tried; the first match wins. Globs
match absolute endpoint paths: ``*`` and ``?`` stay inside one component,
``**`` crosses components; a path without wildcards names itself and
everything below it.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from importlib import resources

from lamina.errors import UsageError

CLASSES = ("system", "applications", "user_data", "machine_identity", "excluded")
RULES_VERSION = 1


@functools.lru_cache(maxsize=4096)
def glob_regex(pattern: str) -> re.Pattern[str]:
    if not pattern.startswith("/"):
        raise UsageError(f"path pattern {pattern!r} must be absolute (start with /)")
    if not any(ch in pattern for ch in "*?"):
        # A plain path names itself and everything below it (``/home``, ``/``).
        return re.compile(re.escape(pattern.rstrip("/")) + r"(?:/.*)?\Z")
    out = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if pattern.startswith("/**", i) and (i + 3 == len(pattern) or pattern[i + 3] == "/"):
            out.append("(?:/.*)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif ch == "*":
            out.append("[^/]*")
            i += 1
        elif ch == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(ch))
            i += 1
    return re.compile("".join(out) + r"\Z")


def matches(patterns: tuple[str, ...] | list[str], path: str) -> bool:
    return any(glob_regex(p).match(path) for p in patterns)


@dataclass(frozen=True)
class LayerRules:
    """What a layer may carry and what it may never replace on an endpoint."""

    capture_classes: tuple[str, ...] = ("system", "applications")
    do_not_capture: tuple[str, ...] = ()
    exceptions: tuple[str, ...] = ()
    never_override: tuple[str, ...] = ()
    text_config: tuple[str, ...] = ("/etc/**",)
    package_databases: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class RuleSet:
    name: str
    order: tuple[str, ...]
    classes: dict[str, tuple[str, ...]]
    layers: LayerRules = LayerRules()

    def capturable(self, path: str) -> bool:
        """May a layer carry ``path``?"""
        lr = self.layers
        if matches(lr.do_not_capture, path) and not matches(lr.exceptions, path):
            return False
        return self.classify(path) in lr.capture_classes

    def classify(self, path: str) -> str:
        for cls in self.order:
            if matches(self.classes.get(cls, ()), path):
                return cls
        return "system"

    def prunable(self, directory: str) -> bool:
        """True when everything below ``directory`` is excluded, so it need not be listed.

        The directory itself is kept (empty): restoring ``/var/log`` without its
        content is right; restoring a system without ``/var/log`` is not.
        """
        if not self.order or self.order[0] != "excluded":
            return False
        d = directory.rstrip("/") or "/"
        return any(
            p.endswith("/**") and glob_regex(p[:-3] or "/").match(d)
            for p in self.classes.get("excluded", ())
        )


def parse_rules(raw: str | bytes) -> RuleSet:
    try:
        doc = json.loads(raw)
    except ValueError as e:
        raise UsageError(f"rule set is not valid JSON: {e}") from e
    if not isinstance(doc, dict) or doc.get("lamina_rules") != RULES_VERSION:
        raise UsageError(f"unsupported rule set version (expected lamina_rules: {RULES_VERSION})")
    classes = doc.get("classes") or {}
    order = tuple(doc.get("order") or CLASSES)
    for cls in (*classes, *order):
        if cls not in CLASSES:
            raise UsageError(f"unknown path class {cls!r} (known: {', '.join(CLASSES)})")
    parsed = {c: tuple(str(p) for p in pats) for c, pats in classes.items()}
    ld = doc.get("layers") or {}
    layers = LayerRules(
        capture_classes=tuple(ld.get("capture_classes", ("system", "applications"))),
        do_not_capture=tuple(ld.get("do_not_capture", ())),
        exceptions=tuple(ld.get("exceptions", ())),
        never_override=tuple(ld.get("never_override", ())),
        text_config=tuple(ld.get("text_config", ("/etc/**",))),
        package_databases=tuple(
            (str(k), str(v)) for k, v in (ld.get("package_databases") or {}).items()
        ),
    )
    for pats in (
        *parsed.values(),
        layers.do_not_capture,
        layers.exceptions,
        layers.never_override,
        layers.text_config,
    ):
        for p in pats:
            glob_regex(p)
    for cls in layers.capture_classes:
        if cls not in CLASSES:
            raise UsageError(f"unknown path class {cls!r} in layers.capture_classes")
    return RuleSet(str(doc.get("name", "custom")), order, parsed, layers)


@functools.lru_cache(maxsize=8)
def builtin(name: str = "linux") -> RuleSet:
    try:
        raw = resources.files("lamina.layers.rulesets").joinpath(f"{name}.json").read_text()
    except FileNotFoundError as e:
        raise UsageError(f"no built-in rule set {name!r}") from e
    return parse_rules(raw)


_RHEL_LIKE = {"rhel", "centos", "fedora", "rocky", "almalinux", "ol", "amzn"}
_DEBIAN_LIKE = {"debian", "ubuntu", "linuxmint", "pop", "raspbian"}


def for_os(os_release: dict[str, str] | None) -> RuleSet:
    """The built-in rule set for an endpoint's os-release (ID, ID_LIKE)."""
    ids = set()
    if os_release:
        ids = {os_release.get("ID", "").lower(), *os_release.get("ID_LIKE", "").lower().split()}
    if ids & _RHEL_LIKE:
        return builtin("rhel")
    if ids & _DEBIAN_LIKE:
        return builtin("debian")
    return builtin("linux")
