"""A CVD's network settings carried onto a new machine's interfaces (pure).

A migration in full mode lays the CVD's own network settings (static addresses,
DNS, routes, bonds, bridges) over the new machine, with the interface names and
MAC addresses they name rewritten to the new machine's NICs:

- :func:`map_nics` maps each NIC of the machine the CVD last ran on to one of the
  new machine's (its ``network`` facts, ``[{name, mac, bus, path, driver}]``), by
  the first of these rules that finds one still free, each rule tried for every old
  NIC before the next: the same MAC (the card moved, or the machine itself enrolled
  again); the same PCI path (``path``, else ``bus``) when both machines are of one
  model (same ``sys_vendor`` and ``product_name``: the same slot); the same driver,
  in order (the second ``e1000e`` to the second ``e1000e``); the same name; the
  remaining ones in the order the new machine lists them. Facts of format 2 carry no
  path or driver: those rules then find nothing. Each old NIC gets one report line
  saying which rule mapped it, or that none could.
- :func:`rewrite` rewrites one settings file: ifupdown (``/etc/network/interfaces``
  and ``interfaces.d``: every interface name and MAC outside comments), NetworkManager
  keyfiles (``interface-name=``, ``parent=``, ``mac-address=``), systemd-networkd
  ``.network`` files (``Name=``, ``MACAddress=``, ``PermanentMACAddress=``), netplan
  (names and MACs outside comments: ``ethernets:`` keys, ``set-name:``,
  ``macaddress:``, bond and bridge ``interfaces:``) and ifcfg files (``DEVICE=``,
  ``HWADDR=``; the file takes the new name). Names are replaced as whole words (a
  VLAN ``eth0.100`` or alias ``eth0:1`` follows its parent), all in one pass, so
  two NICs that swap names are rewritten right.

The files are hostile input: a file larger than :data:`MAX_SETTINGS` or that is not
text is left as the CVD had it, and the report says so.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

#: Where a CVD's network settings live: the migration carries these (rewritten)
#: instead of keeping the new machine's. A subset of the rule set's hardware-bound paths.
NETWORK_SETTINGS = (
    "/etc/network/interfaces",
    "/etc/network/interfaces.d",
    "/etc/NetworkManager/system-connections",
    "/etc/netplan",
    "/etc/sysconfig/network-scripts/ifcfg-*",
)
#: Settings files carried as the CVD has them already (not hardware-bound), rewritten too.
NETWORKD = "/etc/systemd/network/"
#: A settings file larger than this is not rewritten (none is near it).
MAX_SETTINGS = 1 << 20

_MAC = re.compile(r"(?<![0-9A-Fa-f:])(?:[0-9A-Fa-f]{2}:){5}[0-9A-Fa-f]{2}(?![0-9A-Fa-f:])")
_NM_NAME_KEYS = ("interface-name", "parent")
_NM_MAC_KEYS = ("mac-address",)
_NETWORKD_NAME_KEYS = ("Name",)
_NETWORKD_MAC_KEYS = ("MACAddress", "PermanentMACAddress")
_IFCFG_NAME_KEYS = ("DEVICE",)
_IFCFG_MAC_KEYS = ("HWADDR",)


class Nic(NamedTuple):
    """A network interface as the facts tell it."""

    name: str
    mac: str
    #: facts format 3: the bus address, the ID_PATH-style path and the driver ("" if unknown)
    bus: str = ""
    path: str = ""
    driver: str = ""

    @property
    def slot(self) -> str:
        return self.path or self.bus


@dataclass
class NicMap:
    """Old NIC → new NIC. ``complete``: every old NIC has a new one."""

    names: dict[str, str] = field(default_factory=dict)
    macs: dict[str, str] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)
    complete: bool = False
    #: one row per old NIC: ``{"old", "new", "rule"}`` (``new`` None when not mapped)
    rows: list[dict[str, str | None]] = field(default_factory=list)


def nics(facts: Mapping[str, Any] | None) -> list[Nic]:
    """The NICs in a device's facts (``network``), malformed rows dropped, a malformed
    field read as unknown."""
    rows = (facts or {}).get("network")
    out = []
    for r in rows if isinstance(rows, list) else []:
        if isinstance(r, dict) and isinstance(r.get("name"), str) and r["name"]:

            def text(key: str, row: dict[str, Any] = r) -> str:
                v = row.get(key)
                return v if isinstance(v, str) else ""

            out.append(
                Nic(r["name"], text("mac").lower(), text("bus"), text("path"), text("driver"))
            )
    return out


def same_model(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> bool:
    """Whether two machines' facts name one model (``sys_vendor`` and ``product_name``,
    both known): then the same PCI path is the same slot."""

    def model(f: Mapping[str, Any] | None) -> tuple[str, str] | None:
        v, p = (f or {}).get("sys_vendor"), (f or {}).get("product_name")
        return (v, p) if isinstance(v, str) and isinstance(p, str) and v and p else None

    a = model(old)
    return a is not None and a == model(new)


#: The rules :func:`map_nics` tries, in order: (name in the report, whether a matches b).
_RULES: tuple[tuple[str, Callable[[Nic, Nic], bool]], ...] = (
    ("same MAC", lambda a, b: bool(a.mac) and a.mac == b.mac),
    ("same PCI path", lambda a, b: bool(a.slot) and a.slot == b.slot),
    ("same driver, in order", lambda a, b: bool(a.driver) and a.driver == b.driver),
    ("same name", lambda a, b: a.name == b.name),
    ("in order", lambda a, b: True),
)


def map_nics(old: list[Nic], new: list[Nic], one_model: bool = False) -> NicMap:
    """Each old NIC mapped to a new one: same MAC, same PCI path (only when
    ``one_model``: see :func:`same_model`), same driver in order, same name, in order."""
    m = NicMap()
    if not old:
        m.lines.append(
            "the machine the CVD last ran on reported no network interfaces: "
            "the new machine's network settings are kept"
        )
        return m
    free = list(new)
    how: dict[str, tuple[Nic, str]] = {}
    for rule, same in _RULES:
        if rule == "same PCI path" and not one_model:
            continue  # another model's slot of the same address is another slot
        for o in old:
            if o.name in how:
                continue
            hit = next((n for n in free if same(o, n)), None)
            if hit is not None:
                free.remove(hit)
                how[o.name] = (hit, rule)
    for o in old:
        if o.name not in how:
            m.lines.append(
                f"{o.name} ({o.mac or 'no MAC'}): not mapped, the new machine has no NIC left"
            )
            m.rows.append({"old": o.name, "new": None, "rule": None})
            continue
        n, rule = how[o.name]
        m.rows.append({"old": o.name, "new": n.name, "rule": rule})
        m.names[o.name] = n.name
        if o.mac and n.mac:
            m.macs[o.mac] = n.mac
        m.lines.append(f"{o.name} ({o.mac or 'no MAC'}) -> {n.name} ({n.mac or 'no MAC'}): {rule}")
    m.complete = len(m.names) == len(old)
    if not m.complete:
        m.lines.append(
            "not every interface could be mapped: the new machine's network settings are kept"
        )
    return m


def is_settings(path: str) -> bool:
    """Whether ``path`` is a network settings file :func:`rewrite` knows."""
    return _kind(path) is not None


def _kind(path: str) -> str | None:
    if path == "/etc/network/interfaces" or path.startswith("/etc/network/interfaces.d/"):
        return "words"
    if path.startswith("/etc/netplan/") and path.endswith((".yaml", ".yml")):
        return "words"
    if path.startswith("/etc/NetworkManager/system-connections/"):
        return "nm"
    if path.startswith(NETWORKD) and path.endswith(".network"):
        return "networkd"
    if path.startswith("/etc/sysconfig/network-scripts/ifcfg-"):
        return "ifcfg"
    return None


def _names_re(names: Iterable[str]) -> re.Pattern[str] | None:
    alts = sorted((re.escape(n) for n in names), key=len, reverse=True)
    if not alts:
        return None
    # A whole word: not inside another name; a VLAN (.100) or alias (:1) suffix follows it.
    return re.compile(r"(?<![\w.:@-])(" + "|".join(alts) + r")(?![\w-])")


def _sub_macs(text: str, macs: Mapping[str, str]) -> str:
    def one(mo: re.Match[str]) -> str:
        new = macs.get(mo.group(0).lower())
        if new is None:
            return mo.group(0)
        return new.upper() if mo.group(0).isupper() else new

    return _MAC.sub(one, text)


def _sub_words(text: str, m: NicMap) -> str:
    rx = _names_re(m.names)
    out = []
    for line in text.splitlines(keepends=True):
        body, hash_, comment = line.partition("#")
        if rx is not None:
            body = rx.sub(lambda mo: m.names[mo.group(1)], body)
        out.append(_sub_macs(body, m.macs) + hash_ + comment)
    return "".join(out)


def _sub_keys(text: str, m: NicMap, name_keys: tuple[str, ...], mac_keys: tuple[str, ...]) -> str:
    rx = _names_re(m.names)
    out = []
    for line in text.splitlines(keepends=True):
        key, eq, value = line.partition("=")
        k = key.strip()
        if eq and not k.startswith(("#", ";")):
            if k in name_keys and rx is not None:
                value = rx.sub(lambda mo: m.names[mo.group(1)], value)
            elif k in mac_keys:
                value = _sub_macs(value, m.macs)
        out.append(key + eq + value)
    return "".join(out)


def rewrite(path: str, data: bytes, m: NicMap) -> tuple[str, bytes] | None:
    """``path``'s settings for the new interfaces: its (possibly new) path and bytes;
    ``None`` when ``path`` is not a settings file this knows, or is too large or not text."""
    kind = _kind(path)
    if kind is None or len(data) > MAX_SETTINGS or b"\0" in data:
        return None
    try:
        text = data.decode()
    except UnicodeDecodeError:
        return None
    if kind == "words":
        text = _sub_words(text, m)
    elif kind == "nm":
        text = _sub_keys(text, m, _NM_NAME_KEYS, _NM_MAC_KEYS)
    elif kind == "networkd":
        text = _sub_keys(text, m, _NETWORKD_NAME_KEYS, _NETWORKD_MAC_KEYS)
    else:
        text = _sub_keys(text, m, _IFCFG_NAME_KEYS, _IFCFG_MAC_KEYS)
        folder, _, name = path.rpartition("/ifcfg-")
        path = f"{folder}/ifcfg-{m.names.get(name, name)}"
    return path, text.encode()
