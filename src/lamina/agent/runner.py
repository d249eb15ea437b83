"""The agent's life: enroll once, then cycles of (report, sync if due or asked, do queued work)."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lamina.agent import facts, staging
from lamina.agent.bootcheck import BootCheck, default_check
from lamina.agent.state import (
    StateLock,
    SyncStats,
    load_state,
    load_status,
    save_state,
    save_status,
)
from lamina.agent.sync import run_sync
from lamina.agent.transport import AgentClient, retrying
from lamina.errors import AuthError, ConflictError, IntegrityError, LaminaError, UsageError
from lamina.heap import map_large_blocks
from lamina.layers.rules import for_os
from lamina.protocol.endpoint import AgentConfig
from lamina.protocol.task_kinds import TaskKind, TaskState
from lamina.tree.names import split_path

if TYPE_CHECKING:
    from lamina.agent.stream import StreamProgress
    from lamina.protocol.tasks import RestoreParams, WorkItem

log = logging.getLogger(__name__)
#: The state the server gives a task an admin cancelled.
CANCELLED = TaskState.CANCELLED


class Agent:
    def __init__(
        self,
        state_dir: Path,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        insecure: bool = False,
        boot_check: BootCheck | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.on_progress = on_progress
        self.boot_check = boot_check or default_check
        self._first_cycle = True
        #: Facts go with the next report: at the agent's start and after every sync.
        self._facts_due = True
        #: A device not active reports its packages, again whenever dpkg rewrote its
        #: database (``facts.dpkg_signature``): a migration's dry run reads them.
        self._dpkg_reported: tuple[int, int, int] | None = None
        self.st = load_state(state_dir)
        self._lock = StateLock(state_dir)  # a second agent on this folder stops here
        map_large_blocks()  # a sync's freed read buffers and bundles leave the RSS at once
        self.client = AgentClient(
            self.st.server,
            self.st.credential,
            self.st.pinned_cert,
            ca=self.st.pinned_is_ca,
            insecure=insecure or self.st.insecure,
        )
        self.status = load_status(state_dir)
        if self.status.device_id is None:
            self.status.device_id = self.st.device_id

    def close(self) -> None:
        self.client.close()
        self._lock.release()

    def _save(self, **changes: Any) -> None:
        """Change fields of ``status.json`` (each validated: an unknown one is a bug) and write it.

        Changes that change nothing write nothing: a report's answer is the same in most
        cycles, and each write is two fsyncs (file and folder)."""
        if all(getattr(self.status, name) == value for name, value in changes.items()):
            return
        for name, value in changes.items():
            setattr(self.status, name, value)
        save_status(self.state_dir, self.status)

    def report(self, progress: dict[str, Any] | None = None) -> AgentConfig:
        error = self.status.last_error
        body: dict[str, Any] = {
            "state": self.status.state,
            "progress": progress or {},
            "disk_free": facts.disk_usage(Path(self.st.root))[1],
            # What the server turns into events (agent error, clock skew) and the
            # hostname it shows (refreshed at every report).
            "last_error": str(error)[:1024] if error else None,
            "clock": dt.datetime.now(dt.UTC).isoformat(),
            "hostname": facts.current_hostname(Path(self.st.root)),
        }
        root = Path(self.st.root)
        waiting = self.status.registration != "active"
        dpkg = facts.dpkg_signature(root) if waiting else None
        if self._facts_due or (waiting and dpkg != self._dpkg_reported):
            try:
                found = facts.gather(root, Path(self.st.sysfs), self.st.facts, packages=waiting)
                body["facts"] = found.model_dump()
            except UsageError as e:  # the server keeps the last good facts
                log.warning("device facts not reported: %s", e.message)
        cfg = AgentConfig(**retrying(lambda: self.client.json("POST", "/agent/config", json=body)))
        self._facts_due = False
        self._dpkg_reported = dpkg
        self.client.server_protocol = cfg.protocol
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
                {"layers": self.status.layers, "layer_labels": self.status.layer_labels}
                if self.status.layers is not None
                else {}
            )
            started = time.monotonic()
            last = self.status.last_sync_stats
            expected = last.bytes if last is not None else None
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
            last_sync=snap.time,
            last_snapshot=snap.id,
            progress={},
            last_error=None,
            sync_requested=False,
            last_sync_stats=SyncStats(
                files=res.files,
                bytes=res.bytes,
                files_read=res.files_read,
                uploaded_bytes=res.uploaded_bytes,
                errors=res.errors[:20],
            ),
        )
        self._facts_due = True
        self.report()
        return {"snapshot": snap.id, "files": res.files, "uploaded_bytes": res.uploaded_bytes}

    # --- work the server queued ------------------------------------------------
    def _wait_for_boot(
        self, item: WorkItem, result: dict[str, Any], progress: int, message: str, **status: Any
    ) -> None:
        """A boot set is staged: the status says so (with ``status``'s other fields), and
        the task waits for the restart that applies it."""
        self._save(
            **status,
            state="waiting for reboot",
            staged=result["transaction"],
            staged_task=item.task_id,
        )
        self._task(item, progress=progress, state="waiting", message=message, result=result)

    def _task(self, item: WorkItem | str, **report: Any) -> None:
        """Report on a task (a work item, or a task id when only the id is known)."""
        tid = item if isinstance(item, str) else item.task_id
        retrying(lambda: self.client.json("POST", f"/agent/tasks/{tid}", json=report))

    def _supersede(self, item: WorkItem) -> None:
        """A new staging replaces one not yet applied: its task will never apply."""
        old = self.status.staged_task
        if old and old != item.task_id and not self.status.applied:
            with contextlib.suppress(LaminaError):
                self._task(
                    old,
                    progress=0,
                    state="failed",
                    message=f"superseded by task {item.task_id} before a boot applied it",
                )

    def do(self, item: WorkItem, cfg: AgentConfig) -> None:
        # The parameters' models load with the first work item, not in every cycle.
        from lamina.protocol.tasks import (
            LayerApplyParams,
            MigrateParams,
            RestoreParams,
            RevertParams,
            SyncParams,
        )

        params = item.params  # read into its kind's model with the item (``work_item``)
        stages = isinstance(params, LayerApplyParams | MigrateParams) or (
            isinstance(params, RevertParams) and not params.dry_run
        )
        if stages:
            self._supersede(item)
        try:
            if isinstance(params, SyncParams):
                result = self.sync(cfg)
                self._task(item, progress=100, state="done", message="synced", result=result)
            elif isinstance(params, RestoreParams):
                result = self.restore(params)
                self._task(item, progress=100, state="done", message="restored", result=result)
            elif isinstance(params, MigrateParams):
                result = staging.stage_migration(self.client, self.st, self.state_dir, params)
                self._wait_for_boot(
                    item,
                    result,
                    40,
                    "boot set staged: restart the machine to apply it",
                    # No sync until this machine has become the CVD's (a system laid down
                    # from layers is the CVD's own machine already).
                    migrating=item.task_id if params.mode != "system" else None,
                )
            elif isinstance(params, RevertParams) and params.dry_run:
                result = staging.stage_revert(self.client, self.st, self.state_dir, params)
                c = result["counts"]
                msg = (
                    f"dry run: {c['add']} to add, {c['update']} to update, {c['remove']} to remove"
                )
                self._task(item, progress=100, state="done", message=msg, result=result)
            elif isinstance(params, RevertParams | LayerApplyParams):
                result = (
                    staging.stage_revert(self.client, self.st, self.state_dir, params)
                    if isinstance(params, RevertParams)
                    else staging.stage_layers(self.client, self.st, self.state_dir, params)
                )
                self._wait_for_boot(item, result, 100, "staged: applies at next boot")
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

    def restore(self, params: RestoreParams) -> dict[str, Any]:
        """Restore paths of a snapshot in place, keeping current files as NAME.lamina-TIME.

        The keep-aside rename is done by the restore's own walk (directory
        descriptors, ``O_NOFOLLOW``): a folder on the path swapped for a symlink is
        replaced, never followed. Files in place are kept only if they re-chunk to
        the snapshot's content.
        """
        root = Path(self.st.root)
        paths = [p.strip("/") for p in params.paths]
        if not paths or any(not split_path(p) for p in paths):
            raise UsageError(
                "a restore onto the endpoint needs paths inside its root, not / itself"
            )
        # A restore's and a stream's modules are imported by them, not by every agent run.
        from lamina.agent.blobs import agent_blobs
        from lamina.tree.restore import restore_tree

        blobs = agent_blobs(self.client, self.st.chunking.id_key)
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
        tree = bytes.fromhex(params.root)
        received = self.client.received_bytes
        seeded, as_deltas = staging.seed_paths(
            self.client, blobs, root, tree, paths, self.st.chunking
        )
        st = restore_tree(
            blobs,
            tree,
            root,
            paths=paths,
            chunking=self.st.chunking,
            keep_aside=None if params.overwrite else f".lamina-{stamp}",
        )
        return {
            "files": st.files,
            "bytes": st.bytes,
            "kept": st.kept,
            "errors": st.errors[:20],
            "seeded_bytes": seeded,
            "delta_files": as_deltas,
            "downloaded_bytes": self.client.received_bytes - received,
        }

    def _report_applied(self) -> None:
        """`agent boot` applied what the staged task staged, and the boot is confirmed."""
        tid = self.status.staged_task
        applied = self.status.applied or []
        failed = [str(a["error"]) for a in applied if a.get("error")]
        streaming = not failed and bool(self.status.stream)
        if failed:
            state, progress, message = "failed", 100, failed[0]
        elif streaming:
            state, progress, message = "running", 60, "applied at boot; streaming the user data"
        else:
            state, progress, message = "done", 100, "applied at boot, boot confirmed"
        retrying(
            lambda: self.client.json(
                "POST",
                f"/agent/tasks/{tid}",
                json={
                    "progress": progress,
                    "state": state,
                    "message": message,
                    "result": {"applied": applied},
                },
            )
        )
        if streaming and self.status.stream is not None:
            self._save(stream={**self.status.stream, "task": tid})
        after: dict[str, Any] = {"stream": None} if failed else {}
        if not failed and not streaming:
            after["migrating"] = None
        self._save(staged_task=None, applied=None, **after)

    def _stream(self) -> None:
        """Restore what is still missing of a migrated CVD's user data; resumable."""
        info = dict(self.status.stream or {})
        tid = str(info["task"]) if info.get("task") else None
        root = Path(self.st.root)

        def progress(p: StreamProgress) -> None:
            self._save(state="streaming user data", stream={**info, **p.public()})
            if tid and p.bytes_total:
                pct = 60 + int(39 * p.bytes_done / p.bytes_total)
                with contextlib.suppress(LaminaError):
                    self._task(
                        tid,
                        progress=pct,
                        state="running",
                        message=f"streaming user data: {p.files_done} of {p.files_total} files",
                        result={"stream": p.public()},
                    )

        from lamina.agent.blobs import agent_blobs
        from lamina.agent.stream import stream_user_data

        blobs = agent_blobs(self.client, self.st.chunking.id_key)
        res = stream_user_data(
            blobs,
            bytes.fromhex(str(info["root"])),
            root,
            for_os(facts.os_release(root)),
            self.st.chunking,
            progress,
        )
        if not res.done:
            self._save(state="idle", stream={**info, **res.public()})
            return
        if tid:
            self._task(
                tid,
                progress=100,
                state="done",
                message=f"migrated: {res.files_total} user files, {res.kept_local} kept as the "
                "new machine had them",
                result={"stream": res.public()},
            )
        self._save(
            state="idle",
            stream=None,
            migrating=None,
            last_stream=res.public(),
            sync_requested=True,
        )

    def _confirm_boot(self) -> bool:
        """After a staged apply: confirm the boot once the system is up and the server answered.

        The server answered already (``report`` ran first in the cycle); the boot
        check says whether the system reached multi-user. Unconfirmed, the
        transaction keeps what it replaced, and the second boot without a
        confirmation rolls it back (``staging.boot``). Returns whether nothing
        awaits confirmation any more."""
        root = Path(self.st.root)
        if not staging.awaiting_confirmation(self.state_dir, root):
            return True
        if not self.boot_check(root):
            self._save(state="boot not confirmed")
            return False
        confirmed = staging.confirm(self.state_dir, root)
        self._save(state="idle", confirmed=confirmed)
        return True

    def _read_work(self, raw: object) -> list[WorkItem]:
        """The work items of the server's answer, each read into its kind's model. One this
        agent must refuse (an unknown kind, malformed parameters) is reported failed with
        the reason, and the others still run."""
        if not isinstance(raw, list):
            raise IntegrityError(f"the server's work list is a {type(raw).__name__}, not a list")
        if not raw:
            return []  # most cycles: no task models to build
        from lamina.protocol.tasks import work_item

        items = []
        for w in raw:
            try:
                items.append(work_item(w))
            except UsageError as e:
                tid = w.get("task_id") if isinstance(w, dict) else None
                log.warning("refused a task: %s", e.message)
                if isinstance(tid, str) and tid:
                    self._task(tid, progress=0, state=TaskState.FAILED, message=e.message)
        return items

    def _drop_cancelled(self) -> None:
        """A staged task an admin cancelled: drop its transaction before any boot applies it."""
        tid = self.status.staged_task
        if not tid or self.status.applied:
            return
        task = retrying(lambda: self.client.json("GET", f"/agent/tasks/{tid}"))
        if task.get("state") != CANCELLED:
            return
        staged = self.status.staged
        if staged:
            staging.drop(self.state_dir, Path(self.st.root), staged)
        self._save(state="idle", staged=None, staged_task=None)

    def cycle(self, force_sync: bool = False) -> dict[str, Any]:
        """One full cycle: report, sync if due or asked, then every queued task."""
        cfg = self.report()
        force_sync = force_sync or (self.status.sync_requested and cfg.cvd_id is not None)
        if force_sync and not cfg.cvd_id:
            raise ConflictError(f"this device is {cfg.status}: it has no active CVD to sync")
        done: dict[str, Any] = {"synced": False, "tasks": []}
        confirmed = self._confirm_boot()
        if confirmed and self.status.staged_task and self.status.applied:
            self._report_applied()
        if confirmed and self.status.stream and cfg.cvd_id:
            self._stream()
        self._drop_cancelled()
        params = {"restarted": "true"} if self._first_cycle else {}
        items = self._read_work(
            retrying(lambda: self.client.json("GET", "/agent/work", params=params))
        )
        self._first_cycle = False
        asked = any(i.kind == TaskKind.SYNC for i in items)
        # A snapshot now would lack the user data, or be of a machine that never became the CVD's.
        streaming = bool(self.status.stream or self.status.migrating)
        if (force_sync or self.sync_due(cfg)) and not asked and cfg.cvd_id and not streaming:
            self.sync(cfg)
            done["synced"] = True
        for item in items:
            self.do(item, cfg)
            done["tasks"].append({"id": item.task_id, "kind": item.kind})
            done["synced"] |= item.kind == TaskKind.SYNC
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
