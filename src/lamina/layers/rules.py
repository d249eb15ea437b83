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


#: Bounds on one pattern, so a hostile rule set costs at most O(len(path) * len(pattern)) per match.
MAX_PATTERN_LEN = 1024
MAX_WILDCARDS = 32

# Tokens of a compiled glob, matched by a Thompson simulation (never backtracking):
# ("lit", ch) one character; ("one",) one character but "/"; ("star",) any run
# without "/"; ("any",) any run; ("seg",) the optional "/" that opens "/**" (the
# "any" token after it is skipped with it).
Token = tuple[str, ...]


def _tokens(pattern: str) -> list[Token]:
    out: list[Token] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("/**", i) and (i + 3 == len(pattern) or pattern[i + 3] == "/"):
            out += [("seg",), ("any",)]
            i += 3
        elif pattern.startswith("**", i):
            out.append(("any",))
            i += 2
        elif pattern[i] == "*":
            out.append(("star",))
            i += 1
        elif pattern[i] == "?":
            out.append(("one",))
            i += 1
        else:
            out.append(("lit", pattern[i]))
            i += 1
    # Collapse runs: "any" absorbs a neighbouring "star" or "any" ("***", "**/**"-free runs).
    collapsed: list[Token] = []
    for t in out:
        prev = collapsed[-1] if collapsed else None
        if prev is not None and t[0] in ("star", "any") and prev[0] in ("star", "any"):
            if t[0] == "any" or prev[0] == "any":
                collapsed[-1] = ("any",)
            continue
        collapsed.append(t)
    return collapsed


@dataclass(frozen=True)
class Glob:
    """One compiled path pattern. Matching never backtracks: a pattern that the
    regex engine would match in linear time uses it (fast, in C); any other runs
    as a set-of-states simulation, O(len(path) * len(pattern))."""

    pattern: str
    tokens: tuple[Token, ...]
    regex: re.Pattern[str] | None

    def match(self, path: str) -> bool:
        if self.regex is not None:
            return self.regex.match(path) is not None
        return _simulate(self.tokens, path)


def _closure(tokens: tuple[Token, ...], states: set[int]) -> set[int]:
    todo = list(states)
    seen = set(states)
    while todo:
        i = todo.pop()
        if i >= len(tokens):
            continue
        kind = tokens[i][0]
        nxt = [i + 1] if kind in ("star", "any") else [i + 2] if kind == "seg" else []
        for j in nxt:
            if j not in seen:
                seen.add(j)
                todo.append(j)
    return seen


def _simulate(tokens: tuple[Token, ...], path: str) -> bool:
    states = _closure(tokens, {0})
    for ch in path:
        nxt: set[int] = set()
        for i in states:
            if i >= len(tokens):
                continue
            t = tokens[i]
            kind = t[0]
            if (
                (kind == "lit" and t[1] == ch)
                or (kind == "one" and ch != "/")
                or (kind == "seg" and ch == "/")
            ):
                nxt.add(i + 1)
            elif (kind == "star" and ch != "/") or kind == "any":
                nxt.add(i)
        if not nxt:
            return False
        states = _closure(tokens, nxt)
    return len(tokens) in states


def _regex_is_linear(tokens: list[Token]) -> bool:
    """At most one unbounded run across "/" and at most one star per component:
    then the regex engine's backtracking is bounded by the path's length."""
    if sum(t[0] == "any" for t in tokens) > 1:
        return False
    stars = 0
    for t in tokens:
        if t == ("lit", "/") or t[0] == "seg":
            stars = 0
        elif t[0] == "star":
            stars += 1
            if stars > 1:
                return False
    return True


@functools.lru_cache(maxsize=4096)
def compile_glob(pattern: str) -> Glob:
    if not pattern.startswith("/"):
        raise UsageError(f"path pattern {pattern!r} must be absolute (start with /)")
    if len(pattern) > MAX_PATTERN_LEN:
        raise UsageError(
            f"path pattern of {len(pattern)} characters: at most {MAX_PATTERN_LEN} allowed"
        )
    wild = len(re.findall(r"\*\*|\*|\?", pattern))
    if wild > MAX_WILDCARDS:
        raise UsageError(
            f"path pattern {pattern[:60]!r}... has {wild} wildcards: at most {MAX_WILDCARDS}"
        )
    if not any(ch in pattern for ch in "*?"):
        # A plain path names itself and everything below it (``/home``, ``/``).
        rx = re.compile(re.escape(pattern.rstrip("/")) + r"(?:/.*)?\Z", re.DOTALL)
        return Glob(pattern, (), rx)
    tokens = _tokens(pattern)
    regex = None
    if _regex_is_linear(tokens):
        parts = []
        for i, t in enumerate(tokens):
            kind = t[0]
            if kind == "lit":
                parts.append(re.escape(t[1]))
            elif kind == "one":
                parts.append("[^/]")
            elif kind == "star":
                parts.append("[^/]*")
            elif kind == "seg":
                parts.append("(?:/")
            elif i > 0 and tokens[i - 1][0] == "seg":
                parts.append(".*)?")
            else:
                parts.append(".*")
        regex = re.compile("".join(parts) + r"\Z", re.DOTALL)
    return Glob(pattern, tuple(tokens), regex)


def matches(patterns: tuple[str, ...] | list[str], path: str) -> bool:
    return any(compile_glob(p).match(path) for p in patterns)


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
class MigrationRules:
    """What a CVD laid onto other hardware leaves as the new machine has it.

    ``hardware_bound``: paths that name this machine's disks, boot firmware and
    network devices (fstab, bootloader, LVM devices, mdadm, interface bindings):
    a migration keeps the new machine's and reports them. ``storage_drivers``:
    where the initramfs's storage modules are listed; when they differ between
    the two machines the boot step rebuilds the initramfs."""

    hardware_bound: tuple[str, ...] = ()
    storage_drivers: tuple[str, ...] = ()


@dataclass(frozen=True)
class RuleSet:
    name: str
    order: tuple[str, ...]
    classes: dict[str, tuple[str, ...]]
    layers: LayerRules = LayerRules()
    migration: MigrationRules = MigrationRules()

    def hardware_bound(self, path: str) -> bool:
        """Does ``path`` stay the new machine's in a migration?"""
        return matches(self.migration.hardware_bound, path)

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
            p.endswith("/**") and compile_glob(p[:-3] or "/").match(d)
            for p in self.classes.get("excluded", ())
        )


def _strings(value: object, where: str) -> tuple[str, ...]:
    """A list of strings, or a ``UsageError`` naming ``where`` and what was found."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UsageError(f"rule set: {where} must be a list of strings, not {type(value).__name__}")
    return tuple(value)


def _section(value: object, where: str) -> dict[str, object]:
    if not isinstance(value, dict):
        raise UsageError(f"rule set: {where} must be an object, not {type(value).__name__}")
    return value


def parse_rules(raw: str | bytes) -> RuleSet:
    """Parse and validate a rule set; anything malformed is a ``UsageError``."""
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise UsageError(f"rule set is not valid JSON: {e}") from e
    if not isinstance(doc, dict) or doc.get("lamina_rules") != RULES_VERSION:
        raise UsageError(f"unsupported rule set version (expected lamina_rules: {RULES_VERSION})")
    classes = _section(doc.get("classes") or {}, "classes")
    order = _strings(doc.get("order") or list(CLASSES), "order")
    for cls in (*classes, *order):
        if cls not in CLASSES:
            raise UsageError(f"unknown path class {cls!r} (known: {', '.join(CLASSES)})")
    parsed = {c: _strings(pats, f"classes.{c}") for c, pats in classes.items()}
    ld = _section(doc.get("layers") or {}, "layers")
    dbs = _section(ld.get("package_databases") or {}, "layers.package_databases")
    if not all(isinstance(v, str) for v in dbs.values()):
        raise UsageError("rule set: layers.package_databases must map paths to names")
    layers = LayerRules(
        capture_classes=_strings(
            ld.get("capture_classes", ["system", "applications"]), "layers.capture_classes"
        ),
        do_not_capture=_strings(ld.get("do_not_capture", []), "layers.do_not_capture"),
        exceptions=_strings(ld.get("exceptions", []), "layers.exceptions"),
        never_override=_strings(ld.get("never_override", []), "layers.never_override"),
        text_config=_strings(ld.get("text_config", ["/etc/**"]), "layers.text_config"),
        package_databases=tuple((str(k), str(v)) for k, v in dbs.items()),
    )
    md = _section(doc.get("migration") or {}, "migration")
    migration = MigrationRules(
        hardware_bound=_strings(md.get("hardware_bound", []), "migration.hardware_bound"),
        storage_drivers=_strings(md.get("storage_drivers", []), "migration.storage_drivers"),
    )
    for pats in (
        *parsed.values(),
        migration.hardware_bound,
        migration.storage_drivers,
        layers.do_not_capture,
        layers.exceptions,
        layers.never_override,
        layers.text_config,
    ):
        for p in pats:
            compile_glob(p)
    for cls in layers.capture_classes:
        if cls not in CLASSES:
            raise UsageError(f"unknown path class {cls!r} in layers.capture_classes")
    return RuleSet(str(doc.get("name", "custom")), order, parsed, layers, migration)


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
