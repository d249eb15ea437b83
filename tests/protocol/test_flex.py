"""The flex protocol's documents and signatures (protocol/flex.py)."""

from __future__ import annotations

import base64
import datetime as dt
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from lamina.errors import IntegrityError
from lamina.protocol.flex import (
    FlexManifest,
    FlexPolicyDoc,
    FlexRestrictions,
    Lease,
    Piece,
    Signed,
    canonical_json,
    key_id,
    lease_until,
    public_key_doc,
    sign,
    verify,
)

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _manifest() -> FlexManifest:
    return FlexManifest(
        image_id="img1",
        image_name="win",
        version=2,
        size=300,
        memory_mib=2048,
        cpus=2,
        firmware="uefi",
        pieces=[
            Piece(offset=0, length=100, blake3="a" * 64),
            Piece(offset=100, length=200, blake3="b" * 64),
        ],
    )


def _lease() -> Lease:
    policy = FlexPolicyDoc(
        name="p",
        restrictions=FlexRestrictions(usb=["hid", "storage"]),
        expires_at=None,
        lease_seconds=3600,
    )
    return Lease(
        instance_id="i1",
        user="bob",
        entitlement_id="e1",
        image_id="img1",
        version=2,
        policy=policy,
        state="active",
        message="",
        issued_at=NOW,
        lease_until=lease_until(NOW, 3600, None),
    )


def test_sign_verify_round_trip() -> None:
    key = Ed25519PrivateKey.generate()
    for doc in (_manifest(), _lease()):
        signed = sign(doc, key)
        assert signed.key_id == key_id(key.public_key())
        # through the wire: JSON, then the pinned key as the client stores it (base64)
        wire = json.loads(signed.model_dump_json())
        assert verify(wire, public_key_doc(key.public_key()).public_key, type(doc)) == doc


def test_body_is_canonical() -> None:
    body = canonical_json(_manifest())
    assert " " not in body
    assert list(json.loads(body)) == sorted(json.loads(body))


def test_tampered_body_fails() -> None:
    key = Ed25519PrivateKey.generate()
    signed = sign(_lease(), key)
    bad = signed.body.replace('"active"', '"locked"')
    assert bad != signed.body
    with pytest.raises(IntegrityError, match="does not verify"):
        verify(signed.model_copy(update={"body": bad}), key.public_key(), Lease)


def test_bad_signature_bytes_fail() -> None:
    key = Ed25519PrivateKey.generate()
    signed = sign(_manifest(), key)
    sig = bytearray(base64.b64decode(signed.sig))
    sig[0] ^= 1
    with pytest.raises(IntegrityError, match="does not verify"):
        verify(
            signed.model_copy(update={"sig": base64.b64encode(sig).decode()}),
            key.public_key(),
            FlexManifest,
        )
    with pytest.raises(IntegrityError, match="does not verify"):
        verify(signed.model_copy(update={"sig": "!!not base64"}), key.public_key(), FlexManifest)


def test_other_key_fails() -> None:
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    signed = sign(_manifest(), other)
    with pytest.raises(IntegrityError, match="pinned key"):
        verify(signed, key.public_key(), FlexManifest)
    # a forged key id does not help: the signature is checked against the pinned key
    forged = signed.model_copy(update={"key_id": key_id(key.public_key())})
    with pytest.raises(IntegrityError, match="does not verify"):
        verify(forged, key.public_key(), FlexManifest)


def test_wrong_document_type_fails() -> None:
    key = Ed25519PrivateKey.generate()
    with pytest.raises(IntegrityError, match="invalid"):
        verify(sign(_manifest(), key), key.public_key(), Lease)


def test_malformed_envelope_fails() -> None:
    key = Ed25519PrivateKey.generate()
    with pytest.raises(IntegrityError, match="malformed"):
        verify({"body": "{}"}, key.public_key(), Lease)


def test_pieces_must_tile() -> None:
    m = _manifest().model_dump()
    m["pieces"][1]["offset"] = 101
    with pytest.raises(ValidationError, match="piece 1 starts at 101"):
        FlexManifest.model_validate(m)
    m = _manifest().model_dump()
    m["size"] = 301
    with pytest.raises(ValidationError, match="cover 300 bytes"):
        FlexManifest.model_validate(m)


def test_lease_until_is_capped_by_expiry() -> None:
    assert lease_until(NOW, 60, None) == NOW + dt.timedelta(seconds=60)
    assert lease_until(NOW, 3600, NOW + dt.timedelta(seconds=10)) == NOW + dt.timedelta(seconds=10)


def test_signed_is_generic_for_schemas() -> None:
    key = Ed25519PrivateKey.generate()
    s = sign(_lease(), key)
    assert isinstance(s, Signed)
    assert Signed[Lease].model_validate(s.model_dump()).body == s.body
