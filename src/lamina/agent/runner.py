"""The agent's life: enroll once, then cycles of (report, sync if due or asked, do queued work)."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lamina.agent import facts
from lamina.agent.blobs import agent_blobs
from lamina.agent.staging import drop, stage_layers, stage_revert
from lamina.agent.state import (
    AgentState,
    StateLock,
    has_credential,
    load_state,
    load_status,
    save_state,
    save_status,
)
from lamina.agent.sync import run_sync
from lamina.agent.transport import AgentClient, check_server_url, fetch_certificate, retrying
from lamina.errors import AuthError, ConflictError, LaminaError, UsageError
from lamina.protocol.schemas import AgentConfig, EnrollRequest, EnrollResponse, WorkItem
from lamina.tree.restore import restore_tree, split_path

log = logging.getLogger(__name__)
#: The state the server gives a task an admin cancelled.
CANCELLED = "cancelled"


def enroll(
    server: str,
    token: str,
    root: Path,
    state_dir: Path,
    ca_cert: Path | None = None,
    *,
    fingerprint: str | None = None,
    insecure: bool = False,
    force: bool = False,
) -> AgentState:
    """Register with the server and write the state folder.

    A folder that already holds a credential is refused unless ``force``: enrolling
    again makes a new device and loses the old one's credential.
    """
    if not root.is_dir():
        raise UsageError(f"the root {root} is not a folder")
    if has_credential(state_dir) and not force:
        raise ConflictError(
            f"{state_dir} already holds an enrolled agent's credential; "
            "enrolling again replaces it (pass --force to do so)"
        )
    check_server_url(server, insecure)
    if ca_cert and fingerprint:
        raise UsageError("give either --ca-cert or --fingerprint, not both")
    lock = StateLock(state_dir)  # not while an agent runs on this folder
    try:
        return _enroll(server, token, root, state_dir, ca_cert, fingerprint, insecure)
    finally:
        lock.release()


def _enroll(
    server: str,
    token: str,
    root: Path,
    state_dir: Path,
    ca_cert: Path | None,
    fingerprint: str | None,
    insecure: bool,
) -> AgentState:
    try:
        pem = ca_cert.read_text() if ca_cert else fetch_certificate(server, fingerprint)
    except OSError as e:
        raise UsageError(f"cannot read the CA certificate {ca_cert}: {e.strerror}") from e
    client = AgentClient(server, None, pem, ca=ca_cert is not None, insecure=insecure)
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
        pinned_is_ca=ca_cert is not None,
        insecure=insecure,
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
        self,
        state_dir: Path,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        insecure: bool = False,
    ) -> None:
        self.state_dir = state_dir
        self.on_progress = on_progress
        self._first_cycle = True
        self.st = load_state(state_dir)
        self._lock = StateLock(state_dir)  # a second agent on this folder stops here
        self.client = AgentClient(
            self.st.server,
            self.st.credential,
            self.st.pinned_cert,
            ca=self.st.pinned_is_ca,
            insecure=insecure or self.st.insecure,
        )
        self.status: dict[str, Any] = load_status(state_dir) or {}
        self.status.setdefault("device_id", self.st.device_id)

    def close(self) -> None:
        self.client.close()
        self._lock.release()

    def _save(self, **changes: Any) -> None:
        self.status.update(changes)
        save_status(self.state_dir, self.status)

    def report(self, progress: dict[str, Any] | None = None) -> AgentConfig:
        error = self.status.get("last_error")
        body = {
            "state": str(self.status.get("state", "idle")),
            "progress": progress or {},
            "disk_free": _disk_free(Path(self.st.root)),
            # What the server turns into events (agent error, clock skew) and the
            # hostname it shows (refreshed at every report).
            "last_error": str(error)[:1024] if error else None,
            "clock": dt.datetime.now(dt.UTC).isoformat(),
            "hostname": facts.current_hostname(Path(self.st.root)),
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
            started = time.monotonic()
            last = self.status.get("last_sync_stats") or {}
            expected = last.get("bytes") if isinstance(last.get("bytes"), int) else None
            res = run_sync(
                self.client, self.st, self.state_dir, cfg, progress, extra, expected_bytes=expected
            )
        except LaminaError as e:
            self._save(state="error", last_error=e.message)
            log.warning("sync failed: %s", e.message)
            raise
        snap = res.response.snapshot
        seconds = time.monotonic() - started
        log.info(
            "sync done: snapshot %s, %d files (%d read), %d bytes uploaded in %.1f s%s",
            snap.id[:12],
            res.files,
            res.files_read,
            res.uploaded_bytes,
            seconds,
            f", {len(res.errors)} unreadable" if res.errors else "",
            extra={
                "snapshot": snap.id,
                "files": res.files,
                "files_read": res.files_read,
                "uploaded_bytes": res.uploaded_bytes,
                "seconds": round(seconds, 3),
                "unreadable": len(res.errors),
            },
        )
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
        if item.kind in ("layer-apply", "revert") and not item.params.get("dry_run"):
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
            elif item.kind == "revert" and item.params.get("dry_run"):
                result = stage_revert(self.client, self.st, self.state_dir, item.params)
                c = result["counts"]
                msg = (
                    f"dry run: {c['add']} to add, {c['update']} to update, {c['remove']} to remove"
                )
                self._task(item, progress=100, state="done", message=msg, result=result)
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
        except AuthError:
            raise  # the server refuses this agent: no task can be reported
        except LaminaError as e:
            self._task(item, progress=0, state="failed", message=e.message)
        except Exception as e:  # one bad task must not stop the agent
            log.exception("task %s (%s) failed", item.task_id, item.kind)
            self._task(item, progress=0, state="failed", message=f"{type(e).__name__}: {e}")

    def restore(self, params: dict[str, Any]) -> dict[str, Any]:
        """Restore paths of a snapshot in place, keeping current files as NAME.lamina-TIME.

        The keep-aside rename is done by the restore's own walk (directory
        descriptors, ``O_NOFOLLOW``): a folder on the path swapped for a symlink is
        replaced, never followed. Files in place are kept only if they re-chunk to
        the snapshot's content.
        """
        root = Path(self.st.root)
        paths = [p.strip("/") for p in params.get("paths") or []]
        if not paths or any(not split_path(p) for p in paths):
            raise UsageError(
                "a restore onto the endpoint needs paths inside its root, not / itself"
            )
        blobs = agent_blobs(self.client, self.st.chunking.id_key)
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
        st = restore_tree(
            blobs,
            bytes.fromhex(params["root"]),
            root,
            paths=paths,
            chunking=self.st.chunking,
            keep_aside=None if params.get("overwrite") else f".lamina-{stamp}",
        )
        return {"files": st.files, "bytes": st.bytes, "kept": st.kept, "errors": st.errors[:20]}

    def _drop_cancelled(self) -> None:
        """A staged task an admin cancelled: drop its transaction before any boot applies it."""
        tid = self.status.get("staged_task")
        if not tid or self.status.get("applied"):
            return
        task = retrying(lambda: self.client.json("GET", f"/agent/tasks/{tid}"))
        if task.get("state") != CANCELLED:
            return
        staged = self.status.get("staged")
        if staged:
            drop(self.state_dir, Path(self.st.root), str(staged))
        self._save(state="idle", staged=None, staged_task=None)

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
            failed = [a["error"] for a in self.status["applied"] if a.get("error")]
            retrying(
                lambda: self.client.json(
                    "POST",
                    f"/agent/tasks/{tid}",
                    json={
                        "progress": 100,
                        "state": "failed" if failed else "done",
                        "message": failed[0] if failed else "applied at boot",
                        "result": {"applied": self.status["applied"]},
                    },
                )
            )
            self._save(staged_task=None, applied=None)
        self._drop_cancelled()
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
        """Cycles until stopped; a refused credential ends it (nothing can work).

        Each cycle is one log line at info (what it did, how long); a failed one a
        warning; the first good cycle after failures says the agent reconnected.
        """
        failures = 0
        log.info(
            "agent started: device %s, server %s, every %.0f s",
            self.st.device_id,
            self.st.server,
            poll,
        )
        while True:
            started = time.monotonic()
            try:
                done = self.cycle()
            except AuthError as e:
                self._save(state="error", last_error=e.message)
                log.error("the server refused this agent's credential: %s", e.message)
                raise
            except LaminaError as e:
                failures += 1
                self._save(state="error", last_error=e.message)
                log.warning("cycle failed (%d in a row): %s", failures, e.message)
            except Exception as e:  # the daemon keeps going: the next cycle retries
                failures += 1
                log.exception("agent cycle failed")
                self._save(state="error", last_error=f"{type(e).__name__}: {e}")
            else:
                if failures:
                    log.info("reconnected after %d failed cycles", failures)
                failures = 0
                log.info(
                    "cycle done in %.1f s: %s, %d tasks",
                    time.monotonic() - started,
                    "synced" if done["synced"] else "no sync due",
                    len(done["tasks"]),
                    extra={"synced": done["synced"], "tasks": len(done["tasks"])},
                )
            time.sleep(poll)
