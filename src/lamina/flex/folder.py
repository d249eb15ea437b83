"""The client's folder and each instance's folder in it (format version 2: ``key.json``
version 2, bound to the computer; see :mod:`.keywrap`).

::

    DIR/                                   (0700)
      instances/<instance id>/             (0700) one downloaded instance
        instance.json   InstanceInfo: server, entitlement, image, the server key it trusts
        manifest.json   Signed[FlexManifest] exactly as the server sent it
        lease.json      the last Signed[Lease] accepted (verified again at every read)
        key.json        the disk key wrapped by the user's password and this computer's
                        host key (keywrap.WrappedKey, version 2)
        state.json      LocalState: last trusted time, failed password tries, lockout
        pieces.journal  the index of each piece written and flushed, one per line
        disk.qcow2      the LUKS-encrypted qcow2 (never plaintext)
      instances/.<instance id>.new/        a download being set up; renamed when complete

Every file is 0600 and written whole (temp file, fsync, rename, fsync dir), except the
journal, which is appended and fsynced per line; a torn last line is ignored.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lamina.errors import IntegrityError, NotFoundError, UsageError
from lamina.protocol.flex import FlexManifest, Lease, Signed, verify
from lamina.store.atomic import fsync_dir, write_atomic

FOLDER_VERSION = 2
M = TypeVar("M", bound=BaseModel)
ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


class InstanceInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    v: Literal[1] = 1
    instance: str
    server: str
    server_key: str  # base64 Ed25519 public key pinned at download
    entitlement: str
    image: str
    version: int
    created: dt.datetime


class LocalState(BaseModel):
    model_config = ConfigDict(extra="forbid")

    v: Literal[1] = 1
    trusted_time: dt.datetime | None = None
    failed_tries: int = Field(0, ge=0)
    locked_until: dt.datetime | None = None
    downloaded: bool = False
    last_checkin: dt.datetime | None = None


def write_model(path: Path, model: BaseModel) -> None:
    write_atomic(path, model.model_dump_json().encode())


def read_model(path: Path, model: type[M]) -> M:
    try:
        return model.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        raise
    except ValidationError as e:
        raise IntegrityError(f"{path} is damaged: {e.errors()[0]['msg']}") from e


class Instance:
    """One instance folder. Reading the manifest or lease verifies its signature again."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.id = path.name

    @property
    def info_file(self) -> Path:
        return self.path / "instance.json"

    @property
    def disk(self) -> Path:
        return self.path / "disk.qcow2"

    @property
    def key_file(self) -> Path:
        return self.path / "key.json"

    @property
    def journal(self) -> Path:
        return self.path / "pieces.journal"

    def info(self) -> InstanceInfo:
        return read_model(self.info_file, InstanceInfo)

    def state(self) -> LocalState:
        try:
            return read_model(self.path / "state.json", LocalState)
        except FileNotFoundError:
            return LocalState()

    def save_state(self, st: LocalState) -> None:
        write_model(self.path / "state.json", st)

    def signed(self, name: str) -> Signed[Any]:
        try:
            return Signed[Any].model_validate_json((self.path / name).read_bytes())
        except ValidationError as e:
            raise IntegrityError(f"{self.path / name} is damaged: {e.errors()[0]['msg']}") from e

    def manifest(self) -> FlexManifest:
        return verify(self.signed("manifest.json"), self.info().server_key, FlexManifest)

    def lease(self) -> Lease:
        return verify(self.signed("lease.json"), self.info().server_key, Lease)

    def save_lease(self, signed: Signed[Any]) -> None:
        write_atomic(self.path / "lease.json", signed.model_dump_json().encode())

    def done_pieces(self) -> set[int]:
        try:
            text = self.journal.read_text()
        except FileNotFoundError:
            return set()
        lines = text.split("\n")
        # A line counts once its newline is written: a torn last line is ignored.
        return {int(x) for x in lines[:-1] if x.isdigit()}

    def mark_done(self, n: int) -> None:
        self.mark_done_many([n])

    def mark_done_many(self, ns: list[int]) -> None:
        """Journal pieces already flushed to the disk: one append, one fsync."""
        fd = os.open(self.journal, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, "".join(f"{n}\n" for n in ns).encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def forget_key_and_disk(self) -> None:
        """What a revoke does: the key and the disk go, the record of the revoke stays."""
        for p in (self.key_file, self.disk, self.journal):
            p.unlink(missing_ok=True)
        fsync_dir(self.path)


class ClientFolder:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.instances = root / "instances"

    def ensure(self) -> None:
        self.instances.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.root, 0o700)
        os.chmod(self.instances, 0o700)

    def check_id(self, instance_id: str) -> str:
        if not ID.match(instance_id):
            raise UsageError(f"not an instance id: {instance_id!r}")
        return instance_id

    def get(self, instance_id: str) -> Instance:
        path = self.instances / self.check_id(instance_id)
        if not (path / "instance.json").is_file():
            raise NotFoundError(
                f"no instance {instance_id} under {self.root} (see `lamina flex-client status`)"
            )
        return Instance(path)

    def staging(self, instance_id: str) -> Path:
        return self.instances / f".{self.check_id(instance_id)}.new"

    def all(self) -> Iterator[Instance]:
        if not self.instances.is_dir():
            return
        for p in sorted(self.instances.iterdir()):
            if not p.name.startswith(".") and (p / "instance.json").is_file():
                yield Instance(p)

    def remove(self, instance_id: str) -> None:
        inst = self.get(instance_id)
        shutil.rmtree(inst.path)

    def partial_for(self, server: str, entitlement: str) -> Instance | None:
        """A download of this entitlement from this server that did not finish."""
        for inst in self.all():
            info = inst.info()
            same = info.server == server and info.entitlement == entitlement
            if same and not inst.state().downloaded:
                return inst
        return None
