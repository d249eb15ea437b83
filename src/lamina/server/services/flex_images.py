"""Flex images: a disk (qcow2, raw, vmdk) checked and converted to raw with ``qemu-img``,
stored as a one-file snapshot (source ``flex:<image id>``) so versions deduplicate
against each other and against CVDs; its manifest's pieces are the store's chunks.

Every uploaded or fetched disk is hostile: ``qemu-img info`` must show no backing file,
no external data file and no extent outside the file itself before it is converted
(a qcow2 naming ``/etc/shadow`` as its backing file would otherwise be read).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TypedDict

import blake3
import sqlalchemy.exc
from sqlalchemy import Connection, Engine, delete, insert, select

from lamina import processes
from lamina.db.engine import read_tx, write_tx
from lamina.db.models import flex_entitlements, flex_image_versions, flex_images
from lamina.errors import (
    BackendError,
    ConflictError,
    IntegrityError,
    NotFoundError,
    TooLargeError,
    UsageError,
)
from lamina.protocol.flex import (
    MAX_IMAGE_SIZE,
    NAME,
    FlexImagePublic,
    FlexImageVersionPublic,
    FlexManifest,
    FlexRegisterUrl,
    Piece,
)
from lamina.server.security import Principal
from lamina.server.services.common import audit, find_one, from_row, insert_version, new_id, now
from lamina.server.services.flex_policies import entitlement_naming
from lamina.server.services.rows import FlexImage, FlexImageVersion, PieceRow
from lamina.store import blob
from lamina.store.blob import BlobKind
from lamina.store.catalog import SnapshotRecord
from lamina.store.chunker import Chunker
from lamina.store.repository import Store
from lamina.tree.backup import walk_blobs
from lamina.tree.extents import chunk_fd
from lamina.tree.model import Entry, encode_tree

FORMATS = ("raw", "qcow2", "vmdk")
FIRMWARES = ("bios", "uefi")
DISK_NAME = b"disk.raw"
#: A hole in the raw disk is served as zero pieces of at most this many bytes.
ZERO_PIECE = 4 * 1024 * 1024
QEMU_IMG_TIMEOUT = 3600


class DiskInfo(TypedDict):
    """What ``qemu-img info`` says of a disk that passed the checks."""

    format: str
    virtual_size: int


def snapshot_source(image_id: str) -> str:
    return f"flex:{image_id}"


# --- checking and converting a disk ---------------------------------------------------
def _qemu_img(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("qemu-img")
    if exe is None:
        raise BackendError("qemu-img is not installed on the server (apt-get install qemu-utils)")
    try:
        return subprocess.run(  # a fixed program; no shell parses the arguments
            [exe, *args],
            capture_output=True,
            text=True,
            timeout=QEMU_IMG_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise BackendError(f"qemu-img {args[0]} took longer than {QEMU_IMG_TIMEOUT} s") from e


def inspect_disk(path: Path) -> DiskInfo:
    """``qemu-img info`` of a disk we are about to read, refusing anything that names another
    file. Returns ``{"format", "virtual_size"}``."""
    # A file name qemu would parse (json:, nbd:, ...) is never passed: always an absolute path.
    r = _qemu_img("info", "--output=json", "--", str(path.resolve()))
    if r.returncode != 0:
        raise UsageError(f"not a disk image qemu-img can read: {_first_line(r.stderr)}")
    try:
        info = json.loads(r.stdout)
    except ValueError as e:
        raise IntegrityError("qemu-img info printed something that is not JSON") from e
    fmt = info.get("format")
    if fmt not in FORMATS:
        raise UsageError(f"disk format {fmt!r} is not accepted: use one of {', '.join(FORMATS)}")
    if info.get("backing-filename") or info.get("full-backing-filename"):
        raise UsageError("the disk has a backing file: flatten it first (qemu-img convert)")
    spec = (info.get("format-specific") or {}).get("data") or {}
    if spec.get("data-file"):
        raise UsageError("the qcow2 disk has an external data file: flatten it first")
    for ext in spec.get("extents") or []:
        if Path(str(ext.get("filename", ""))).resolve() != path.resolve():
            raise UsageError("the vmdk disk has extents in other files: use a monolithic vmdk")
    size = int(info.get("virtual-size", -1))
    if size == 0:
        raise UsageError("the disk is empty")
    if not 0 <= size <= MAX_IMAGE_SIZE:
        raise TooLargeError(f"a disk of {size} bytes is above the {MAX_IMAGE_SIZE}-byte limit")
    return DiskInfo(format=fmt, virtual_size=size)


def to_raw(path: Path, fmt: str, dest: Path) -> None:
    """Convert ``path`` (of format ``fmt``, already inspected) to a sparse raw file ``dest``."""
    r = _qemu_img("convert", "-f", fmt, "-O", "raw", "--", str(path.resolve()), str(dest))
    if r.returncode != 0:
        raise UsageError(f"qemu-img cannot convert the disk: {_first_line(r.stderr)}")


def _first_line(text: str) -> str:
    return (text.strip().splitlines() or ["(no message)"])[-1][:300]


# --- storing a raw disk ---------------------------------------------------------------
def _zero_pieces(offset: int, length: int) -> list[PieceRow]:
    out: list[PieceRow] = []
    while length > 0:
        n = min(length, ZERO_PIECE)
        out.append((offset, n, _zeros_hash(n), None))
        offset += n
        length -= n
    return out


_ZEROS: dict[int, str] = {}


def _zeros_hash(n: int) -> str:
    h = _ZEROS.get(n)
    if h is None:
        h = _ZEROS[n] = blake3.blake3(bytes(n)).hexdigest()
    return h


def store_raw(store: Store, image_id: str, raw: Path) -> tuple[SnapshotRecord, list[PieceRow], int]:
    """Chunk ``raw`` into the store as a one-file snapshot. Returns the snapshot, the pieces
    (``[offset, length, plain blake3, blob id hex | None]``) and the bytes newly stored."""
    with store.writer() as w, open(raw, "rb") as f:
        st = os.fstat(f.fileno())
        plain: list[tuple[int, str]] = []
        pending: list[tuple[bytes, bytes]] = []

        def settle() -> None:
            need = w.need({bid for bid, _ in pending})
            for bid, data in pending:
                if bid in need:
                    need.discard(bid)
                    w.put_chunk(BlobKind.DATA, bid, data)
            pending.clear()

        def add(data: memoryview | bytes) -> bytes:
            b = bytes(data)
            bid = blob.blob_id(w.chunking.id_key, b)
            plain.append((len(b), blake3.blake3(b).hexdigest()))
            pending.append((bid, b))
            if len(pending) >= 64:
                settle()
            return bid

        content = chunk_fd(f.fileno(), st, Chunker(w.chunking), add)
        settle()
        pieces: list[PieceRow] = []
        at = 0
        hashes = iter(plain)
        for c in content:
            if isinstance(c, int):
                pieces.extend(_zero_pieces(at, c))
                at += c
            else:
                length, h = next(hashes)
                pieces.append((at, length, h, c.hex()))
                at += length
        entry = Entry(name=DISK_NAME, type="file", mode=0o600, size=st.st_size, content=content)
        root = w.put(BlobKind.TREE, encode_tree([entry]))
        record = SnapshotRecord(
            id="",
            time=now(),
            source=snapshot_source(image_id),
            root=root,
            files=1,
            bytes=st.st_size,
            meta={"flex_image": image_id},
        )
        record = w.commit_snapshot(record, lambda r: walk_blobs(store, r))
        return record, pieces, w.new_raw_bytes


# --- registering ------------------------------------------------------------------------
def _check_settings(memory_mib: int, cpus: int, firmware: str) -> None:
    if not 16 <= memory_mib <= 4 << 20:
        raise UsageError(f"memory must be between 16 and {4 << 20} MiB, not {memory_mib}")
    if not 1 <= cpus <= 1024:
        raise UsageError(f"cpus must be between 1 and 1024, not {cpus}")
    if firmware not in FIRMWARES:
        raise UsageError(f"firmware must be bios or uefi, not {firmware!r}")


def _check_name(name: str) -> None:
    if not re.match(NAME, name):
        raise UsageError(f"invalid image name {name!r}: letters, digits and _ . @ - only")


#: This process's folder for uploads and fetches, per data folder (``tmp_dir``), and the
#: open ``owner`` file whose lock says the process is alive.
_TMP: dict[Path, tuple[Path, int]] = {}
#: A folder without an ``owner`` (a process stopped while making it), or a loose file of
#: the layout before session 24, is removed once this old.
OLD_TMP_SECONDS = 86400


def tmp_dir(data: Path) -> Path:
    """This process's folder under ``DATA/flex-tmp`` for the disks it receives (an
    upload, a fetch, a raw copy), made on first use. Its ``owner`` file names the process
    (``processes.identity``, for a reader) and stays locked (``flock``) while the process
    lives: what a server killed mid-upload leaves is removed when the next one starts
    (``sweep_tmp``), a live process's never, whatever container or pid namespace either
    runs in."""
    held = _TMP.get(data)
    if held is not None and held[0].is_dir():
        return held[0]
    base = data / "flex-tmp"
    base.mkdir(parents=True, exist_ok=True, mode=0o700)
    d = base / secrets.token_hex(8)
    d.mkdir(mode=0o700)
    fd = os.open(d / "owner", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, processes.identity().encode())
    _TMP[data] = (d, fd)
    return d


def sweep_tmp(data: Path) -> int:
    """Remove what stopped processes left under ``DATA/flex-tmp`` (a multi-GB upload
    killed midway would stay there for ever, on the disk the packs live on): the folders
    whose ``owner`` no process holds locked, folders without one and loose files of the
    old layout once a day old. Returns how many entries went."""
    base = data / "flex-tmp"
    if not base.is_dir():
        return 0
    gone = 0
    for entry in base.iterdir():
        try:
            if entry.is_dir() and not entry.is_symlink():
                if _abandoned(entry):
                    shutil.rmtree(entry)
                    gone += 1
            elif time.time() - entry.lstat().st_mtime > OLD_TMP_SECONDS:
                entry.unlink()
                gone += 1
        except OSError:
            continue  # (another process at it, or not ours to remove: left)
    return gone


def _abandoned(folder: Path) -> bool:
    """Whether no process holds ``folder``'s ``owner`` locked (one without an owner:
    once a day old)."""
    try:
        fd = os.open(folder / "owner", os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return time.time() - folder.lstat().st_mtime > OLD_TMP_SECONDS
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False  # its process lives
    finally:
        os.close(fd)  # (and with it the lock just taken)
    return True


def register(
    engine: Engine,
    store: Store,
    actor: Principal,
    name: str,
    disk: Path,
    work: Path,
    memory_mib: int = 1024,
    cpus: int = 1,
    firmware: str = "bios",
    source: dict[str, str] | None = None,
) -> FlexImagePublic:
    """Register ``disk`` as the next version of image ``name`` (created if new).

    ``work`` is a private folder for the raw copy (removed here). The store holds the
    data before any row names it; a crash leaves at most unreferenced chunks for gc.
    """
    actor.require("flex.admin")
    _check_name(name)
    _check_settings(memory_mib, cpus, firmware)
    info = inspect_disk(disk)
    with write_tx(engine) as c:
        img = c.execute(select(flex_images).where(flex_images.c.name == name)).first()
        if img is None:
            image_id = new_id()
            c.execute(insert(flex_images).values(id=image_id, name=name, created=now()))
            audit(c, actor.name, "flex.image.create", image_id, name=name)
        else:
            image_id = img.id
    raw = work / f"{secrets.token_hex(8)}.raw"
    try:
        if info["format"] == "raw":
            record, pieces, new_bytes = store_raw(store, image_id, disk)
        else:
            to_raw(disk, info["format"], raw)
            record, pieces, new_bytes = store_raw(store, image_id, raw)
    finally:
        raw.unlink(missing_ok=True)
    try:
        return _add_version(
            engine,
            actor,
            name,
            image_id,
            record,
            pieces,
            new_bytes,
            info,
            memory_mib,
            cpus,
            firmware,
            source,
        )
    except sqlalchemy.exc.IntegrityError as e:  # the same image registered at the same time
        raise ConflictError(f"image {name} got another version meanwhile: register again") from e


def _add_version(
    engine: Engine,
    actor: Principal,
    name: str,
    image_id: str,
    record: SnapshotRecord,
    pieces: list[PieceRow],
    new_bytes: int,
    info: DiskInfo,
    memory_mib: int,
    cpus: int,
    firmware: str,
    source: dict[str, str] | None,
) -> FlexImagePublic:
    with write_tx(engine) as c:
        version = insert_version(
            c,
            flex_image_versions,
            "image_id",
            image_id,
            size=record.bytes,
            memory_mib=memory_mib,
            cpus=cpus,
            firmware=firmware,
            snapshot_id=record.id,
            pieces=pieces,
            source={**(source or {}), "format": info["format"], "new_bytes": new_bytes},
        )
        audit(
            c,
            actor.name,
            "flex.image.register",
            image_id,
            name=name,
            version=version,
            size=record.bytes,
            new_bytes=new_bytes,
            **(source or {}),
        )
        return _image_public(c, find_image(c, image_id))


async def spool(stream: AsyncIterator[bytes], dest: Path, limit: int = MAX_IMAGE_SIZE) -> str:
    """Write an uploaded body to ``dest`` (0600), refusing more than ``limit`` bytes;
    returns its SHA-256. Memory holds one network read at a time."""
    h = hashlib.sha256()
    size = 0
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        async for part in stream:
            size += len(part)
            if size > limit:
                raise TooLargeError(f"the image is above the {limit}-byte limit")
            h.update(part)
            f.write(part)
    return h.hexdigest()


def register_url(
    engine: Engine, store: Store, actor: Principal, data: Path, name: str, req: FlexRegisterUrl
) -> FlexImagePublic:
    """Register an image the server fetches by URL and checks against its SHA-256 (for
    images too large to upload); the fetched file is removed whatever happens."""
    actor.require("flex.admin")
    work = tmp_dir(data)
    disk = work / f"{secrets.token_hex(8)}.fetch"
    try:
        fetch(req.url, req.sha256, disk)
        return register(
            engine,
            store,
            actor,
            name,
            disk,
            work,
            req.memory_mib,
            req.cpus,
            req.firmware,
            {"kind": "url", "url": req.url, "sha256": req.sha256.lower()},
        )
    finally:
        disk.unlink(missing_ok=True)


def fetch(url: str, sha256: str, dest: Path, limit: int = MAX_IMAGE_SIZE) -> None:
    """Download ``url`` to ``dest`` and check its SHA-256 (the server fetches big images itself)."""
    import httpx

    if not url.startswith(("https://", "http://")):
        raise UsageError("the image URL must be http:// or https://")
    if len(sha256) != 64 or any(ch not in "0123456789abcdef" for ch in sha256.lower()):
        raise UsageError("--sha256 must be 64 hex digits")
    h = hashlib.sha256()
    size = 0
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        timeout = httpx.Timeout(60, connect=10)
        with os.fdopen(fd, "wb") as f, httpx.stream("GET", url, timeout=timeout) as r:
            if r.status_code != 200:
                raise UsageError(f"fetching {url} answered HTTP {r.status_code}")
            for part in r.iter_bytes(1 << 20):
                size += len(part)
                if size > limit:
                    raise TooLargeError(f"the image at {url} is above the {limit}-byte limit")
                h.update(part)
                f.write(part)
    except (httpx.HTTPError, httpx.InvalidURL) as e:  # the URL given is unusable: a bad request
        raise UsageError(f"cannot fetch {url}: {e}") from e
    if h.hexdigest() != sha256.lower():
        raise IntegrityError(
            f"the image at {url} has SHA-256 {h.hexdigest()}, expected {sha256.lower()}"
        )


# --- reading -------------------------------------------------------------------------------
def find_image(c: Connection, ref: str) -> FlexImage:
    return find_one(c, flex_images, ref, "name", "flex image")


def find_version(c: Connection, image: FlexImage, version: int | None) -> FlexImageVersion:
    q = select(flex_image_versions).where(flex_image_versions.c.image_id == image.id)
    if version is not None:
        q = q.where(flex_image_versions.c.version == version)
    row = c.execute(q.order_by(flex_image_versions.c.version.desc()).limit(1)).first()
    if row is None:
        raise NotFoundError(f"flex image {image.name} has no version {version or '(any)'}")
    return row


def _version_public(v: FlexImageVersion) -> FlexImageVersionPublic:
    return from_row(
        FlexImageVersionPublic,
        v,
        pieces=len(v.pieces),
        snapshot=v.snapshot_id,
        new_bytes=(v.source or {}).get("new_bytes"),
    )


def _image_public(
    c: Connection, img: FlexImage, versions: list[FlexImageVersion] | None = None
) -> FlexImagePublic:
    if versions is None:
        versions = list(
            c.execute(
                select(flex_image_versions)
                .where(flex_image_versions.c.image_id == img.id)
                .order_by(flex_image_versions.c.version)
            )
        )
    return from_row(FlexImagePublic, img, versions=[_version_public(v) for v in versions])


def list_images(engine: Engine, actor: Principal) -> list[FlexImagePublic]:
    actor.require("read")
    with read_tx(engine) as c:
        imgs: list[FlexImage] = list(c.execute(select(flex_images).order_by(flex_images.c.name)))
        by: dict[str, list[FlexImageVersion]] = {i.id: [] for i in imgs}
        for v in c.execute(select(flex_image_versions).order_by(flex_image_versions.c.version)):
            by.setdefault(v.image_id, []).append(v)
        return [_image_public(c, i, by[i.id]) for i in imgs]


def show_image(engine: Engine, actor: Principal, ref: str) -> FlexImagePublic:
    actor.require("read")
    with read_tx(engine) as c:
        return _image_public(c, find_image(c, ref))


def delete_image(engine: Engine, store: Store, actor: Principal, ref: str) -> None:
    """Delete an image no entitlement names; its data goes at the next gc."""
    actor.require("flex.admin")
    with write_tx(engine) as c:
        img = find_image(c, ref)
        used = entitlement_naming(c, flex_entitlements.c.image_id, img.id)
        if used:
            raise ConflictError(f"flex image {img.name} is entitled by {used}: delete that first")
        snaps = [
            r.snapshot_id
            for r in c.execute(
                select(flex_image_versions.c.snapshot_id).where(
                    flex_image_versions.c.image_id == img.id
                )
            )
        ]
        c.execute(delete(flex_image_versions).where(flex_image_versions.c.image_id == img.id))
        c.execute(delete(flex_images).where(flex_images.c.id == img.id))
        audit(c, actor.name, "flex.image.delete", img.id, name=img.name, versions=len(snaps))
    store.forget(snaps)


def manifest(img: FlexImage, v: FlexImageVersion) -> FlexManifest:
    return FlexManifest(
        image_id=img.id,
        image_name=img.name,
        version=v.version,
        size=v.size,
        memory_mib=v.memory_mib,
        cpus=v.cpus,
        firmware=v.firmware,
        pieces=[Piece(offset=p[0], length=p[1], blake3=p[2]) for p in v.pieces],
    )


def piece_bytes(store: Store, v: FlexImageVersion, n: int) -> bytes:
    """The plaintext of piece ``n`` of version row ``v`` (checked against its plain BLAKE3)."""
    if not 0 <= n < len(v.pieces):
        raise NotFoundError(f"no piece {n} (the image has {len(v.pieces)})")
    _off, length, h, bid = v.pieces[n]
    data = bytes(length) if bid is None else store.get(bytes.fromhex(bid))
    if len(data) != length or blake3.blake3(data).hexdigest() != h:
        raise IntegrityError(f"piece {n} of the image does not match its manifest")
    return data
