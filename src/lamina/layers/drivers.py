"""Driver profiles: which driver packs a device gets, from its hardware facts. Pure.

A *profile* names packs (``NAME`` or ``NAME:VERSION``) and a list of matches
``FIELD=GLOB``; it matches a device when **every** match holds and, if it names an
OS family, the system being laid down is of that family. A match holds when:

- ``FIELD`` names a text fact (``sys_vendor``, ``product_name``, ``board_name``,
  ``cpu_vendor``, ``boot_mode``, ...): the glob matches it;
- ``FIELD`` is ``modalias``: the glob matches **any** of the device's modaliases
  (``modalias=pci:v000010ECd*`` holds if one PCI device is a Realtek one);
- ``FIELD`` names a list fact (``modaliases``, ``storage_drivers``): any element.

Globs are ``fnmatch`` patterns compared without regard to case (DMI strings come
in every case). An absent fact never matches. A profile has at least one match:
a pack must never reach hardware nobody said it was for.

Callers (the server's layer assignment, migration, provisioning) call
:func:`packs_for` and resolve the :class:`PackRef` list to stored versions.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from lamina.errors import UsageError

#: The DMI fields the agent reads from ``/sys/class/dmi/id``.
DMI_FIELDS = (
    "sys_vendor",
    "product_name",
    "product_version",
    "product_family",
    "board_vendor",
    "board_name",
    "bios_vendor",
    "bios_version",
    "chassis_type",
)
#: Fields a profile may match on, besides the DMI ones.
OTHER_FIELDS = (
    "modalias",
    "cpu_vendor",
    "boot_mode",
    "storage_driver",
    "hostname",
    "vendor",
    "model",
)
MATCH_FIELDS = frozenset(DMI_FIELDS + OTHER_FIELDS)
#: The facts that tell two machines' hardware apart (a replacement of another model).
HARDWARE_KEY = ("sys_vendor", "product_name", "board_vendor", "board_name")

MAX_MATCHES = 32
MAX_PACKS = 32
MAX_GLOB = 256
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$")


@dataclass(frozen=True, order=True)
class PackRef:
    """A driver pack by name; ``version`` None means its latest version."""

    name: str
    version: int | None = None

    @property
    def label(self) -> str:
        return f"{self.name}:{self.version}" if self.version is not None else self.name

    @classmethod
    def parse(cls, spec: str) -> PackRef:
        """``NAME`` or ``NAME:VERSION``."""
        name, sep, ver = spec.partition(":")
        if not _NAME.match(name):
            raise UsageError(
                f"pack name {name!r} is not valid: letters, digits, '.', '_', '+', '-' (up to 128)"
            )
        if sep and not (ver.isdigit() and 0 < int(ver) < 2**31):
            raise UsageError(f"pack version in {spec!r} must be a positive number")
        return cls(name, int(ver) if sep else None)


@dataclass(frozen=True)
class Match:
    field: str
    glob: str

    @classmethod
    def parse(cls, spec: str) -> Match:
        """``FIELD=GLOB``."""
        field, sep, glob = spec.partition("=")
        field = field.strip()
        if not sep or not glob:
            raise UsageError(f"a match is FIELD=GLOB, not {spec!r}")
        if field not in MATCH_FIELDS:
            raise UsageError(
                f"cannot match on {field!r}: use one of {', '.join(sorted(MATCH_FIELDS))}"
            )
        if len(glob) > MAX_GLOB or not glob.isprintable():
            raise UsageError(f"the glob of {field} must be printable, up to {MAX_GLOB} characters")
        return cls(field, glob)

    def __str__(self) -> str:
        return f"{self.field}={self.glob}"

    def holds(self, facts: Mapping[str, Any]) -> bool:
        pat = self.glob.lower()
        return any(fnmatch.fnmatchcase(v.lower(), pat) for v in fact_values(facts, self.field))


@dataclass(frozen=True)
class Profile:
    name: str
    packs: tuple[PackRef, ...]
    matches: tuple[Match, ...]
    os_family: str | None = None

    def __post_init__(self) -> None:
        if not self.matches:
            raise UsageError(f"profile {self.name}: give at least one --match FIELD=GLOB")
        if not self.packs:
            raise UsageError(f"profile {self.name}: give at least one --pack")
        if len(self.matches) > MAX_MATCHES or len(self.packs) > MAX_PACKS:
            raise UsageError(
                f"profile {self.name}: at most {MAX_MATCHES} matches and {MAX_PACKS} packs"
            )

    def applies(self, facts: Mapping[str, Any], os_family: Collection[str]) -> bool:
        if self.os_family and self.os_family.lower() not in os_family:
            return False
        return all(m.holds(facts) for m in self.matches)


def fact_values(facts: Mapping[str, Any], field: str) -> list[str]:
    """The text values a match on ``field`` looks at (none when the fact is absent)."""
    if field == "modalias":
        v = facts.get("modaliases")
    elif field == "storage_driver":
        v = [
            s.get("driver", "")
            for s in facts.get("storage_controllers") or []
            if isinstance(s, dict)
        ]
    else:
        v = facts.get(field)
    if isinstance(v, str):
        return [v] if v else []
    if isinstance(v, list):
        return [x for x in v if isinstance(x, str) and x]
    return []


#: The field :func:`match_values` gives a device's OS family names under.
OS_FAMILY = "os_family"


def match_values(facts: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Everything a profile can match in these facts: ``(field, value)`` for each value
    of each match field (:func:`fact_values`) and ``(OS_FAMILY, name)`` for each name of
    the OS (:func:`os_family_of`), lower case, each pair once. A match's glob holds
    against the facts exactly when it holds against one of its field's values here."""
    osr = facts.get("os_release")
    out = {(f, v.lower()) for f in MATCH_FIELDS for v in fact_values(facts, f)}
    out |= {(OS_FAMILY, n) for n in os_family_of(osr if isinstance(osr, Mapping) else None)}
    return sorted(out)


def os_family_of(os_release: Mapping[str, str] | None) -> frozenset[str]:
    """The names an OS answers to: its ``ID`` and ``ID_LIKE`` (lower case)."""
    if not os_release:
        return frozenset()
    ids = {
        str(os_release.get("ID", "")).lower(),
        *str(os_release.get("ID_LIKE", "")).lower().split(),
    }
    return frozenset(i for i in ids if i)


def packs_for(
    facts: Mapping[str, Any], os_family: str | Collection[str] | None, profiles: Iterable[Profile]
) -> list[PackRef]:
    """The packs of every profile that matches these facts, profiles in name order.

    ``os_family`` is the family of the system being laid down (a name, or the set
    :func:`os_family_of` gives); a pack named by two matching profiles is listed once,
    with the first profile's version.
    """
    fam = (
        frozenset([os_family.lower()])
        if isinstance(os_family, str)
        else frozenset(f.lower() for f in os_family or ())
    )
    out: dict[str, PackRef] = {}
    for p in sorted(profiles, key=lambda p: p.name):
        if p.applies(facts, fam):
            for ref in p.packs:
                out.setdefault(ref.name, ref)
    return list(out.values())


def hardware_key(facts: Mapping[str, Any]) -> tuple[str, ...]:
    """What tells one machine model from another (DMI vendor, product and board)."""
    return tuple(str(facts.get(k) or "").strip().lower() for k in HARDWARE_KEY)


def same_hardware(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two devices' facts name the same model. A machine that reported no DMI
    facts (an agent from before facts format 2, a VM without SMBIOS) is not known to
    differ: it compares equal."""
    ka, kb = hardware_key(a), hardware_key(b)
    return ka == kb or not any(ka) or not any(kb)


def hardware_warning(
    facts: Mapping[str, Any], previous: Mapping[str, Any] | None, packs: Collection[object]
) -> str | None:
    """The dry run's warning: no driver pack for a machine whose model differs from the
    one the system last ran on (``previous``: that machine's facts)."""
    if packs or previous is None or same_hardware(facts, previous):
        return None
    new = " ".join(v for v in hardware_key(facts)[:2] if v) or "unknown hardware"
    old = " ".join(v for v in hardware_key(previous)[:2] if v) or "unknown hardware"
    return (
        f"no driver profile matches this device ({new}), and its hardware differs from "
        f"the one the system last ran on ({old}): add a profile with `lamina driver profile create`"
    )


# --- merged /usr --------------------------------------------------------------------
#: Top-level folders a merged-/usr system links into /usr (``/lib -> usr/lib``).
USR_MERGE_DIRS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")


def usr_merged(symlinks: Mapping[str, str]) -> frozenset[str]:
    """Which top-level folders the endpoint links into /usr, from its tree's symlinks
    (``{"lib": "usr/lib"}``: path without the leading slash -> link target)."""
    out = set()
    for d in USR_MERGE_DIRS:
        target = symlinks.get(d)
        if target is not None and target.strip("/") in (f"usr/{d}",):
            out.add(d)
    return frozenset(out)


def resolve_usr(path: str, merged: Collection[str]) -> str:
    """Where dpkg would write ``path`` on an endpoint whose ``merged`` folders are links
    into /usr: ``/lib/firmware/x`` -> ``/usr/lib/firmware/x``. Other paths are as given."""
    rel = path.lstrip("/")
    top, sep, rest = rel.partition("/")
    if top in merged:
        rel = f"usr/{top}{sep}{rest}"
    return "/" + rel if path.startswith("/") else rel
