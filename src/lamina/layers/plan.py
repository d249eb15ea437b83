"""The plan (and dry run) of an assignment: what changes on one endpoint, path by path.

Target state = base layer ⊕ app layers (assigned order; the later wins) ⊕ what the
endpoint keeps (user data, identity, software no layer owns). Compared with the
endpoint's last snapshot and with the layers it ran before:

- ``added`` / ``updated`` / ``removed``: the layer's file goes in, replaces the
  endpoint's untouched copy, or goes away (dropped by the new version, or a
  whiteout of an app layer);
- ``kept``: the user changed a file the new version does not change;
- ``merged``: the user and the new version both changed a text configuration
  file and the three-way merge is clean;
- ``merge-conflict``: it is not: the user's file stays, the layer's goes beside
  it as ``NAME.lamina-layer``;
- ``replaced``: the user changed a binary file the new version changes: the
  layer wins, the user's copy is kept beside it as ``NAME.lamina-user``;
- ``conflict``: two app layers carry different versions; the later one wins;
- ``blocked``: the path is on the "never override" list and stays as it is;
- package databases (dpkg's status) are merged per package: ``merged``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from lamina.layers.drivers import resolve_usr, usr_merged
from lamina.layers.merge import (
    DPKG_STATUS,
    Stanzas,
    is_text,
    merge_dpkg_status,
    merge_text,
    parse_dpkg_status,
    render_dpkg_status,
)
from lamina.layers.rules import RuleSet, matches
from lamina.layers.trees import expected_state, same_entry
from lamina.tree.model import Entry
from lamina.tree.paths import Load, index, read_file

#: Larger text files are not merged (the binary rule applies): what ``is_text`` accepts.
TEXT_MERGE_MAX = 4 * 1024 * 1024
#: plaintext -> chunk id (stores it, or only names it for a dry run)
PutData = Callable[[bytes], bytes]
LayerKind = Literal["base", "app", "driver"]
#: What a plan does at one path (the module docstring says when each applies).
Action = Literal[
    "added",
    "updated",
    "removed",
    "kept",
    "merged",
    "merge-conflict",
    "replaced",
    "conflict",
    "blocked",
]


@dataclass(frozen=True)
class LayerRef:
    label: str  # "name:version"
    kind: LayerKind
    root: bytes
    whiteouts: tuple[str, ...] = ()
    #: an app layer's own packages (the ones its recording installed or changed);
    #: its copy of the package database also lists the reference's other packages
    packages: tuple[str, ...] | None = None
    #: the ``layer_versions`` row it is (the task's ``versions`` list names it)
    version_id: str = ""


#: A driver pack (``lamina.server.services.drivers``): applied like an app layer, after
#: the app layers, its paths resolved through the endpoint's merged-/usr links.
DRIVER: Literal["driver"] = "driver"


@dataclass(frozen=True)
class Item:
    path: str
    action: Action
    layer: str = ""
    detail: str = ""

    def public(self) -> dict[str, str]:
        return {
            "id": self.path,
            "path": self.path,
            "action": self.action,
            "layer": self.layer,
            "detail": self.detail,
        }


@dataclass
class Plan:
    items: list[Item] = field(default_factory=list)
    writes: dict[str, Entry] = field(default_factory=dict)
    removes: list[str] = field(default_factory=list)
    dirs: dict[str, Entry] = field(default_factory=dict)
    download_bytes: int = 0
    space_needed: int = 0
    refused: list[str] = field(default_factory=list)
    #: path -> the state the plan assumed (the last snapshot's), checked by the agent
    expect: dict[str, list[Any] | None] = field(default_factory=dict)
    #: the last snapshot's package database, the base of the agent's merge with the live one
    dpkg_base: list[bytes | int] | None = None

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for it in self.items:
            out[it.action] = out.get(it.action, 0) + 1
        return out


def merged_usr_of(cur: dict[str, Entry]) -> frozenset[str]:
    """Which top-level folders the endpoint's tree links into /usr (``/lib -> usr/lib``)."""
    links = {
        p.strip("/"): (e.target or b"").decode(errors="replace")
        for p, e in cur.items()
        if e.type == "symlink" and p.count("/") == 1
    }
    return usr_merged(links)


def compose(
    load: Load, layers: list[LayerRef], merged_usr: frozenset[str] = frozenset()
) -> tuple[dict[str, tuple[Entry, str]], list[Item], dict[str, Entry]]:
    """Files owned by the layers (path -> entry, layer), app-vs-app conflicts, folders.

    A driver pack's paths go where dpkg would put them on an endpoint whose
    ``merged_usr`` folders are links into /usr (``/lib/firmware`` -> ``/usr/lib/firmware``)."""
    owned: dict[str, tuple[Entry, str]] = {}
    dirs: dict[str, Entry] = {}
    conflicts: list[Item] = []
    for ref in layers:
        for w in ref.whiteouts:
            for p in [p for p in owned if p == w or p.startswith(w + "/")]:
                del owned[p]
        for path, e in index(load, ref.root).items():
            if ref.kind == DRIVER:
                path = resolve_usr(path, merged_usr)
            if e.type == "dir":
                dirs[path] = e
                continue
            prev = owned.get(path)
            if prev is not None and ref.kind != "base" and not prev[0].same_content(e):
                prev_kind = next((r.kind for r in layers if r.label == prev[1]), "base")
                if prev_kind != "base":
                    conflicts.append(
                        Item(
                            path,
                            "conflict",
                            ref.label,
                            f"also in {prev[1]}; {ref.label} wins (later in order)",
                        )
                    )
            owned[path] = (e, ref.label)
    return owned, conflicts, dirs


def _chunks(entries: dict[str, Entry]) -> set[bytes]:
    return {c for e in entries.values() for c in e.chunk_ids()}


@dataclass(frozen=True)
class _Inputs:
    """What every step of a plan reads: the endpoint's tree and the two compositions."""

    load: Load
    put_data: PutData
    rules: RuleSet
    #: the endpoint's last snapshot, path -> entry
    cur: dict[str, Entry]
    #: files of the layers assigned now / before: path -> (entry, layer label)
    new_owned: dict[str, tuple[Entry, str]]
    old_owned: dict[str, tuple[Entry, str]]

    def never_override(self, path: str) -> bool:
        return matches(self.rules.layers.never_override, path)


def make_plan(
    load: Load,
    put_data: PutData,
    current_root: bytes | None,
    old: list[LayerRef],
    new: list[LayerRef],
    rules: RuleSet,
    disk_free: int | None = None,
    remove_unowned: bool = False,
) -> Plan:
    """The plan from the endpoint's last snapshot (``current_root``) and the layers it
    ran (``old``) to the layers assigned now (``new``), in named steps.

    ``remove_unowned`` (enforce --remove-user-apps): software no layer owns goes too.
    """
    plan = Plan()
    cur = index(load, current_root)
    merged_usr = merged_usr_of(cur)
    new_owned, conflicts, new_dirs = compose(load, new, merged_usr)
    old_owned, _, _ = compose(load, old, merged_usr)
    ins = _Inputs(load, put_data, rules, cur, new_owned, old_owned)
    plan.items.extend(conflicts)
    plan.dirs = {**{p: e for p, e in cur.items() if e.type == "dir"}, **new_dirs}
    for path, (e, label) in sorted(new_owned.items()):
        if path != DPKG_STATUS:
            _plan_layer_file(ins, plan, path, e, label)
    _plan_dropped(ins, plan)
    _plan_whiteouts(ins, plan, {w: r.label for r in new for w in r.whiteouts})
    if remove_unowned:
        _plan_unowned(ins, plan)
    _plan_dpkg(load, put_data, cur, old, new, plan, drop_user_packages=remove_unowned)
    _plan_costs(plan, cur, disk_free)
    return plan


def _plan_layer_file(ins: _Inputs, plan: Plan, path: str, e: Entry, label: str) -> None:
    """One file the new layers carry: added, updated, kept, merged or replaced."""
    c = ins.cur.get(path)
    if c is not None and ins.never_override(path):
        if not same_entry(c, e):
            plan.items.append(Item(path, "blocked", label, "never overridden by a layer"))
        return
    if c is not None and same_entry(c, e):
        return
    if c is None:
        plan.writes[path] = e
        plan.items.append(Item(path, "added", label))
        return
    if c.type == "dir":
        plan.refused.append(f"{path}: the layer has a {e.type} where the endpoint has a folder")
        plan.items.append(Item(path, "conflict", label, "a folder on the endpoint; refused"))
        return
    o = ins.old_owned.get(path)
    if o is None or c.same_content(o[0]):  # the user did not change the layer's copy
        plan.writes[path] = e
        plan.items.append(Item(path, "updated", label))
        return
    base = o[0]
    if base.same_content(e):  # the new version leaves this file as it was
        plan.items.append(
            Item(path, "kept", label, "changed on the endpoint; the layer did not change it")
        )
        return
    if _merge_text_config(ins, plan, path, label, base, c, e):
        return
    plan.writes[path] = e
    plan.writes[path + ".lamina-user"] = c
    plan.items.append(
        Item(path, "replaced", label, f"the layer wins; the user's copy is {path}.lamina-user")
    )


def _merge_text_config(
    ins: _Inputs, plan: Plan, path: str, label: str, base: Entry, ours: Entry, theirs: Entry
) -> bool:
    """Both the user and the new version changed a text configuration file: merge
    three ways. False when the binary rule applies instead (not text, too large)."""
    if not (
        ours.type == "file"
        and theirs.type == "file"
        and matches(ins.rules.layers.text_config, path)
        and max(base.size, ours.size, theirs.size) <= TEXT_MERGE_MAX
    ):
        return False
    texts = [read_file(ins.load, x, TEXT_MERGE_MAX) for x in (base, ours, theirs)]
    if not all(is_text(t) for t in texts):
        return False
    m = merge_text(*texts)
    if m.clean:
        cid = ins.put_data(m.text)
        plan.writes[path] = dataclasses.replace(
            theirs, content=[cid] if m.text else [], size=len(m.text)
        )
        plan.items.append(
            Item(path, "merged", label, "three-way merge of the user's and the layer's changes")
        )
    else:
        plan.writes[path + ".lamina-layer"] = theirs
        plan.items.append(
            Item(
                path,
                "merge-conflict",
                label,
                f"user's file kept; the layer's is {path}.lamina-layer",
            )
        )
    return True


def _plan_dropped(ins: _Inputs, plan: Plan) -> None:
    """Files the old layers carried and the new ones do not: removed unless the user changed them."""
    for path, (was, label) in sorted(ins.old_owned.items()):
        c = ins.cur.get(path)
        if path in ins.new_owned or path == DPKG_STATUS or c is None:
            continue
        if c.same_content(was):
            plan.removes.append(path)
            plan.items.append(Item(path, "removed", label, "no longer in the assigned layers"))
        else:
            plan.items.append(
                Item(
                    path, "kept", label, "changed on the endpoint; kept though the layer dropped it"
                )
            )


def _plan_whiteouts(ins: _Inputs, plan: Plan, whiteouts: dict[str, str]) -> None:
    """What an app layer's whiteouts (path -> layer label) remove from the endpoint."""
    for w, label in sorted(whiteouts.items()):
        for path in sorted(p for p in ins.cur if p == w or p.startswith(w + "/")):
            if path in ins.new_owned or path in plan.removes or ins.cur[path].type == "dir":
                continue
            prev = ins.old_owned.get(path)
            if prev is not None and not ins.cur[path].same_content(prev[0]):
                plan.items.append(
                    Item(path, "kept", label, "changed on the endpoint; kept despite the whiteout")
                )
                continue
            plan.removes.append(path)
            plan.items.append(Item(path, "removed", label, "whiteout of an app layer"))


def _plan_unowned(ins: _Inputs, plan: Plan) -> None:
    """Enforce --remove-user-apps: capturable files no layer owns go."""
    for path, c in sorted(ins.cur.items()):
        if c.type == "dir" or path in ins.new_owned or path in plan.removes or path == DPKG_STATUS:
            continue
        if ins.rules.capturable(path) and not ins.never_override(path):
            plan.removes.append(path)
            plan.items.append(Item(path, "removed", "", "installed outside the assigned layers"))


def _plan_costs(plan: Plan, cur: dict[str, Entry], disk_free: int | None) -> None:
    """What the agent checks before it applies (``expect``), what it downloads, the space."""
    for path in [*plan.writes, *plan.removes]:
        plan.expect[path] = expected_state(cur.get(path))
    have = _chunks(cur)
    for e in plan.writes.values():
        ids = list(e.chunk_ids())
        fresh = [c for c in ids if c not in have]
        if ids:
            plan.download_bytes += e.size * len(fresh) // len(ids)
        plan.space_needed += e.size
    if disk_free is not None and plan.space_needed > disk_free:
        plan.refused.append(
            f"needs {plan.space_needed} bytes of staging space, the endpoint has {disk_free} free"
        )


def _status(load: Load, ref: LayerRef) -> Stanzas | None:
    e = index(load, ref.root).get(DPKG_STATUS)
    if e is None or e.type != "file":
        return None
    stanzas = parse_dpkg_status(read_file(load, e))
    if ref.packages is not None:
        own = set(ref.packages)
        stanzas = {k: v for k, v in stanzas.items() if v.name in own}
    return stanzas


def _plan_dpkg(
    load: Load,
    put_data: PutData,
    cur: dict[str, Entry],
    old: list[LayerRef],
    new: list[LayerRef],
    plan: Plan,
    drop_user_packages: bool = False,
) -> None:
    layer_dbs = [(r, s) for r in new if (s := _status(load, r)) is not None]
    if not layer_dbs:
        return
    owned_before: set[str] = set()
    for r in old:
        s = _status(load, r)
        if s:
            owned_before |= set(s)
    c = cur.get(DPKG_STATUS)
    plan.dpkg_base = c.content if c is not None and c.type == "file" else None
    endpoint = parse_dpkg_status(read_file(load, c)) if c is not None and c.type == "file" else {}
    if drop_user_packages:
        owned_before |= set(endpoint)
    merged = merge_dpkg_status([s for _, s in layer_dbs], endpoint, owned_before)
    data = render_dpkg_status(merged)
    if c is not None and read_file(load, c) == data:
        return
    template = index(load, layer_dbs[-1][0].root)[DPKG_STATUS]
    cid = put_data(data)
    plan.writes[DPKG_STATUS] = dataclasses.replace(template, content=[cid], size=len(data))
    kept = len(
        [
            k
            for k in endpoint
            if k not in owned_before and k in merged and all(k not in s for _, s in layer_dbs)
        ]
    )
    plan.items.append(
        Item(
            DPKG_STATUS,
            "merged",
            ", ".join(r.label for r, _ in layer_dbs),
            f"package database merged per package: {len(merged)} packages, {kept} installed by the user",
        )
    )
