"""The agent's life: enroll once, then cycles of (report, sync if due or asked, do queued work)."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lamina.agent import facts
from lamina.agent.blobs import agent_blobs
from lamina.agent.staging import stage_layers, stage_revert
from lamina.agent.state import AgentState, load_state, load_status, save_state, save_status
from lamina.agent.sync import run_sync
from lamina.agent.transport import AgentClient, fetch_certificate, retrying
from lamina.errors import ConflictError, LaminaError, UsageError
from lamina.protocol.schemas import AgentConfig, EnrollRequest, EnrollResponse, WorkItem
from lamina.tree.restore import restore_tree


def enroll(
    server: str, token: str, root: Path, state_dir: Path, ca_cert: Path | None = None
) -> AgentState:
    if not root.is_dir():
        raise UsageError(f"the root {root} is not a folder")
    pem = ca_cert.read_text() if ca_cert else fetch_certificate(server)
    client = AgentClient(server, None, pem)
    try:
        req = EnrollRequest(token=token, facts=facts.gather(root))
        resp = EnrollResponse(**client.json("POST", "/agent/enroll", json=req.model_dump()))
    finally:
        client.close()
    st = AgentState(
        server=server,
        device_id=resp.device_id,
        credential=resp.credential,
        root=str(root.resolve()),
        chunker_seed=resp.chunking.chunker_seed,
        id_key=resp.chunking.id_key,
        min_size=resp.chunking.min_size,
        avg_size=resp.chunking.avg_size,
        max_size=resp.chunking.max_size,
        pinned_cert=pem,
    )
    save_state(state_dir, st)
    save_status(
        state_dir,
        {"device_id": st.device_id, "cvd_id": None, "state": resp.status, "last_sync": None},
    )
    return st


def _disk_free(root: Path) -> int:
    try:
        return shutil.disk_usage(root).free
    except OSError:
        return 0


class Agent:
    def __init__(
        self, state_dir: Path, on_progress: Callable[[dict[str, Any]], None] | None = None
    ) -> None:
        self.state_dir = state_dir
        self.on_progress = on_progress
        self._first_cycle = True
        self.st = load_state(state_dir)
        self.client = AgentClient(self.st.server, self.st.credential, self.st.pinned_cert)
        self.status: dict[str, Any] = load_status(state_dir) or {}
        self.status.setdefault("device_id", self.st.device_id)

    def close(self) -> None:
        self.client.close()

    def _save(self, **changes: Any) -> None:
        self.status.update(changes)
        save_status(self.state_dir, self.status)

    def report(self, progress: dict[str, Any] | None = None) -> AgentConfig:
        body = {
            "state": str(self.status.get("state", "idle")),
            "progress": progress or {},
            "disk_free": _disk_free(Path(self.st.root)),
        }
        cfg = AgentConfig(**retrying(lambda: self.client.json("POST", "/agent/config", json=body)))
        self._save(cvd_id=cfg.cvd_id, registration=cfg.status, policy_version=cfg.policy_version)
        if cfg.chunking is not None and cfg.chunking.id_key != self.st.id_key:
            # A pending enrollment gives no id key: the server hands it over once active.
            self.st.id_key = cfg.chunking.id_key
            save_state(self.state_dir, self.st)
        return cfg

    def sync_due(self, cfg: AgentConfig) -> bool:
        if cfg.cvd_id is None or cfg.policy is None:
            return False
        if cfg.last_sync is None:
            return True
        return dt.datetime.now(dt.UTC) - cfg.last_sync >= dt.timedelta(seconds=cfg.policy.interval)

    def sync(self, cfg: AgentConfig) -> dict[str, Any]:
        self._save(state="syncing")

        def progress(p: dict[str, Any]) -> None:
            self._save(progress=p)
            if self.on_progress:
                self.on_progress(p)
            # Best effort: a server restarting must not fail the upload.
            with contextlib.suppress(LaminaError):
                self.client.json("POST", "/agent/config", json={"state": "syncing", "progress": p})

        try:
            extra = (
                {
                    "layers": self.status["layers"],
                    "layer_labels": self.status.get("layer_labels", []),
                }
                if self.status.get("layers") is not None
                else {}
            )
            res = run_sync(self.client, self.st, self.state_dir, cfg, progress, extra)
        except LaminaError as e:
            self._save(state="error", last_error=e.message)
            raise
        snap = res.response.snapshot
        self._save(
            state="idle",
            last_sync=snap.time.isoformat(),
            last_snapshot=snap.id,
            progress={},
            last_error=None,
            sync_requested=False,
            last_sync_stats={
                "files": res.files,
                "bytes": res.bytes,
                "files_read": res.files_read,
                "uploaded_bytes": res.uploaded_bytes,
                "errors": res.errors[:20],
            },
        )
        self.report()
        return {"snapshot": snap.id, "files": res.files, "uploaded_bytes": res.uploaded_bytes}

    # --- work the server queued ------------------------------------------------
    def _task(self, item: WorkItem, **report: Any) -> None:
        retrying(lambda: self.client.json("POST", f"/agent/tasks/{item.task_id}", json=report))

    def _supersede(self, item: WorkItem) -> None:
        """A new staging replaces one not yet applied: its task will never apply."""
        old = self.status.get("staged_task")
        if old and old != item.task_id and not self.status.get("applied"):
            with contextlib.suppress(LaminaError):
                self._task(
                    WorkItem(task_id=old, kind="", params={}),
                    progress=0,
                    state="failed",
                    message=f"superseded by task {item.task_id} before a boot applied it",
                )

    def do(self, item: WorkItem, cfg: AgentConfig) -> None:
        if item.kind in ("layer-apply", "revert"):
            self._supersede(item)
        try:
            if item.kind == "sync":
                result = self.sync(cfg)
                self._task(item, progress=100, state="done", message="synced", result=result)
            elif item.kind == "restore":
                result = self.restore(item.params)
                self._task(item, progress=100, state="done", message="restored", result=result)
            elif item.kind == "layer-apply":
                result = stage_layers(self.client, self.st, self.state_dir, item.params)
                self._save(
                    state="waiting for reboot",
                    staged=result["transaction"],
                    staged_task=item.task_id,
                )
                self._task(
                    item,
                    progress=100,
                    state="waiting",
                    message="staged: applies at next boot",
                    result=result,
                )
            elif item.kind == "revert":
                result = stage_revert(self.client, self.st, self.state_dir, item.params)
                self._save(
                    state="waiting for reboot",
                    staged=result["transaction"],
                    staged_task=item.task_id,
                )
                self._task(
                    item,
                    progress=100,
                    state="waiting",
                    message="staged: applies at next boot",
                    result=result,
                )
            else:
                self._task(
                    item, progress=0, state="failed", message=f"unknown task kind {item.kind!r}"
                )
        except LaminaError as e:
            self._task(item, progress=0, state="failed", message=e.message)

    def restore(self, params: dict[str, Any]) -> dict[str, Any]:
        """Restore paths of a snapshot in place, keeping current files as NAME.lamina-TIME."""
        root = Path(self.st.root)
        blobs = agent_blobs(self.client, self.st.chunking.id_key)
        paths = [p.strip("/") for p in params.get("paths") or []]
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
        kept = []
        if not params.get("overwrite"):
            for p in paths:
                cur = root / p
                if os.path.lexists(cur):
                    aside = cur.with_name(f"{cur.name}.lamina-{stamp}")
                    os.rename(cur, aside)
                    kept.append(str(aside.relative_to(root)))
        st = restore_tree(blobs, bytes.fromhex(params["root"]), root, paths=paths)
        return {"files": st.files, "bytes": st.bytes, "kept": kept, "errors": st.errors[:20]}

    def cycle(self, force_sync: bool = False) -> dict[str, Any]:
        """One full cycle: report, sync if due or asked, then every queued task."""
        cfg = self.report()
        force_sync = force_sync or (
            bool(self.status.get("sync_requested")) and cfg.cvd_id is not None
        )
        if force_sync and not cfg.cvd_id:
            raise ConflictError(f"this device is {cfg.status}: it has no active CVD to sync")
        done: dict[str, Any] = {"synced": False, "tasks": []}
        if self.status.get("staged_task") and self.status.get("applied"):
            # `agent boot` applied what that task staged: it is done now.
            tid = self.status["staged_task"]
            retrying(
                lambda: self.client.json(
                    "POST",
                    f"/agent/tasks/{tid}",
                    json={
                        "progress": 100,
                        "state": "done",
                        "message": "applied at boot",
                        "result": {"applied": self.status["applied"]},
                    },
                )
            )
            self._save(staged_task=None, applied=None)
        params = {"restarted": "true"} if self._first_cycle else {}
        items = [
            WorkItem(**w)
            for w in retrying(lambda: self.client.json("GET", "/agent/work", params=params))
        ]
        self._first_cycle = False
        asked = any(i.kind == "sync" for i in items)
        if (force_sync or self.sync_due(cfg)) and not asked and cfg.cvd_id:
            self.sync(cfg)
            done["synced"] = True
        for item in items:
            self.do(item, cfg)
            done["tasks"].append({"id": item.task_id, "kind": item.kind})
            done["synced"] |= item.kind == "sync"
        return done

    def run_forever(self, poll: float = 15.0) -> None:
        while True:
            try:
                self.cycle()
            except LaminaError as e:
                self._save(state="error", last_error=e.message)
            time.sleep(poll)
