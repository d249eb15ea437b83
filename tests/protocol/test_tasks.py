"""Task kinds and their parameters: one model per kind, validated on both sides."""

from __future__ import annotations

import json

import pytest

from lamina.errors import UsageError
from lamina.protocol.tasks import (
    PARAMS,
    LayerApplyParams,
    RestoreParams,
    RevertParams,
    SyncParams,
    TaskKind,
    TaskPublic,
    WorkItem,
    params_for,
    work_item,
)

ROOT = "0f" * 32


def test_every_kind_has_a_parameters_model() -> None:
    assert set(PARAMS) == set(TaskKind)


@pytest.mark.parametrize("kind", list(TaskKind))
def test_every_kind_goes_through_the_public_union(kind: TaskKind) -> None:
    """A task of each kind is shown through ``TaskPublic``: its model names its kind and
    is a member of the union (a kind left out fails here, not in a user's task list)."""
    model = PARAMS[kind]
    assert model.kind is kind
    item = WorkItem.model_validate(
        {"task_id": "t", "kind": kind.value, "params": model.model_construct()}
    )
    assert isinstance(item.params, model)


def test_parameters_are_read_into_their_kinds_model() -> None:
    assert params_for("sync", None) == SyncParams()
    assert params_for("sync", {"why": "record start"}) == SyncParams(why="record start")
    restore = params_for("restore", {"snapshot": "s", "root": ROOT, "paths": ["etc"]})
    assert isinstance(restore, RestoreParams) and not restore.overwrite
    revert = params_for(
        "revert", {"snapshot": "s", "root": ROOT, "policy": {"interval": 600}, "scan_errors": 2}
    )
    assert isinstance(revert, RevertParams) and revert.system_only
    assert revert.policy is not None and revert.policy.interval == 600
    layers = params_for(
        "layer-apply",
        {
            "delta": ROOT,
            "expect": {"etc/a": ["file", 3, "ab"], "etc/b": None},
            "dpkg_base": ["cd" * 32, 4096],
        },
    )
    assert isinstance(layers, LayerApplyParams)
    assert layers.expect == {"etc/a": ["file", 3, "ab"], "etc/b": None}
    assert layers.dpkg_base == ["cd" * 32, 4096]  # numbers stay numbers, ids stay strings


@pytest.mark.parametrize(
    ("kind", "raw", "why"),
    [
        ("format-disk", {}, "unknown task kind 'format-disk'"),
        ("sync", {"why": "x", "rm": "-rf"}, "rm: Extra inputs"),
        ("restore", {"snapshot": "s", "root": ROOT}, "paths"),
        ("restore", {"snapshot": "s", "root": ROOT, "paths": []}, "paths"),
        ("restore", {"snapshot": "s", "root": ROOT.upper(), "paths": ["etc"]}, "root"),
        ("revert", {"snapshot": "s", "root": ROOT, "scan_errors": -1}, "scan_errors"),
        ("revert", {"snapshot": "s", "root": ROOT, "policy": {"interval": 1}}, "policy.interval"),
        ("layer-apply", {"delta": "zz"}, "delta"),
        ("layer-apply", {"delta": ROOT, "removes": "etc"}, "removes"),
    ],
)
def test_malformed_parameters_are_a_usage_error_naming_the_field(
    kind: str, raw: dict[str, object], why: str
) -> None:
    with pytest.raises(UsageError, match=why):
        params_for(kind, raw)


def test_a_model_of_another_kind_is_refused() -> None:
    with pytest.raises(UsageError, match="cannot carry SyncParams"):
        params_for("restore", SyncParams())


def test_a_work_item_reads_its_parameters_into_its_kinds_model() -> None:
    raw = {
        "task_id": "t1",
        "kind": "restore",
        "params": {"snapshot": "s", "root": ROOT, "paths": ["etc"]},
    }
    item = work_item(raw)
    assert item.kind is TaskKind.RESTORE and isinstance(item.params, RestoreParams)
    # The wire JSON is what the previous version sent: no "kind" inside the parameters, so
    # an older agent (whose models refuse unknown fields) reads it as before.
    wire = json.loads(item.model_dump_json())
    assert wire["kind"] == "restore" and "kind" not in wire["params"]
    assert params_for(wire["kind"], wire["params"]) == item.params
    assert work_item(wire) == item


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ({"task_id": "t", "kind": "restore", "params": {"snapshot": "s"}}, "restore task: root"),
        ({"task_id": "t", "kind": "sync", "params": {"why": "x", "eta": 3}}, "sync task: eta"),
        ({"task_id": "t", "kind": "sync", "params": ["why"]}, "sync task: not an object"),
        ({"task_id": "t", "kind": "wipe", "params": {}}, "unknown task kind 'wipe'"),
        ({"kind": "sync", "params": {}}, "work item: task_id"),
        ({"task_id": "t", "params": {}}, "work item: kind"),
        ("sync", "work item"),
    ],
)
def test_a_malformed_work_item_is_a_usage_error_naming_the_field(raw: object, why: str) -> None:
    with pytest.raises(UsageError, match=why):
        work_item(raw)


def test_a_task_carries_only_its_own_kinds_parameters() -> None:
    with pytest.raises(UsageError, match="cannot carry SyncParams"):
        WorkItem(task_id="t", kind=TaskKind.RESTORE, params=SyncParams())
    public = TaskPublic.model_validate(
        {
            "id": "t",
            "kind": "layer-apply",
            "state": "queued",
            "progress": 0,
            "message": "",
            "cvd_id": None,
            "device_id": "d",
            "params": {"delta": ROOT},
            "result": {},
            "created_by": "admin",
            "created": "2026-01-01T00:00:00Z",
            "started": None,
            "finished": None,
        }
    )
    assert isinstance(public.params, LayerApplyParams) and public.params.delta == ROOT
