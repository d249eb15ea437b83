"""The flex protocol: what the server hands a laptop that runs an image offline.

Version 1. The server signs the two documents the laptop trusts while offline,
the image manifest and the lease, with an Ed25519 key of its own; the laptop
pins that key on first use and checks every document against it.

A signed document on the wire::

    {"body": "<canonical JSON of the document>",   # sorted keys, no spaces, ASCII
     "sig": "<base64 Ed25519 signature over the UTF-8 bytes of body>",
     "key_id": "<hex SHA-256 of the raw public key, first 32 digits>"}

The body is kept as the exact string that was signed, so the laptop verifies
the bytes it received and never re-encodes before checking.

A manifest's pieces tile the raw disk ``[0, size)`` in order, without gap or
overlap; each piece names the plain BLAKE3 of its plaintext (not the store's
keyed chunk id), so a client checks what it downloads without the store key.

A lease's ``lease_until`` is ``min(issued_at + lease_seconds, expires_at)``: past
it, the laptop must check in before it runs the image again.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
from typing import Any, Generic, Literal, TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lamina.errors import IntegrityError, UsageError

#: Version of the manifest and lease documents.
FLEX_VERSION = 1

#: Bounds a client checks before it believes a manifest (a signed one may still come from a bug).
MAX_IMAGE_SIZE = 1 << 44  # 16 TiB
MAX_PIECES = 1 << 24
MAX_PIECE_LENGTH = 64 << 20

UsbClass = Literal["hid", "storage", "audio", "video", "printer", "comm", "smartcard"]
USB_CLASSES: tuple[str, ...] = ("hid", "storage", "audio", "video", "printer", "comm", "smartcard")
InstanceState = Literal["active", "locked", "revoked"]
NAME = r"^[A-Za-z0-9_][A-Za-z0-9_.@-]{0,127}$"
#: What a laptop may call itself (same rule as a device's hostname).
CLIENT_NAME = r"^[A-Za-z0-9_]([A-Za-z0-9_.-]{0,253}[A-Za-z0-9_])?$"
HEX64 = r"^[0-9a-f]{64}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Doc(BaseModel):
    """A document the server sends: unknown fields are ignored, so a field added later does not break
    an older client (a change that must break it bumps ``v``)."""

    model_config = ConfigDict(extra="ignore")


# --- policy -------------------------------------------------------------------------
class FlexRestrictions(_Doc):
    """What the laptop's VM may do. The laptop's owner is root: these stop accidents, not attacks."""

    clipboard: bool = False
    drag_drop: bool = False
    usb: Literal["none", "all"] | list[UsbClass] = "none"
    shared_folder: Literal["off", "ro", "rw"] = "off"
    network: Literal["none", "nat"] = "nat"
    message: str = Field("", max_length=4096, description='Shown to the user at start; "" = none.')
    max_password_tries: int = Field(3, ge=1, le=100)
    lockout_seconds: int = Field(900, ge=0, le=366 * 86400)


class FlexPolicyDoc(_Doc):
    """A policy as the laptop sees it."""

    name: str
    restrictions: FlexRestrictions
    expires_at: dt.datetime | None = None
    lease_seconds: int = Field(ge=60, le=366 * 86400)


# --- manifest -------------------------------------------------------------------------
class Piece(_Doc):
    offset: int = Field(ge=0)
    length: int = Field(ge=1, le=MAX_PIECE_LENGTH)
    blake3: str = Field(pattern=HEX64, description="Plain BLAKE3 of the plaintext piece, hex.")


class FlexManifest(_Doc):
    """One version of an image: its size, VM settings and the pieces of its raw disk."""

    v: Literal[1] = 1
    image_id: str
    image_name: str
    version: int = Field(ge=1)
    size: int = Field(ge=0, le=MAX_IMAGE_SIZE, description="Bytes of the raw disk.")
    memory_mib: int = Field(ge=16, le=4 << 20)
    cpus: int = Field(ge=1, le=1024)
    firmware: Literal["bios", "uefi"]
    pieces: list[Piece] = Field(max_length=MAX_PIECES)

    @model_validator(mode="after")
    def _tiles(self) -> FlexManifest:
        at = 0
        for n, p in enumerate(self.pieces):
            if p.offset != at:
                raise ValueError(f"piece {n} starts at {p.offset}, expected {at}")
            at += p.length
        if at != self.size:
            raise ValueError(f"pieces cover {at} bytes, expected the image size {self.size}")
        return self


# --- lease ------------------------------------------------------------------------------
class ManageInfo(_Doc):
    """How a managed guest enrolls: a one-use enrollment token bound to this instance."""

    server_url: str
    token: str
    expires_at: dt.datetime | None = None


class Lease(_Doc):
    """The server's word on an instance, valid until ``lease_until``."""

    v: Literal[1] = 1
    instance_id: str
    user: str
    entitlement_id: str
    image_id: str
    version: int = Field(ge=1)
    policy: FlexPolicyDoc = Field(
        description="The effective policy: the instance's override, else the entitlement's."
    )
    state: InstanceState
    message: str = Field("", max_length=4096)
    issued_at: dt.datetime
    lease_until: dt.datetime
    expires_at: dt.datetime | None = None
    manage: ManageInfo | None = None


def lease_until(
    issued_at: dt.datetime, lease_seconds: int, expires_at: dt.datetime | None
) -> dt.datetime:
    """``min(issued_at + lease_seconds, expires_at)``."""
    end = issued_at + dt.timedelta(seconds=lease_seconds)
    return end if expires_at is None else min(end, expires_at)


# --- signatures ------------------------------------------------------------------------------
T = TypeVar("T", bound=BaseModel)


class Signed(BaseModel, Generic[T]):
    """A document of type ``T`` as the server signed it (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    body: str = Field(max_length=256 << 20)
    sig: str = Field(max_length=256)
    key_id: str = Field(max_length=128)


class FlexKeyPublic(BaseModel):
    """``GET /api/v1/flex/key``: the server's signing key, raw Ed25519, base64."""

    key_id: str
    public_key: str


def canonical_json(model: BaseModel) -> str:
    """The bytes a signature covers: JSON with sorted keys, no spaces, ASCII only."""
    return json.dumps(
        model.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=True
    )


def raw_public_key(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def key_id(key: Ed25519PublicKey) -> str:
    """The name of a signing key: the first 32 hex digits of SHA-256 over its raw 32 bytes."""
    return hashlib.sha256(raw_public_key(key)).hexdigest()[:32]


def public_key_doc(key: Ed25519PublicKey) -> FlexKeyPublic:
    return FlexKeyPublic(
        key_id=key_id(key), public_key=base64.b64encode(raw_public_key(key)).decode()
    )


def load_public_key(public_key: str | bytes) -> Ed25519PublicKey:
    """A public key from its raw bytes or their base64; ``UsageError`` if it is not one."""
    try:
        raw = (
            base64.b64decode(public_key, validate=True)
            if isinstance(public_key, str)
            else public_key
        )
        return Ed25519PublicKey.from_public_bytes(raw)
    except (binascii.Error, ValueError) as e:
        raise UsageError("not an Ed25519 public key (expected 32 raw bytes, base64)") from e


def sign(model: T, private_key: Ed25519PrivateKey) -> Signed[T]:
    """Sign ``model``'s canonical JSON (server side)."""
    body = canonical_json(model)
    sig = private_key.sign(body.encode("utf-8"))
    return Signed(
        body=body, sig=base64.b64encode(sig).decode(), key_id=key_id(private_key.public_key())
    )


def verify(
    signed: Signed[Any] | dict[str, Any],
    public_key: Ed25519PublicKey | str | bytes,
    model_type: type[T],
) -> T:
    """The document inside ``signed`` if the pinned ``public_key`` signed it (client side).

    Raises ``IntegrityError`` when the key id differs from the pinned key's, the signature does not
    verify, or the signed body is not a valid ``model_type``.
    """
    key = public_key if isinstance(public_key, Ed25519PublicKey) else load_public_key(public_key)
    try:
        doc = signed if isinstance(signed, Signed) else Signed[Any].model_validate(signed)
    except ValidationError as e:
        raise IntegrityError(
            f"a signed {model_type.__name__} is malformed: {e.errors()[0]['msg']}"
        ) from e
    expected = key_id(key)
    if doc.key_id != expected:
        raise IntegrityError(
            f"the {model_type.__name__} is signed by key {doc.key_id[:16]}, expected the pinned key {expected[:16]}"
        )
    try:
        sig = base64.b64decode(doc.sig, validate=True)
        key.verify(sig, doc.body.encode("utf-8"))
    except (binascii.Error, ValueError, InvalidSignature) as e:
        raise IntegrityError(
            f"the server's signature on the {model_type.__name__} does not verify"
        ) from e
    try:
        return model_type.model_validate_json(doc.body)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise IntegrityError(
            f"the signed {model_type.__name__} is invalid: {where}: {err['msg']}"
        ) from e


# --- client-facing requests and responses ---------------------------------------------------------
class FlexEntitlementMine(BaseModel):
    """``GET /api/v1/flex/my/entitlements``: one image the caller may run."""

    id: str
    name: str
    image: str
    version: int
    policy: FlexPolicyDoc


class FlexInstanceCreate(_Strict):
    """``POST /api/v1/flex/my/instances``."""

    entitlement: str = Field(min_length=1, max_length=128)
    client: str = Field(min_length=1, max_length=255, pattern=CLIENT_NAME)


class FlexInstanceCreated(BaseModel):
    instance: str
    manifest: Signed[FlexManifest]
    lease: Signed[Lease]


class FlexCheckin(_Strict):
    """``POST /api/v1/flex/my/instances/{id}/checkin``."""

    client_time: dt.datetime


class FlexInstanceMine(BaseModel):
    """``GET /api/v1/flex/my/instances``: one of the caller's instances."""

    id: str
    entitlement: str
    image: str
    version: int
    state: InstanceState
    client: str
    created: dt.datetime
    last_checkin: dt.datetime | None


# --- admin requests (the CLI and the API) ----------------------------------------------------------
class FlexPolicyCreate(_Strict):
    """``POST /api/v1/flex/policies``. Expiry is a date, or a duration from each instance's creation."""

    name: str = Field(pattern=NAME)
    restrictions: dict[str, Any] = Field(
        default_factory=dict, description="FlexRestrictions fields."
    )
    expires_at: dt.datetime | None = None
    valid_for: int | None = Field(None, ge=60, le=20 * 366 * 86400)
    lease_seconds: int = Field(7 * 86400, ge=60, le=366 * 86400)


class FlexPolicyUpdate(_Strict):
    """``PUT /api/v1/flex/policies/{name}``: what is given changes; ``no_expiry`` clears expiry."""

    restrictions: dict[str, Any] = Field(default_factory=dict)
    expires_at: dt.datetime | None = None
    valid_for: int | None = Field(None, ge=60, le=20 * 366 * 86400)
    no_expiry: bool = False
    lease_seconds: int | None = Field(None, ge=60, le=366 * 86400)


class FlexEntitle(_Strict):
    """``POST /api/v1/flex/entitlements``: ``image`` is ``NAME[:VERSION]`` (latest when omitted)."""

    name: str = Field(pattern=NAME)
    image: str = Field(min_length=1, max_length=140)
    policy: str = Field(min_length=1, max_length=128)
    users: list[str] = Field(default_factory=list, max_length=1000)
    groups: list[str] = Field(default_factory=list, max_length=1000)
    manage: bool = False
    cvd_policy: str | None = None
    base: str | None = None
    apps: list[str] = Field(default_factory=list, max_length=100)


class FlexEntitlementUpdate(_Strict):
    """``PUT /api/v1/flex/entitlements/{name}``: given fields replace (users/groups: the lists)."""

    image: str | None = Field(None, min_length=1, max_length=140)
    policy: str | None = None
    users: list[str] | None = Field(None, max_length=1000)
    groups: list[str] | None = Field(None, max_length=1000)


class FlexInstanceAction(_Strict):
    """Lock, unlock or revoke an instance, with a message for its user."""

    message: str = Field("", max_length=4096)


class FlexSetPolicy(_Strict):
    """Override an instance's policy (``null``: back to the entitlement's)."""

    policy: str | None = None


class GroupCreate(_Strict):
    name: str = Field(pattern=NAME)
    members: list[str] = Field(default_factory=list, max_length=10000)


class GroupMembers(_Strict):
    members: list[str] = Field(min_length=1, max_length=10000)


class GroupPublic(BaseModel):
    """A group of users (``lamina group list/show/create``), its members by name."""

    id: str
    name: str
    members: list[str]
    created: dt.datetime


class FlexPolicyPublic(BaseModel):
    """A flex restriction policy (``lamina flex policy list/show/create/update``)."""

    id: str
    name: str
    restrictions: dict[str, Any]
    expires_at: dt.datetime | None
    valid_for: int | None
    lease_seconds: int
    created: dt.datetime
    updated: dt.datetime


class FlexInstancePublic(BaseModel):
    """A flex instance as an administrator sees it (``lamina flex instance list/show/lock``)."""

    id: str
    user: str
    entitlement: str
    image: str
    version: int
    #: the policy in force: the instance's own when ``policy_override``, else its entitlement's
    policy: str | None
    policy_override: bool
    state: str
    message: str
    last_checkin: dt.datetime | None
    client: str
    created: dt.datetime
    device: str | None


class FlexRegisterUrl(_Strict):
    """``POST /api/v1/flex/images/{name}/url``: the server fetches the image and checks its digest."""

    url: str = Field(min_length=8, max_length=4096)
    sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$")
    memory_mib: int = Field(1024, ge=16, le=4 << 20)
    cpus: int = Field(1, ge=1, le=1024)
    firmware: Literal["bios", "uefi"] = "bios"


class FlexImageVersionPublic(BaseModel):
    version: int
    #: Bytes of the raw disk.
    size: int
    memory_mib: int
    cpus: int
    firmware: str
    #: How many pieces its manifest has.
    pieces: int
    snapshot: str
    created: dt.datetime
    #: Bytes this version added to the store (None for a version registered before it was kept).
    new_bytes: int | None


class FlexImagePublic(BaseModel):
    """A flex image with its versions (``lamina flex image list/show/register``)."""

    id: str
    name: str
    created: dt.datetime
    versions: list[FlexImageVersionPublic]


class FlexEntitlementPublic(BaseModel):
    """An entitlement as an administrator sees it (``lamina flex entitlement list/show``)."""

    id: str
    name: str
    image: str | None
    #: The pinned image version, or None for the latest at each instance's creation.
    version: int | None
    policy: str | None
    users: list[str]
    groups: list[str]
    #: Its instances' guests enroll as managed devices, under ``cvd_policy``.
    manage: bool
    cvd_policy: str | None
    base: str | None
    apps: list[str]
    created: dt.datetime
