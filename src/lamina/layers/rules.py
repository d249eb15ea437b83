"""Path classes: which class every endpoint path belongs to, by rule sets kept as data.

Classes: ``system``, ``applications``, ``user_data``, ``machine_identity``,
``excluded``. A rule set (JSON, ``lamina_rules: 1``) lists glob patterns per
class and the order in which classes are tried; the first match wins. Globs
match absolute endpoint paths: ``*`` and ``?`` stay inside one component,
``**`` crosses components; a path without wildcards names itself and
everything below it.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import json
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import re2

from lamina.errors import UsageError

CLASSES = ("system", "applications", "user_data", "machine_identity", "excluded")
RULES_VERSION = 1


#: Bounds on one pattern: RE2 needs memory in proportion to the pattern, never time
#: beyond O(len(path) * len(pattern)).
MAX_PATTERN_LEN = 1024
MAX_WILDCARDS = 32

#: RE2 matches text as UTF-8 and a path's undecodable bytes are lone surrogates
#: (``surrogateescape``): each of them is mapped to one code point of the last private
#: use plane, so ``?`` and ``*`` count it as one character as Python does.
_SURROGATES = {c: 0x10F800 + (c - 0xD800) for c in range(0xD800, 0xE000)}
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.dot_nl = True
_RE2_OPTIONS.log_errors = False
_RE2_OPTIONS.never_capture = True


def _re2_text(text: str) -> str:
    return text.translate(_SURROGATES)


def glob_to_regex(pattern: str) -> str:
    """The rule-set glob as a regular expression, for a whole-path match.

    ``*`` and ``?`` stay inside one component; ``**`` crosses components; ``/**``
    also matches the folder itself (``/etc/**`` matches ``/etc``); a pattern
    without wildcards names itself and everything below it. Every other character,
    ``[`` and ``\\`` included, stands for itself.
    """
    if not any(ch in pattern for ch in "*?"):
        return str(re2.escape(_re2_text(pattern.rstrip("/")))) + "(?:/.*)?"
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("/**", i) and (i + 3 == len(pattern) or pattern[i + 3] == "/"):
            out.append("(?:/.*)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(str(re2.escape(_re2_text(pattern[i]))))
            i += 1
    return "".join(out)


@dataclass(frozen=True)
class Glob:
    """One compiled path pattern, matched by RE2: an automaton, so no pattern can
    make a match backtrack (time linear in the path, whatever a rule set holds)."""

    pattern: str
    regex: Any  # re2._Regexp (the bindings have no types)

    def match(self, path: str) -> bool:
        return self.regex.fullmatch(_re2_text(path)) is not None


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
    try:
        return Glob(pattern, re2.compile(glob_to_regex(pattern), _RE2_OPTIONS))
    except re2.error as e:  # only past RE2's memory budget: the bounds above keep it rare
        raise UsageError(f"path pattern {pattern[:60]!r} is too complex: {e}") from e


def re2_bytes(path: str) -> bytes:
    """``path`` as the UTF-8 text RE2 matches (undecodable bytes mapped as in ``_re2_text``)."""
    try:
        return path.encode()
    except UnicodeEncodeError:  # lone surrogates: bytes the file system name did not decode
        return _re2_text(path).encode()


def literal_prefix(pattern: str) -> str:
    """What every path ``pattern`` matches begins with: its text before the first wildcard
    (without the ``/`` of a ``/**``, which also matches the folder itself)."""
    if not any(ch in pattern for ch in "*?"):
        return pattern.rstrip("/")
    i = min(i for i in (pattern.find("*"), pattern.find("?")) if i >= 0)
    if pattern.startswith("/**", i - 1) and (i + 2 == len(pattern) or pattern[i + 2] == "/"):
        i -= 1
    return pattern[:i]


def _covered_head(pattern: str) -> str | None:
    """The folder whose whole subtree ``pattern`` matches (``/var/log`` for ``/var/log/**``
    and for ``/var/log``), or None when the pattern is narrower."""
    head = pattern[:-3] if pattern.endswith("/**") else pattern
    if any(ch in head for ch in "*?"):
        return None
    return head.rstrip("/")


class Globs:
    """Patterns compiled into ONE RE2 (an alternation): a path is matched against all of
    them in one pass over its bytes, and a folder can be decided for all its children
    at once (``below``)."""

    def __init__(self, patterns: tuple[str, ...]) -> None:
        self.patterns = patterns
        self._each = [compile_glob(p) for p in patterns]  # validates every pattern
        self._prefixes = tuple(literal_prefix(p) for p in patterns)
        #: the same, sorted: those starting with a folder's path are found by bisection
        self._sorted_prefixes = sorted(self._prefixes)
        self._heads = tuple(h + "/" for h in map(_covered_head, patterns) if h is not None)
        self._regex: Any = None
        if patterns:
            alternation = "|".join(f"(?:{glob_to_regex(p)})" for p in patterns)
            try:
                self._regex = re2.compile(alternation.encode(), _RE2_OPTIONS)
            except re2.error:  # past RE2's memory budget together: match one by one
                self._regex = None

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def match(self, path: str) -> bool:
        return self.match_bytes(re2_bytes(path))

    def match_bytes(self, text: bytes) -> bool:
        """``text``: a path as ``re2_bytes`` gives it."""
        if self._regex is not None:
            return self._regex.fullmatch(text) is not None
        return any(g.regex.fullmatch(text.decode()) is not None for g in self._each)

    def below(self, directory: str) -> bool | None:
        """True when every path below ``directory`` matches, False when none can, None
        when it depends on the path."""
        d = directory.rstrip("/") + "/"
        if d.startswith(self._heads):  # one call: ``below`` runs for every folder a scan lists
            return True
        if d.startswith(self._prefixes):
            return None
        i = bisect.bisect_left(self._sorted_prefixes, d)
        if i < len(self._sorted_prefixes) and self._sorted_prefixes[i].startswith(d):
            return None
        return False


@functools.lru_cache(maxsize=256)
def globs(patterns: tuple[str, ...]) -> Globs:
    return Globs(patterns)


def matches(patterns: tuple[str, ...] | list[str], path: str) -> bool:
    return bool(patterns) and globs(tuple(patterns)).match(path)


@dataclass(frozen=True)
class LayerRules:
    """What a layer may carry and what it may never replace on an endpoint."""

    capture_classes: tuple[str, ...] = ("system", "applications")
    do_not_capture: tuple[str, ...] = ()
    exceptions: tuple[str, ...] = ()
    never_override: tuple[str, ...] = ()
    text_config: tuple[str, ...] = ("/etc/**",)


@dataclass(frozen=True)
class MigrationRules:
    """What a CVD laid onto other hardware leaves as the new machine has it.

    ``hardware_bound``: paths that name this machine's disks, boot firmware and
    network devices (fstab, bootloader, LVM devices, mdadm, interface bindings):
    a migration keeps the new machine's and reports them. (Whether the initramfs is
    rebuilt is decided from the two machines' storage-driver facts, not from rules.)"""

    hardware_bound: tuple[str, ...] = ()


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

    @functools.cached_property
    def class_globs(self) -> tuple[tuple[str, Globs], ...]:
        """Each class of ``order`` with its patterns compiled as one RE2."""
        return tuple((cls, globs(self.classes.get(cls, ()))) for cls in self.order)

    def classify(self, path: str) -> str:
        return self.classify_bytes(re2_bytes(path))

    def classify_bytes(self, text: bytes) -> str:
        """``classify`` of a path as ``re2_bytes`` gives it."""
        for cls, g in self.class_globs:
            if g and g.match_bytes(text):
                return cls
        return "system"

    def classify_below(self, directory: str) -> str | None:
        """The class of every path below ``directory``, or None when it depends on the path."""
        for cls, g in self.class_globs:
            every = g.below(directory)
            if every is None:
                return None
            if every:
                return cls
        return "system"

    @functools.cached_property
    def _prune_globs(self) -> Globs:
        return globs(
            tuple(p[:-3] or "/" for p in self.classes.get("excluded", ()) if p.endswith("/**"))
        )

    def prunable(self, directory: str) -> bool:
        """True when everything below ``directory`` is excluded, so it need not be listed.

        The directory itself is kept (empty): restoring ``/var/log`` without its
        content is right; restoring a system without ``/var/log`` is not.
        """
        if not self.order or self.order[0] != "excluded":
            return False
        d = directory.rstrip("/") or "/"
        return self._prune_globs.match(d)


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
    layers = LayerRules(
        capture_classes=_strings(
            ld.get("capture_classes", ["system", "applications"]), "layers.capture_classes"
        ),
        do_not_capture=_strings(ld.get("do_not_capture", []), "layers.do_not_capture"),
        exceptions=_strings(ld.get("exceptions", []), "layers.exceptions"),
        never_override=_strings(ld.get("never_override", []), "layers.never_override"),
        text_config=_strings(ld.get("text_config", ["/etc/**"]), "layers.text_config"),
    )
    md = _section(doc.get("migration") or {}, "migration")
    migration = MigrationRules(
        hardware_bound=_strings(md.get("hardware_bound", []), "migration.hardware_bound"),
    )
    for pats in (
        *parsed.values(),
        migration.hardware_bound,
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


#: Built-in rule sets that are another one under their own name (one file, one truth).
_ALIASES = {"linux": "debian"}


@functools.lru_cache(maxsize=8)
def builtin(name: str = "linux") -> RuleSet:
    """A built-in rule set: ``debian``, ``rhel``, or ``linux`` (the Debian rules, used
    when the OS is not recognised)."""
    try:
        raw = (
            resources.files("lamina.layers.rulesets")
            .joinpath(f"{_ALIASES.get(name, name)}.json")
            .read_text()
        )
    except FileNotFoundError as e:
        raise UsageError(f"no built-in rule set {name!r}") from e
    return dataclasses.replace(parse_rules(raw), name=name)


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
