"""Tables. Core ``Table`` objects: the hot paths (the chunk index) are bulk SQL.

The columns many tables share are made by the small functions below (a UUID key, a
unique name, a timestamp, a reference to a parent row), and the tables of the same
kind by ``named_table`` and ``versions_table``: each table's declaration reads as
what is particular to it. ``tests/db/test_schema_frozen.py`` holds the result to the
schema the migrations build.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.schema import SchemaItem

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# --- the columns many tables share -----------------------------------------------------


def uuid_key() -> Column[str]:
    """``id``: the row's UUID, its primary key."""
    return Column("id", String(36), primary_key=True)


def serial_key(name: str) -> Column[int]:
    """An integer primary key the database assigns, in the order rows are inserted."""
    return Column(name, Integer, primary_key=True, autoincrement=True)


def unique_name() -> Column[str]:
    """``name``: what an administrator calls the row, unique in its table."""
    return Column("name", String(128), nullable=False, unique=True)


def timestamp(
    name: str, *, nullable: bool = False, index: bool | None = None
) -> Column[dt.datetime]:
    """A point in time, with its time zone."""
    return Column(name, DateTime(timezone=True), nullable=nullable, index=index)


def reference(
    name: str, target: str, *, nullable: bool = False, index: bool | None = None
) -> Column[str]:
    """The UUID of a row of another table (``target``: ``"table.id"``)."""
    return Column(name, String(36), ForeignKey(target), nullable=nullable, index=index)


def parent(name: str, target: str, *, index: bool | None = None) -> Column[str]:
    """The UUID of the row (``target``) this one belongs to: deleting that row deletes this one."""
    return Column(
        name, String(36), ForeignKey(target, ondelete="CASCADE"), nullable=False, index=index
    )


def parent_key(name: str, target: str) -> Column[str]:
    """A ``parent`` that is part of the primary key: the row is one of its parent's."""
    return Column(name, String(36), ForeignKey(target, ondelete="CASCADE"), primary_key=True)


def named_table(name: str, *columns: SchemaItem, updated: bool = False) -> Table:
    """A table of things an administrator names: ``id`` and ``name`` first, then
    ``columns``, then when each was ``created`` (and last ``updated``)."""
    stamps = [timestamp("created"), *([timestamp("updated")] if updated else [])]
    return Table(name, metadata, uuid_key(), unique_name(), *columns, *stamps)


def versions_table(name: str, of: Column[str], *columns: SchemaItem) -> Table:
    """The numbered versions of a thing: ``id``, the thing they are versions ``of``, the
    ``version`` (one row per thing and number), when it was ``created``, then ``columns``."""
    unique = UniqueConstraint(of.name, "version", name=f"uq_{name}_{of.name}_version")
    version = Column("version", Integer, nullable=False)
    return Table(name, metadata, uuid_key(), of, version, timestamp("created"), *columns, unique)


# --- the store's catalog (revision 0001) -----------------------------------------------

#: Small key/value state of the store: gc epoch, locks, the store id it belongs to.
store_state = Table(
    "store_state",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

packs = Table(
    "packs",
    metadata,
    serial_key("seq"),
    Column("name", String(64), nullable=False, unique=True),
    Column("size", BigInteger, nullable=False, default=0),
    Column("state", String(16), nullable=False),
    timestamp("created"),
)

blobs = Table(
    "blobs",
    metadata,
    Column("id", LargeBinary(32), primary_key=True),
    Column(
        "pack_seq",
        Integer,
        ForeignKey("packs.seq", ondelete="CASCADE"),
        primary_key=True,
        index=True,
    ),
    Column("kind", SmallInteger, nullable=False),
    Column("offset", BigInteger, nullable=False),
    Column("length", Integer, nullable=False),
    Column("raw_length", Integer, nullable=False),
    Column("condemned", Boolean, nullable=False, default=False),
)

snapshots = Table(
    "snapshots",
    metadata,
    serial_key("seq"),
    Column("id", String(64), nullable=False, unique=True),
    timestamp("time"),
    Column("source", String(255), nullable=False, index=True),
    Column("root", LargeBinary(32), nullable=False),
    Column("files", BigInteger, nullable=False),
    Column("bytes", BigInteger, nullable=False),
    Column("meta", JSON, nullable=False),
)

# Partial on both dialects: a full index on a yes/no column would tempt SQLite's
# planner away from the primary key and turn every lookup into a table scan.
Index(
    "ix_blobs_condemned",
    blobs.c.condemned,
    postgresql_where=blobs.c.condemned,
    sqlite_where=blobs.c.condemned,
)

# --- the server's tables (revision 0002) --------------------------------------

users = named_table(
    "users",
    Column("password_hash", Text, nullable=False),
    Column("role", String(32), nullable=False),
    Column("disabled", Boolean, nullable=False, default=False),
)

api_tokens = Table(
    "api_tokens",
    metadata,
    uuid_key(),
    parent("user_id", "users.id"),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("name", String(128), nullable=False),
    timestamp("created"),
    timestamp("expires", nullable=True),
    # revision 0005: "session" (from a login) or "api"; when it last authenticated a call
    Column("kind", String(16), nullable=False, server_default="session"),
    timestamp("last_used", nullable=True),
)

#: Failed logins per (user name, client address), revision 0005: one row per key, the
#: failures in a row and the time before which that key may not try again.
login_throttle = Table(
    "login_throttle",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("client", String(64), primary_key=True),
    Column("failures", Integer, nullable=False),
    timestamp("locked_until", nullable=True),
    timestamp("last_failure", index=True),
)

audit_log = Table(
    "audit_log",
    metadata,
    serial_key("id"),
    timestamp("time"),
    Column("actor", String(128), nullable=False),
    Column("action", String(64), nullable=False),
    Column("target", String(255), nullable=False),
    Column("detail", JSON, nullable=False),
)

policies = named_table(
    "policies",
    Column("version", Integer, nullable=False),
    Column("settings", JSON, nullable=False),
    updated=True,
)

enroll_tokens = Table(
    "enroll_tokens",
    metadata,
    uuid_key(),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("created_by", String(128), nullable=False),
    timestamp("created"),
    timestamp("expires"),
    reference("policy_id", "policies.id", nullable=True),
    Column("reference", Boolean, nullable=False, default=False),
    Column("uses", Integer, nullable=False, default=0),
    # revision 0005: how many enrollments it allows, and when it was revoked
    Column("max_uses", Integer, nullable=False, server_default="1"),
    timestamp("revoked", nullable=True),
)

devices = Table(
    "devices",
    metadata,
    uuid_key(),
    Column("hostname", String(255), nullable=False, index=True),
    Column("status", String(16), nullable=False),
    Column("facts", JSON, nullable=False),
    Column("credential_hash", String(64), nullable=False, unique=True),
    timestamp("enrolled"),
    timestamp("last_seen", nullable=True),
    Column("agent_state", JSON, nullable=False),
)

cvds = Table(
    "cvds",
    metadata,
    uuid_key(),
    Column("name", String(255), nullable=False, unique=True),
    reference("device_id", "devices.id", nullable=True, index=True),
    reference("policy_id", "policies.id"),
    Column("policy_version", Integer, nullable=False),
    Column("reference", Boolean, nullable=False, default=False),
    Column("state", String(16), nullable=False),
    timestamp("created"),
    timestamp("last_sync", nullable=True),
    Column("progress", JSON, nullable=False),
    # revision 0005: cvd_blobs holds every blob of this CVD's snapshots (false: fill it first)
    Column("blobs_indexed", Boolean, nullable=False, server_default=false()),
)

#: The blobs a CVD's device proved it holds (uploaded them, or they are in its snapshots),
#: revision 0005. A device learns about, and reads, no other blob.
#: Revision 0012_srvcpu: keyed by blob, then CVD, and on SQLite the key is the table
#: (``WITHOUT ROWID``): one b-tree answers "does this CVD own it" and "who else owns it"
#: (cross-endpoint dedup), where a row table, its key's index (CVD first) and an index by
#: blob took three, about 210 bytes a row. Only the gc reads a CVD's rows without blob
#: ids (``db.ownership``: a scan, once per group of CVDs), to take back what no snapshot
#: of the CVD reaches.
cvd_blobs = Table(
    "cvd_blobs",
    metadata,
    Column("blob_id", LargeBinary(32), primary_key=True),
    parent_key("cvd_id", "cvds.id"),
    sqlite_with_rowid=False,
)

#: Blobs a CVD was told to upload and has not yet (in flight), revision 0009: while its
#: CVD's lease runs (``blob_claimants``), other CVDs may be told the blob is coming
#: instead of sending it too (``server/services/inflight.py``). Revision 0013_srvsql: the
#: lease is the CVD's, not the row's, so a claim is one entry of one b-tree (``WITHOUT
#: ROWID`` on SQLite, no ``expires`` and its index, no foreign key: a claim whose CVD has
#: no live lease, or no longer exists, counts for nothing and is swept with its lease).
blob_claims = Table(
    "blob_claims",
    metadata,
    Column("blob_id", LargeBinary(32), primary_key=True),
    Column("cvd_id", String(36), primary_key=True),
    sqlite_with_rowid=False,
)

#: The CVDs with claims, and until when they count (revision 0013_srvsql): renewed by the
#: CVD's asks and bundles (it is alive and uploading), deleted with its claims when it
#: commits or when the lease runs out.
blob_claimants = Table(
    "blob_claimants",
    metadata,
    parent_key("cvd_id", "cvds.id"),
    timestamp("expires"),
)

#: Blobs held by at least the server's ``share_threshold`` CVDs (common content, such as
#: an operating system's files), revision 0009: stored ones count as present for every CVD.
shared_blobs = Table(
    "shared_blobs",
    metadata,
    Column("blob_id", LargeBinary(32), primary_key=True),
)

tasks = Table(
    "tasks",
    metadata,
    uuid_key(),
    Column("kind", String(32), nullable=False),
    Column("state", String(16), nullable=False, index=True),
    Column("progress", Integer, nullable=False, default=0),
    Column("message", Text, nullable=False, default=""),
    Column("cvd_id", String(36), nullable=True, index=True),
    Column("device_id", String(36), nullable=True, index=True),
    Column("params", JSON, nullable=False),
    Column("result", JSON, nullable=False),
    Column("created_by", String(128), nullable=False),
    timestamp("created"),
    timestamp("started", nullable=True),
    timestamp("finished", nullable=True),
    Column("claimed_by", String(64), nullable=True),
    # revision 0006: claims so far (an agent restart during a task re-queues it)
    Column("attempts", Integer, nullable=False, default=0, server_default="0"),
    # revision 0011: when the report the row holds was made (a kept progress report
    # older than it is not written)
    timestamp("reported", nullable=True),
)

# --- layers (revision 0003) ---------------------------------------------------------

layers = named_table("layers", Column("kind", String(8), nullable=False))

layer_versions = versions_table(
    "layer_versions",
    parent("layer_id", "layers.id", index=True),
    Column("root", LargeBinary(32), nullable=False),
    Column("whiteouts", JSON, nullable=False),
    Column("source_cvd", String(36), nullable=True),
    Column("source_snapshot", String(64), nullable=True),
    Column("notes", Text, nullable=False),
    Column("files", BigInteger, nullable=False),
    Column("bytes", BigInteger, nullable=False),
    Column("apps", JSON, nullable=False),
)


def cvd_layer_list(name: str) -> Table:
    """Per CVD, layer versions in order (position 0 is the base layer if any)."""
    return Table(
        name,
        metadata,
        parent_key("cvd_id", "cvds.id"),
        Column("position", Integer, primary_key=True),
        reference("version_id", "layer_versions.id"),
    )


#: The layer versions a CVD should run.
cvd_layers = cvd_layer_list("cvd_layers")

recordings = Table(
    "recordings",
    metadata,
    parent_key("cvd_id", "cvds.id"),
    Column("state", String(16), nullable=False),
    Column("start_snapshot", String(64), nullable=True),
    Column("name", String(128), nullable=True),
    Column("update_layer", String(36), nullable=True),
    Column("notes", Text, nullable=False),
    timestamp("started"),
)

#: The layer versions a CVD's endpoint reported running after its last apply.
cvd_running_layers = cvd_layer_list("cvd_running_layers")

# --- collections (revision 0004) -------------------------------------------------------

#: A named set of CVDs: static members, and/or a filter on device facts (``filter`` text).
collections = named_table("collections", Column("filter", Text, nullable=False))

collection_members = Table(
    "collection_members",
    metadata,
    parent_key("collection_id", "collections.id"),
    parent_key("cvd_id", "cvds.id"),
)

# --- events (revision 0007) ------------------------------------------------------

#: What happened that an administrator should see: shown on the console's dashboard until
#: acknowledged. ``severity`` is info | warning | error; ``target`` names what it is about.
events = Table(
    "events",
    metadata,
    serial_key("id"),
    timestamp("time"),
    Column("severity", String(16), nullable=False),
    Column("source", String(64), nullable=False),
    Column("target", String(255), nullable=False),
    Column("message", Text, nullable=False),
    Column("acknowledged_by", String(128), nullable=True),
    timestamp("acknowledged", nullable=True, index=True),
)

# --- driver library (revision 0008_drivers) ----------------------------------------------

#: Driver packs are layers of kind ``driver`` (``layers``/``layer_versions``: a tree in the
#: store and versioned rows). A profile says which packs go to which hardware: ``packs``
#: is a list of ``{"name", "version"}`` (version null: the latest), ``matches`` a list of
#: ``"FIELD=GLOB"`` strings that must all hold (see ``lamina.layers.drivers``).
driver_profiles = named_table(
    "driver_profiles",
    Column("os_family", String(64), nullable=True),
    Column("packs", JSON, nullable=False),
    Column("matches", JSON, nullable=False),
    Column("notes", Text, nullable=False),
    updated=True,
)
# --- flex (revision 0008_flexsrv) ---------------------------------------------------

#: Named groups of users (entitlements name users or groups).
user_groups = named_table("user_groups")

user_group_members = Table(
    "user_group_members",
    metadata,
    parent_key("group_id", "user_groups.id"),
    parent_key("user_id", "users.id"),
)

flex_images = named_table("flex_images")

#: One registered raw disk: a snapshot in the store (source ``flex:<image id>``) and its
#: manifest's pieces, ``[[offset, length, plain blake3 hex, store blob id hex | null (zeros)]]``.
flex_image_versions = versions_table(
    "flex_image_versions",
    parent("image_id", "flex_images.id"),
    Column("size", BigInteger, nullable=False),
    Column("memory_mib", Integer, nullable=False),
    Column("cpus", Integer, nullable=False),
    Column("firmware", String(8), nullable=False),
    Column("snapshot_id", String(64), nullable=False),
    Column("pieces", JSON, nullable=False),
    Column("source", JSON, nullable=False),
)

#: A restriction policy: ``restrictions`` is a FlexRestrictions; expiry is a date or a
#: duration from each instance's creation.
flex_policies = named_table(
    "flex_policies",
    Column("restrictions", JSON, nullable=False),
    timestamp("expires_at", nullable=True),
    Column("valid_for", Integer, nullable=True),
    Column("lease_seconds", Integer, nullable=False),
    updated=True,
)

flex_entitlements = named_table(
    "flex_entitlements",
    reference("image_id", "flex_images.id"),
    #: a pinned image version, or null for the latest at each instance's creation
    Column("version", Integer, nullable=True),
    reference("policy_id", "flex_policies.id"),
    Column("manage", Boolean, nullable=False, default=False),
    reference("cvd_policy_id", "policies.id", nullable=True),
    #: layer specs (``NAME[:V]``) assigned to a managed guest's CVD: base first, then apps
    Column("layers", JSON, nullable=False),
)

#: Who an entitlement is for: ``kind`` user or group, ``subject_id`` a user's or group's id.
flex_entitlement_subjects = Table(
    "flex_entitlement_subjects",
    metadata,
    parent_key("entitlement_id", "flex_entitlements.id"),
    Column("kind", String(8), primary_key=True),
    Column("subject_id", String(36), primary_key=True),
)

#: One downloaded copy of an image for one user on one laptop.
flex_instances = Table(
    "flex_instances",
    metadata,
    uuid_key(),
    parent("entitlement_id", "flex_entitlements.id", index=True),
    parent("user_id", "users.id", index=True),
    reference("version_id", "flex_image_versions.id"),
    #: a per-instance policy overriding the entitlement's
    reference("policy_id", "flex_policies.id", nullable=True),
    Column("state", String(16), nullable=False),
    Column("message", Text, nullable=False),
    Column("client", String(255), nullable=False),
    timestamp("created"),
    timestamp("last_checkin", nullable=True),
    #: the enrollment token of a managed guest (the latest issued), and the device it made
    Column("enroll_token_id", String(36), nullable=True, index=True),
    Column("device_id", String(36), nullable=True),
)

# --- driver matching (revision 0010) ---------------------------------------------------

#: What a driver profile can match in each device's facts, one row per (field, value):
#: every value of every match field (``lamina.layers.drivers.match_values``, lower case)
#: and the OS family names under ``os_family``; plus one row (``""``, ``""``) marking the
#: device as indexed. Written with the facts (``services.drivers_index``), so that a
#: profile's test reads these short rows, not 10,000 devices' facts.
device_match_facts = Table(
    "device_match_facts",
    metadata,
    parent("device_id", "devices.id", index=True),
    Column("field", String(32), nullable=False),
    Column("value", String(512), nullable=False),
    Index("ix_device_match_facts_field_value", "field", "value"),
)
