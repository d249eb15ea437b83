"""The packages of a migration: the CVD's (``packages_of``), those a stack of layers lays
down (``layer_packages``), the ones the user installed on top (``user_installed``), what
a new machine takes of them (``on_new_machine``) and their files in a tree
(``package_files``). ``migration`` plans with them and merges them into the new tree."""

from __future__ import annotations

import os

from lamina.errors import LaminaError
from lamina.layers.merge import (
    DPKG_STATUS,
    INSTALLED,
    Stanzas,
    carry,
    installed,
    merge_dpkg_status,
    parse_dpkg_status,
)
from lamina.layers.plan import LayerRef
from lamina.store.repository import Store
from lamina.tree.model import Entry
from lamina.tree.paths import lookup, read_file


def packages_of(store: Store, entries: dict[str, Entry]) -> dict[str, str]:
    """Name -> version of the packages installed in a tree (``entries``, path -> entry)."""
    e = entries.get(DPKG_STATUS)
    if e is None or e.type != "file":
        return {}
    return installed(parse_dpkg_status(read_file(store.get, e)))


def layer_packages(store: Store, refs: list[LayerRef]) -> Stanzas:
    """The packages a stack of layers lays down (later wins): a base layer's whole
    database, an app layer's or pack's own packages."""
    dbs = []
    for r in refs:
        e = entry_at(store, r.root, DPKG_STATUS)
        if e is None or e.type != "file":
            continue
        try:
            db = parse_dpkg_status(read_file(store.get, e))
        except LaminaError:
            continue  # a layer whose database dpkg could not read owns no package
        if r.packages is not None:
            own = set(r.packages)
            db = {k: v for k, v in db.items() if v.name in own}
        dbs.append(db)
    return merge_dpkg_status(dbs, {}, set())


def entry_at(store: Store, root: bytes, path: str) -> Entry | None:
    """The entry at ``path`` in a tree (the folders on the way read, not the whole tree)."""
    return lookup(store.get, root, [os.fsencode(p) for p in path.strip("/").split("/")])


def user_installed(snapshot: Stanzas, owned: Stanzas) -> Stanzas:
    """The snapshot's installed packages none of the layers it ran brought: installed
    by the user, carried in apps-data mode."""
    return {k: s for k, s in snapshot.items() if s.status == INSTALLED and k not in owned}


def on_new_machine(
    user: Stanzas, reported: object
) -> tuple[Stanzas, list[dict[str, str]], str | None]:
    """What a new machine whose ``packages`` fact is ``reported`` takes of the CVD's
    user-installed packages (``layers.merge.carry``: its staging decides the same from
    the same database): the carried ones, the conflicts, and a warning when it cannot
    be foreseen."""
    database = reported.get("database") if isinstance(reported, dict) else None
    rows = reported.get("installed") if isinstance(reported, dict) else None
    if database == "none":
        return (
            {},
            [],
            "the new machine has no package database a migration can read: no package is carried",
        )
    if database != "read" or not isinstance(rows, list):
        return (
            user,
            [],
            (
                "the new machine did not report its packages (an older or active agent, or "
                "too many): a carried package it has already keeps its version, decided when "
                "staging (the task's result lists them)"
            ),
        )
    here = {
        r["name"]: r["version"]
        for r in rows
        if isinstance(r, dict)
        and isinstance(r.get("name"), str)
        and isinstance(r.get("version"), str)
    }
    carried, conflicts = carry(user, here)
    return carried, conflicts, None


#: dpkg's folder of per-package files: ``PKG[:ARCH].list`` names a package's files.
DPKG_INFO = "/var/lib/dpkg/info"


def package_files(store: Store, entries: dict[str, Entry], stanzas: Stanzas) -> set[str]:
    """The paths of ``stanzas``' packages in a tree (``entries``): each one's ``info/``
    files and the files its ``.list`` names (folders left out)."""
    stems = {x for k, s in stanzas.items() for x in (s.name, k)}
    out = {p for p in entries if p.startswith(DPKG_INFO + "/") and p.count("/") == 5}
    out = {p for p in out if p[len(DPKG_INFO) + 1 :].rpartition(".")[0] in stems}
    for stem in stems:
        e = entries.get(f"{DPKG_INFO}/{stem}.list")
        if e is None or e.type != "file":
            continue
        try:
            listed = read_file(store.get, e).decode(errors="surrogateescape")
        except LaminaError:
            continue
        for line in listed.splitlines():
            if line.startswith("/") and line != "/." and "/../" not in line + "/":
                out.add(line.rstrip("/"))
    return {p for p in out if (e := entries.get(p)) is not None and e.type != "dir"}
