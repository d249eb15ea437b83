"""Pack files: immutable bundles of sealed blobs with their own encrypted header.

Pack file, format version 1::

    +-----------------------------------------------+
    | sealed blob 0 | sealed blob 1 | ... | blob n-1 |   blobs, back to back
    +-----------------------------------------------+
    | sealed header                                 |   nonce(12) || AES-256-GCM(data key,
    |                                               |     msgpack [[kind, id, offset, length, raw_length], ...],
    |                                               |     aad = b"lamina pack header v1")
    +-----------------------------------------------+
    | footer: magic "LMPK" | version u8 | 3 zero bytes | header length u32 LE |   12 bytes
    +-----------------------------------------------+

A pack's name is the hex BLAKE3-256 (unkeyed) of its whole content; it is
stored as ``packs/<first two hex digits>/<name>``. Because the header lists every
blob, the chunk index can be rebuilt from the packs alone.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import NamedTuple

import blake3
import msgpack
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from lamina.errors import IntegrityError
from lamina.store.blob import ID_SIZE, BlobKind

PACK_VERSION = 1
MAGIC = b"LMPK"
FOOTER = struct.Struct("<4sB3xI")
HEADER_AAD = b"lamina pack header v1"
HEADER_NONCE = 12
#: A header larger than this is refused before it is read (a hostile length field).
MAX_HEADER = 64 * 1024 * 1024
PACK_PREFIX = "packs/"
DEFAULT_PACK_SIZE = 16 * 1024 * 1024
#: A pack under this fraction of its store's pack size is small (rolled, repacked by gc).
SMALL_FRACTION = 0.5


class PackEntry(NamedTuple):
    kind: BlobKind
    id: bytes
    offset: int
    length: int
    raw_length: int


def pack_object_name(pack: str) -> str:
    return f"{PACK_PREFIX}{pack[:2]}/{pack}"


def pack_name_from_object(name: str) -> str | None:
    """The pack name of an object name, or None if it is not a pack object."""
    if not name.startswith(PACK_PREFIX):
        return None
    base = name.rsplit("/", 1)[-1]
    if len(base) != 64 or any(c not in "0123456789abcdef" for c in base):
        return None
    return base


@dataclass
class FinishedPack:
    name: str
    data: bytes
    entries: list[PackEntry]


class PackWriter:
    """Accumulates sealed blobs; ``finish`` returns the pack bytes and entries.

    The blobs are kept as they came and joined once, at ``finish``: growing one buffer
    blob by blob (reallocated as it grew, then copied out) cost more than sealing them
    (1.2-1.4 s of CPU per GiB of 1 MiB blobs, docs/design.md, session 11). What is added
    must not change until then: bytes, never a view of a buffer that could."""

    def __init__(self, data_key: bytes) -> None:
        self._data_key = data_key
        self._parts: list[bytes] = []
        self._size = 0
        self.entries: list[PackEntry] = []

    def __len__(self) -> int:
        return self._size

    @property
    def count(self) -> int:
        return len(self.entries)

    def add(self, kind: BlobKind, bid: bytes, sealed: bytes, raw_length: int) -> None:
        self.add_parts(kind, bid, (sealed,), raw_length)

    def add_parts(
        self, kind: BlobKind, bid: bytes, parts: tuple[bytes, ...], raw_length: int
    ) -> int:
        """Add a sealed blob given as parts written back to back (``blob.seal_parts``);
        return its length."""
        length = sum(map(len, parts))
        self.entries.append(PackEntry(kind, bid, self._size, length, raw_length))
        self._parts += parts
        self._size += length
        return length

    def finish(self, nonce: bytes = b"") -> FinishedPack:
        """``nonce`` of the header: random when empty (always, but in tests that freeze
        the format)."""
        table = [[int(e.kind), e.id, e.offset, e.length, e.raw_length] for e in self.entries]
        nonce = nonce or os.urandom(HEADER_NONCE)
        if len(nonce) != HEADER_NONCE:
            raise ValueError(f"a pack header nonce is {HEADER_NONCE} bytes, not {len(nonce)}")
        header = nonce + AESGCM(self._data_key).encrypt(
            nonce, msgpack.packb(table, use_bin_type=True), HEADER_AAD
        )
        data = b"".join([*self._parts, header, FOOTER.pack(MAGIC, PACK_VERSION, len(header))])
        finished = FinishedPack(blake3.blake3(data).hexdigest(), data, self.entries)
        self._parts, self._size = [], 0
        self.entries = []
        return finished


def parse_footer(tail: bytes, pack_size: int) -> int:
    """Validate the footer; return the sealed header's length."""
    if len(tail) < FOOTER.size:
        raise IntegrityError(
            f"pack is truncated: {len(tail)} bytes, a footer alone is {FOOTER.size}"
        )
    magic, version, header_len = FOOTER.unpack(tail[-FOOTER.size :])
    if magic != MAGIC:
        raise IntegrityError(f"not a pack file: magic {magic!r}, expected {MAGIC!r}")
    if version != PACK_VERSION:
        raise IntegrityError(f"unsupported pack version {version} (expected {PACK_VERSION})")
    if header_len > MAX_HEADER or header_len + FOOTER.size > pack_size:
        raise IntegrityError(
            f"pack header length {header_len} does not fit a {pack_size}-byte pack"
        )
    return int(header_len)


def parse_header(data_key: bytes, sealed_header: bytes, blobs_size: int) -> list[PackEntry]:
    """Decrypt and validate a pack header against the size of the blob area."""
    if len(sealed_header) < HEADER_NONCE + 16:
        raise IntegrityError("pack header is truncated")
    try:
        plain = AESGCM(data_key).decrypt(
            sealed_header[:HEADER_NONCE], sealed_header[HEADER_NONCE:], HEADER_AAD
        )
    except InvalidTag as e:
        raise IntegrityError(
            "pack header fails authentication (damaged, or another store's key)"
        ) from e
    try:
        table = msgpack.unpackb(plain, raw=False)
    except (ValueError, msgpack.UnpackException) as e:
        raise IntegrityError(f"pack header is not valid msgpack: {e}") from e
    if not isinstance(table, list):
        raise IntegrityError("pack header is not a list")
    entries: list[PackEntry] = []
    end = 0
    for row in table:
        if (
            not isinstance(row, list)
            or len(row) != 5
            or not isinstance(row[1], bytes)
            or len(row[1]) != ID_SIZE
            or not all(isinstance(v, int) and v >= 0 for v in (row[0], *row[2:]))
        ):
            raise IntegrityError(f"pack header has a malformed entry: {row!r:.80}")
        try:
            kind = BlobKind(row[0])
        except ValueError as e:
            raise IntegrityError(f"pack header names unknown blob kind {row[0]}") from e
        e_ = PackEntry(kind, row[1], row[2], row[3], row[4])
        if e_.offset < end or e_.offset + e_.length > blobs_size:
            raise IntegrityError(
                f"pack header entry {e_.id.hex()[:16]} at {e_.offset}+{e_.length} "
                f"overlaps or lies outside the {blobs_size}-byte blob area"
            )
        end = e_.offset + e_.length
        entries.append(e_)
    return entries


def read_entries(data_key: bytes, pack_bytes: bytes) -> list[PackEntry]:
    """Parse a whole pack held in memory."""
    header_len = parse_footer(pack_bytes, len(pack_bytes))
    start = len(pack_bytes) - FOOTER.size - header_len
    return parse_header(data_key, pack_bytes[start : start + header_len], start)
