"""The flex client's operations: list, download, launch, check-in, status, remove.

The CLI (``lamina flex-client``) parses, calls one of these, renders. The server is
reached through a :class:`ServerApi` (the CLI's logged-in HTTP client); the clock is a
parameter, so tests move time without touching the laptop's.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from lamina.errors import (
    AuthError,
    BackendError,
    ConflictError,
    ForbiddenError,
    IntegrityError,
    NotFoundError,
    RateLimitedError,
    StoreKeyError,
    UsageError,
)
from lamina.flex import disk, keywrap, qemu
from lamina.flex.folder import (
    ClientFolder,
    Instance,
    InstanceInfo,
    LocalState,
    write_model,
)
from lamina.flex.lease import (
    accept_renewal,
    advance,
    check_state,
    check_time,
    checkin_interval,
    deadline,
)
from lamina.flex.pieces import fetch_pieces
from lamina.flex.pins import KeyPins
from lamina.protocol.flex import (
    CLIENT_NAME,
    FlexKeyPublic,
    FlexManifest,
    Lease,
    Signed,
    verify,
)
from lamina.store.atomic import fsync_dir, write_atomic

Clock = Callable[[], dt.datetime]

Notify = Callable[[str], None]


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


class ServerApi(Protocol):
    """The logged-in HTTP client (``lamina.cli.client.Api``): JSON in and out, bytes for
    non-JSON bodies, Lamina errors for error statuses, ``BackendError`` when unreachable."""

    url: str

    def get(self, path: str, **kw: Any) -> Any: ...

    def post(self, path: str, json: Any = None, **kw: Any) -> Any: ...


def client_name() -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:250].strip(".-") or "laptop"
    return name if re.match(CLIENT_NAME, name) else "laptop"


@dataclass
class LaunchOptions:
    headless: bool = False
    shared_folder: Path | None = None
    accel: qemu.Accel = "auto"
    grace: float = 60.0
    stdout: IO[bytes] | int | None = None
    qemu_binary: str = "qemu-system-x86_64"
    #: Seconds between check-ins while the VM runs (None: from the policy's lease, see
    #: ``lease.checkin_interval``); no check-ins while offline.
    checkin_interval: float | None = None


class FlexClient:
    def __init__(
        self,
        root: Path,
        api: ServerApi | None,
        pins: Path,
        now: Clock = utcnow,
        kdf: keywrap.KdfParams = keywrap.DEFAULT_KDF,
        notify: Notify | None = None,
        host: keywrap.HostKey | None = None,
    ) -> None:
        self.folder = ClientFolder(root)
        self.api = api
        self.pins = KeyPins(pins)
        # The host binding's secret sits beside the pins, outside the instance folder.
        self.host = host or keywrap.HostKey(pins.parent / "flex-host.key")
        self.now = now
        self.kdf = kdf
        self.notify = notify or (lambda _m: None)

    # --- server ------------------------------------------------------------------------
    def _api(self) -> ServerApi:
        if self.api is None:
            raise AuthError("not logged in: run `lamina login URL --user NAME`")
        return self.api

    def _server(self) -> str:
        return self._api().url.rstrip("/")

    def server_key(self) -> str:
        offered = FlexKeyPublic.model_validate(self._api().get("/flex/key"))
        return self.pins.check(self._server(), offered)

    def entitlements(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self._api().get("/flex/my/entitlements")
        return rows

    # --- download ------------------------------------------------------------------------
    def download(
        self, entitlement: str, password: str, progress: Callable[[int, int], None] | None = None
    ) -> Instance:
        """Create an instance of ``entitlement`` and download its disk, or continue the one
        whose download was cut. ``progress(done_bytes, total_bytes)`` is called per piece."""
        if not password:
            raise UsageError("the instance needs a password")
        entitlement = self._entitlement_id(entitlement)
        self.folder.ensure()
        inst = self.folder.partial_for(self._server(), entitlement)
        finish: Callable[[], Instance] | None = None
        if inst is None:
            inst, key, finish = self._create(entitlement, password)
        else:
            self.notify(f"continuing the download of instance {inst.id}")
            key = self.unlock(inst, password, inst.lease())
        return fetch_pieces(self._api().get, inst, key, progress, finish)

    def _entitlement_id(self, ref: str) -> str:
        """An entitlement's id, given its id or its name."""
        rows = self.entitlements()
        if any(r.get("id") == ref for r in rows):
            return ref
        named = [r["id"] for r in rows if r.get("name") == ref]
        if len(named) == 1:
            return str(named[0])
        raise NotFoundError(
            f"you have no entitlement {ref!r} on {self._server()} (see `lamina flex-client list`)"
        )

    def _create(
        self, entitlement: str, password: str
    ) -> tuple[Instance, bytes, Callable[[], Instance]]:
        """A new instance folder: from a set-up cut short for this entitlement (its signed
        documents were saved first, so the server's instance is reused), else a new one.

        Returns the folder being set up, the disk key, and ``finish()``, which waits for the
        encrypted disk (``qemu-img``'s LUKS set-up runs meanwhile: about a second of PBKDF2
        benchmark) and renames the folder into place, whole."""
        staged = self._staged(entitlement)
        if staged is not None:
            info, manifest_signed, lease_signed = staged
            instance_id, public = info.instance, info.server_key
            self.notify(f"continuing the set-up of instance {instance_id}")
        else:
            public = self.server_key()
            created = self._api().post(
                "/flex/my/instances", {"entitlement": entitlement, "client": client_name()}
            )
            if not isinstance(created, dict) or not isinstance(created.get("instance"), str):
                raise IntegrityError("the server's answer to creating an instance is malformed")
            instance_id = self.folder.check_id(created["instance"])
            manifest_signed = Signed[Any].model_validate(created["manifest"])
            lease_signed = Signed[Any].model_validate(created["lease"])
        manifest = verify(manifest_signed, public, FlexManifest)
        lease = verify(lease_signed, public, Lease)
        accept_renewal(None, lease, instance_id)
        check_state(lease)
        now = self.now()
        stage = self.folder.staging(instance_id)
        final = self.folder.instances / instance_id
        if final.exists():
            raise ConflictError(f"instance {instance_id} is already under {self.folder.root}")
        if staged is None:
            # The signed documents first, instance.json last: a folder with instance.json
            # holds everything needed to continue without asking the server again.
            shutil.rmtree(stage, ignore_errors=True)
            stage.mkdir(mode=0o700)
            write_atomic(stage / "manifest.json", manifest_signed.model_dump_json().encode())
            write_atomic(stage / "lease.json", lease_signed.model_dump_json().encode())
            info = InstanceInfo(
                instance=instance_id,
                server=self._server(),
                server_key=public,
                entitlement=entitlement,
                image=manifest.image_name,
                version=manifest.version,
                created=now,
            )
            write_model(stage / "instance.json", info)
        key = keywrap.new_disk_key()
        (stage / "disk.qcow2").unlink(missing_ok=True)
        maker = ThreadPoolExecutor(1, thread_name_prefix="lamina-flex-disk")
        making = maker.submit(disk.create, stage / "disk.qcow2", manifest.size, key)
        maker.shutdown(wait=False)
        try:
            wrapped = keywrap.wrap(key, password, instance_id, self.host.key(), self.kdf)
            write_model(stage / "key.json", wrapped)
            write_model(
                stage / "state.json",
                LocalState(trusted_time=advance(None, lease.issued_at, now), last_checkin=now),
            )
        except BaseException:
            with contextlib.suppress(BaseException):
                making.result()
            raise

        def finish() -> Instance:
            making.result()
            os.replace(stage, final)
            fsync_dir(self.folder.instances)
            return Instance(final)

        return Instance(stage), key, finish

    def _staged(self, entitlement: str) -> tuple[InstanceInfo, Signed[Any], Signed[Any]] | None:
        """A set-up of an instance of ``entitlement`` from this server that was cut short;
        set-ups too incomplete to continue are deleted."""
        server = self._server()
        for path in sorted(self.folder.instances.glob(".*.new")):
            inst = Instance(path)
            try:
                info = inst.info()
                docs = inst.signed("manifest.json"), inst.signed("lease.json")
            except (FileNotFoundError, IntegrityError):
                shutil.rmtree(path, ignore_errors=True)
                continue
            if info.server == server and info.entitlement == entitlement:
                return info, docs[0], docs[1]
        return None

    # --- password -------------------------------------------------------------------------
    def unlock(self, inst: Instance, password: str, lease: Lease) -> bytes:
        """The disk key, counting wrong passwords: after the policy's tries, the instance is
        locked out for the policy's time."""
        st = inst.state()
        now = self.now()
        if st.locked_until is not None and now < st.locked_until:
            raise RateLimitedError(
                f"too many wrong passwords: instance {inst.id} is locked out until {_iso(st.locked_until)}"
            )
        try:
            wrapped = keywrap.WrappedKey.model_validate_json(inst.key_file.read_bytes())
        except FileNotFoundError:
            raise ConflictError(
                f"instance {inst.id} has no key (revoked?): remove it with `lamina flex-client remove`"
            ) from None
        r = lease.policy.restrictions
        host_key = self.host.key()
        try:
            key = keywrap.unwrap(wrapped, password, inst.id, host_key)
        except StoreKeyError:
            st.failed_tries += 1
            if st.failed_tries >= r.max_password_tries:
                st.failed_tries = 0
                st.locked_until = now + dt.timedelta(seconds=r.lockout_seconds)
                inst.save_state(st)
                raise RateLimitedError(
                    f"wrong password, {r.max_password_tries} times: instance {inst.id} is locked "
                    f"out until {_iso(st.locked_until)}"
                ) from None
            inst.save_state(st)
            left = r.max_password_tries - st.failed_tries
            raise StoreKeyError(
                f"wrong password for instance {inst.id} ({left} more before a lockout)"
            ) from None
        if st.failed_tries or st.locked_until:
            st.failed_tries, st.locked_until = 0, None
            inst.save_state(st)
        if wrapped.v == 1:  # from before the host binding: bind it to this computer now
            kdf = keywrap.KdfParams(
                time_cost=wrapped.time_cost,
                memory_kib=wrapped.memory_kib,
                parallelism=wrapped.parallelism,
            )
            write_model(inst.key_file, keywrap.wrap(key, password, inst.id, host_key, kdf))
        return key

    # --- lease -------------------------------------------------------------------------------
    def checkin(self, instance_id: str) -> Lease:
        return self._checkin(self.folder.get(instance_id))

    def _checkin(self, inst: Instance) -> Lease:
        info = inst.info()
        api = self._api()
        if self._server() != info.server:
            raise UsageError(
                f"instance {inst.id} belongs to {info.server}, but the session is for {self._server()}"
            )
        now = self.now()
        doc = api.post(f"/flex/my/instances/{inst.id}/checkin", {"client_time": now.isoformat()})
        signed = Signed[Any].model_validate(doc)
        lease = verify(signed, info.server_key, Lease)
        try:
            old: Lease | None = inst.lease()
        except FileNotFoundError:
            old = None
        accept_renewal(old, lease, inst.id)
        inst.save_lease(signed)
        st = inst.state()
        # The server's clock is the authority: a check-in resets the last trusted time to it
        # (a laptop clock that ran ahead and was corrected is fine again once online).
        st.trusted_time = lease.issued_at
        st.last_checkin = now
        inst.save_state(st)
        if lease.state == "revoked":
            inst.forget_key_and_disk()
        return lease

    def authorize(self, inst: Instance) -> Lease:
        """The lease this start runs under: checked in when the server answers, else the last
        one, checked offline. Refuses a revoked (deleting key and disk), locked, expired
        or ended lease, and a clock set back."""
        lease: Lease | None = None
        if self.api is not None:
            try:
                lease = self._checkin(inst)
            except (BackendError, AuthError) as e:
                if isinstance(e, ForbiddenError | RateLimitedError):
                    raise
                self.notify(f"offline ({e.message}); checking the lease kept on this laptop")
        if lease is None:
            lease = inst.lease()
        if lease.state == "revoked":
            inst.forget_key_and_disk()
            msg = f": {lease.message}" if lease.message else ""
            raise ForbiddenError(
                f"instance {inst.id} was revoked by the administrator{msg}; its key and disk are deleted"
            )
        check_state(lease)
        st = inst.state()
        now = self.now()
        check_time(lease, now, st.trusted_time)
        st.trusted_time = advance(st.trusted_time, now)
        inst.save_state(st)
        return lease

    # --- launch ----------------------------------------------------------------------------------
    def launch(self, instance_id: str, password: str, opts: LaunchOptions) -> qemu.RunResult:
        inst = self.folder.get(instance_id)
        if not inst.state().downloaded:
            raise ConflictError(
                f"the download of instance {inst.id} is not finished: run `lamina flex-client download` again"
            )
        lease = self.authorize(inst)
        key = self.unlock(inst, password, lease)
        manifest = inst.manifest()
        r = lease.policy.restrictions
        for text in (r.message, lease.message):
            if text:
                self.notify(text)
        share = opts.shared_folder
        if share is not None and r.shared_folder == "off":
            self.notify("the policy allows no shared folder: starting without it")
            share = None
        if share is not None and not share.is_dir():
            raise UsageError(f"the shared folder {share} is not a folder")
        fds: list[int] = []
        run_dir = Path(tempfile.mkdtemp(prefix="lamina-flex-"))
        try:
            fds.append(disk.secret_pipe(disk.passphrase(key)))
            enroll_fd = None
            if lease.manage is not None:
                enroll_fd = disk.secret_pipe(lease.manage.model_dump_json().encode())
                fds.append(enroll_fd)
            plan = qemu.LaunchPlan(
                name=f"lamina-flex-{inst.id}",
                disk=inst.disk,
                key_fd=fds[0],
                memory_mib=manifest.memory_mib,
                cpus=manifest.cpus,
                firmware=manifest.firmware,
                restrictions=r,
                headless=opts.headless,
                qmp_socket=run_dir / "qmp.sock",
                run_dir=run_dir,
                shared_folder=share.resolve() if share is not None else None,
                enroll_fd=enroll_fd,
                accel=opts.accel,
            )
            argv = qemu.build_argv(plan, opts.qemu_binary)
            viewer = None if opts.headless else shutil.which("remote-viewer")

            def started(qmp: qemu.Qmp) -> None:
                if opts.headless:
                    return
                uri = qemu.spice_uri(qmp)
                if viewer:
                    subprocess.Popen([viewer, uri], stdin=subprocess.DEVNULL)
                else:
                    self.notify(f"the VM's display: {uri} (open it with remote-viewer)")

            watch = None
            if self.api is not None:
                interval = opts.checkin_interval or checkin_interval(lease)
                watch = _Running(self, inst, lease, interval)
            pass_fds, fds = fds, []  # run() closes them once QEMU holds them
            result = qemu.run(
                argv,
                pass_fds,
                plan.qmp_socket,
                deadline(lease),
                self.now,
                grace=opts.grace,
                stdout=opts.stdout,
                on_started=started,
                watch=watch,
            )
        finally:
            for fd in fds:
                os.close(fd)
            shutil.rmtree(run_dir, ignore_errors=True)
        if result.stopped is not None and result.stopped.reason == "revoked":
            inst.forget_key_and_disk()  # again, now that QEMU has let go of them
            self.notify(f"the VM was stopped: {result.stopped.message}")
            return result
        st = inst.state()
        st.trusted_time = advance(st.trusted_time, self.now())
        inst.save_state(st)
        if result.stopped_for_deadline:
            end = deadline(watch.lease) if watch is not None else deadline(lease)
            self.notify(f"the VM was stopped: the lease of instance {inst.id} ended at {_iso(end)}")
        elif result.stopped is not None:
            self.notify(f"the VM was stopped: {result.stopped.message}")
        return result

    # --- status, remove ------------------------------------------------------------------------
    def status(self, instance_id: str | None = None) -> list[dict[str, Any]]:
        insts = [self.folder.get(instance_id)] if instance_id else list(self.folder.all())
        return [self._status(i) for i in insts]

    def _status(self, inst: Instance) -> dict[str, Any]:
        info = inst.info()
        st = inst.state()
        lease = inst.lease()
        r = lease.policy.restrictions
        now = self.now()
        return {
            "id": inst.id,
            "server": info.server,
            "entitlement": info.entitlement,
            "image": info.image,
            "version": info.version,
            "state": lease.state,
            "message": lease.message,
            "policy": {"name": lease.policy.name, **r.model_dump(mode="json")},
            "lease_until": lease.lease_until.isoformat(),
            "expires_at": lease.expires_at.isoformat() if lease.expires_at else None,
            "lease_valid": lease.state == "active" and now < deadline(lease),
            "last_checkin": st.last_checkin.isoformat() if st.last_checkin else None,
            "downloaded": st.downloaded,
            "has_disk": inst.disk.exists() and inst.key_file.exists(),
            "locked_out_until": (
                st.locked_until.isoformat() if st.locked_until and now < st.locked_until else None
            ),
            "managed": lease.manage is not None,
        }

    def remove(self, instance_id: str) -> None:
        self.folder.remove(instance_id)


class _Running:
    """A launched instance's check-ins while its VM runs (``qemu.Watch``): each renews the
    lease (moving the deadline), and a lock, a revoke or a tighter policy reaches the VM."""

    def __init__(self, client: FlexClient, inst: Instance, lease: Lease, interval: float) -> None:
        self.client = client
        self.inst = inst
        self.lease = lease
        self.interval = interval
        self.running = lease.policy.restrictions  # what the VM runs under, live changes included

    def deadline(self) -> dt.datetime:
        return deadline(self.lease)

    def check(self, qmp: qemu.Qmp) -> qemu.Stop | None:
        c = self.client
        try:
            lease = c._checkin(self.inst)
        except (BackendError, AuthError) as e:
            if isinstance(e, ForbiddenError | NotFoundError):
                return qemu.Stop(
                    "locked", f"the server refuses instance {self.inst.id}: {e.message}"
                )
            return None  # offline: the kept lease's deadline still holds
        self.lease = lease
        msg = f": {lease.message}" if lease.message else ""
        if lease.state == "revoked":
            return qemu.Stop(
                "revoked",
                f"instance {self.inst.id} was revoked by the administrator{msg}; its key and disk are deleted",
                hard=True,
            )
        if lease.state == "locked":
            return qemu.Stop(
                "locked", f"instance {self.inst.id} was locked by the administrator{msg}"
            )
        new = lease.policy.restrictions
        try:
            applied, refused = qemu.apply_live(qmp, self.running, new)
        except BackendError as e:  # QEMU refused a live change: the VM stops instead
            applied, refused = [], f"not applicable while it runs: {e.message}"
        if refused:
            return qemu.Stop(
                "policy",
                f"the policy of instance {self.inst.id} changed ({refused}): start it again to run under it",
            )
        update: dict[str, Any] = {}
        if new.network == "none":
            update["network"] = "none"
        if new.usb == "none":
            update["usb"] = "none"
        self.running = self.running.model_copy(update=update)
        for text in applied:
            c.notify(f"policy change applied to the running VM: {text}")
        return None
