"""Tables. Core ``Table`` objects: the hot paths (the chunk index) are bulk SQL."""

from __future__ import annotations

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

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

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
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("size", BigInteger, nullable=False, default=0),
    Column("state", String(16), nullable=False),
    Column("created", DateTime(timezone=True), nullable=False),
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
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", String(64), nullable=False, unique=True),
    Column("time", DateTime(timezone=True), nullable=False),
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

users = Table(
    "users",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("password_hash", Text, nullable=False),
    Column("role", String(32), nullable=False),
    Column("disabled", Boolean, nullable=False, default=False),
    Column("created", DateTime(timezone=True), nullable=False),
)

api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("user_id", String(36), ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("name", String(128), nullable=False),
    Column("created", DateTime(timezone=True), nullable=False),
    Column("expires", DateTime(timezone=True), nullable=True),
    # revision 0005: "session" (from a login) or "api"; when it last authenticated a call
    Column("kind", String(16), nullable=False, server_default="session"),
    Column("last_used", DateTime(timezone=True), nullable=True),
)

#: Failed logins per (user name, client address), revision 0005: one row per key, the
#: failures in a row and the time before which that key may not try again.
login_throttle = Table(
    "login_throttle",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("client", String(64), primary_key=True),
    Column("failures", Integer, nullable=False),
    Column("locked_until", DateTime(timezone=True), nullable=True),
    Column("last_failure", DateTime(timezone=True), nullable=False, index=True),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("time", DateTime(timezone=True), nullable=False),
    Column("actor", String(128), nullable=False),
    Column("action", String(64), nullable=False),
    Column("target", String(255), nullable=False),
    Column("detail", JSON, nullable=False),
)

policies = Table(
    "policies",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("version", Integer, nullable=False),
    Column("settings", JSON, nullable=False),
    Column("created", DateTime(timezone=True), nullable=False),
    Column("updated", DateTime(timezone=True), nullable=False),
)

enroll_tokens = Table(
    "enroll_tokens",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("created_by", String(128), nullable=False),
    Column("created", DateTime(timezone=True), nullable=False),
    Column("expires", DateTime(timezone=True), nullable=False),
    Column("policy_id", String(36), ForeignKey("policies.id"), nullable=True),
    Column("reference", Boolean, nullable=False, default=False),
    Column("uses", Integer, nullable=False, default=0),
    # revision 0005: how many enrollments it allows, and when it was revoked
    Column("max_uses", Integer, nullable=False, server_default="1"),
    Column("revoked", DateTime(timezone=True), nullable=True),
)

devices = Table(
    "devices",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("hostname", String(255), nullable=False, index=True),
    Column("status", String(16), nullable=False),
    Column("facts", JSON, nullable=False),
    Column("credential_hash", String(64), nullable=False, unique=True),
    Column("enrolled", DateTime(timezone=True), nullable=False),
    Column("last_seen", DateTime(timezone=True), nullable=True),
    Column("agent_state", JSON, nullable=False),
)

cvds = Table(
    "cvds",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("name", String(255), nullable=False, unique=True),
    Column("device_id", String(36), ForeignKey("devices.id"), nullable=True, index=True),
    Column("policy_id", String(36), ForeignKey("policies.id"), nullable=False),
    Column("policy_version", Integer, nullable=False),
    Column("reference", Boolean, nullable=False, default=False),
    Column("state", String(16), nullable=False),
    Column("created", DateTime(timezone=True), nullable=False),
    Column("last_sync", DateTime(timezone=True), nullable=True),
    Column("progress", JSON, nullable=False),
    # revision 0005: cvd_blobs holds every blob of this CVD's snapshots (false: fill it first)
    Column("blobs_indexed", Boolean, nullable=False, server_default=false()),
)

#: The blobs a CVD's device proved it holds (uploaded them, or they are in its snapshots),
#: revision 0005. A device learns about, and reads, no other blob.
cvd_blobs = Table(
    "cvd_blobs",
    metadata,
    Column("cvd_id", String(36), ForeignKey("cvds.id", ondelete="CASCADE"), primary_key=True),
    Column("blob_id", LargeBinary(32), primary_key=True),
)
# revision 0009: who else holds a blob is looked up by blob (cross-endpoint dedup)
Index("ix_cvd_blobs_blob_id", cvd_blobs.c.blob_id)

#: Blobs a CVD was told to upload and has not yet (in flight), revision 0009: while the
#: lease runs, other CVDs may be told the blob is coming instead of sending it too
#: (``server/services/inflight.py``). An expired row counts for nothing.
blob_claims = Table(
    "blob_claims",
    metadata,
    Column("blob_id", LargeBinary(32), primary_key=True),
    Column("cvd_id", String(36), ForeignKey("cvds.id", ondelete="CASCADE"), primary_key=True),
    Column("expires", DateTime(timezone=True), nullable=False, index=True),
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
    Column("id", String(36), primary_key=True),
    Column("kind", String(32), nullable=False),
    Column("state", String(16), nullable=False, index=True),
    Column("progress", Integer, nullable=False, default=0),
    Column("message", Text, nullable=False, default=""),
    Column("cvd_id", String(36), nullable=True, index=True),
    Column("device_id", String(36), nullable=True, index=True),
    Column("params", JSON, nullable=False),
    Column("result", JSON, nullable=False),
    Column("created_by", String(128), nullable=False),
    Column("created", DateTime(timezone=True), nullable=False),
    Column("started", DateTime(timezone=True), nullable=True),
    Column("finished", DateTime(timezone=True), nullable=True),
    Column("claimed_by", String(64), nullable=True),
    # revision 0006: claims so far (an agent restart during a task re-queues it)
    Column("attempts", Integer, nullable=False, default=0, server_default="0"),
)

# --- layers (revision 0003) ---------------------------------------------------------

layers = Table(
    "layers",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("kind", String(8), nullable=False),
    Column("created", DateTime(timezone=True), nullable=False),
)

layer_versions = Table(
    "layer_versions",
    metadata,
    Column("id", String(36), primary_key=True),
    Column(
        "layer_id",
        String(36),
        ForeignKey("layers.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("version", Integer, nullable=False),
    Column("created", DateTime(timezone=True), nullable=False),
    Column("root", LargeBinary(32), nullable=False),
    Column("whiteouts", JSON, nullable=False),
    Column("source_cvd", String(36), nullable=True),
    Column("source_snapshot", String(64), nullable=True),
    Column("notes", Text, nullable=False),
    Column("files", BigInteger, nullable=False),
    Column("bytes", BigInteger, nullable=False),
    Column("apps", JSON, nullable=False),
    UniqueConstraint("layer_id", "version", name="uq_layer_versions_layer_id_version"),
)

#: The layer versions a CVD should run, in order (position 0 is the base layer if any).
cvd_layers = Table(
    "cvd_layers",
    metadata,
    Column("cvd_id", String(36), ForeignKey("cvds.id", ondelete="CASCADE"), primary_key=True),
    Column("position", Integer, primary_key=True),
    Column("version_id", String(36), ForeignKey("layer_versions.id"), nullable=False),
)

recordings = Table(
    "recordings",
    metadata,
    Column("cvd_id", String(36), ForeignKey("cvds.id", ondelete="CASCADE"), primary_key=True),
    Column("state", String(16), nullable=False),
    Column("start_snapshot", String(64), nullable=True),
    Column("name", String(128), nullable=True),
    Column("update_layer", String(36), nullable=True),
    Column("notes", Text, nullable=False),
    Column("started", DateTime(timezone=True), nullable=False),
)

#: Per CVD, the layer versions its endpoint reported running after its last apply.
cvd_running_layers = Table(
    "cvd_running_layers",
    metadata,
    Column("cvd_id", String(36), ForeignKey("cvds.id", ondelete="CASCADE"), primary_key=True),
    Column("position", Integer, primary_key=True),
    Column("version_id", String(36), ForeignKey("layer_versions.id"), nullable=False),
)

# --- collections (revision 0004) -------------------------------------------------------

#: A named set of CVDs: static members, and/or a filter on device facts (``filter`` text).
collections = Table(
    "collections",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("filter", Text, nullable=False),
    Column("created", DateTime(timezone=True), nullable=False),
)

collection_members = Table(
    "collection_members",
    metadata,
    Column(
        "collection_id",
        String(36),
        ForeignKey("collections.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("cvd_id", String(36), ForeignKey("cvds.id", ondelete="CASCADE"), primary_key=True),
)

# --- events (revision 0007) ------------------------------------------------------

#: What happened that an administrator should see: shown on the console's dashboard until
#: acknowledged. ``severity`` is info | warning | error; ``target`` names what it is about.
events = Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("time", DateTime(timezone=True), nullable=False),
    Column("severity", String(16), nullable=False),
    Column("source", String(64), nullable=False),
    Column("target", String(255), nullable=False),
    Column("message", Text, nullable=False),
    Column("acknowledged_by", String(128), nullable=True),
    Column("acknowledged", DateTime(timezone=True), nullable=True, index=True),
)

# --- driver library (revision 0008_drivers) ----------------------------------------------

#: Driver packs are layers of kind ``driver`` (``layers``/``layer_versions``: a tree in the
#: store and versioned rows). A profile says which packs go to which hardware: ``packs``
#: is a list of ``{"name", "version"}`` (version null: the latest), ``matches`` a list of
#: ``"FIELD=GLOB"`` strings that must all hold (see ``lamina.layers.drivers``).
driver_profiles = Table(
    "driver_profiles",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("os_family", String(64), nullable=True),
    Column("packs", JSON, nullable=False),
    Column("matches", JSON, nullable=False),
    Column("notes", Text, nullable=False),
    Column("created", DateTime(timezone=True), nullable=False),
    Column("updated", DateTime(timezone=True), nullable=False),
)
# --- flex (revision 0008_flexsrv) ---------------------------------------------------

#: Named groups of users (entitlements name users or groups).
user_groups = Table(
    "user_groups",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("created", DateTime(timezone=True), nullable=False),
)

user_group_members = Table(
    "user_group_members",
    metadata,
    Column(
        "group_id", String(36), ForeignKey("user_groups.id", ondelete="CASCADE"), primary_key=True
    ),
    Column("user_id", String(36), ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
)

flex_images = Table(
    "flex_images",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("created", DateTime(timezone=True), nullable=False),
)

#: One registered raw disk: a snapshot in the store (source ``flex:<image id>``) and its
#: manifest's pieces, ``[[offset, length, plain blake3 hex, store blob id hex | null (zeros)]]``.
flex_image_versions = Table(
    "flex_image_versions",
    metadata,
    Column("id", String(36), primary_key=True),
    Column(
        "image_id", String(36), ForeignKey("flex_images.id", ondelete="CASCADE"), nullable=False
    ),
    Column("version", Integer, nullable=False),
    Column("created", DateTime(timezone=True), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("memory_mib", Integer, nullable=False),
    Column("cpus", Integer, nullable=False),
    Column("firmware", String(8), nullable=False),
    Column("snapshot_id", String(64), nullable=False),
    Column("pieces", JSON, nullable=False),
    Column("source", JSON, nullable=False),
    UniqueConstraint("image_id", "version", name="uq_flex_image_versions_image_id_version"),
)

#: A restriction policy: ``restrictions`` is a FlexRestrictions; expiry is a date or a
#: duration from each instance's creation.
flex_policies = Table(
    "flex_policies",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("restrictions", JSON, nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=True),
    Column("valid_for", Integer, nullable=True),
    Column("lease_seconds", Integer, nullable=False),
    Column("created", DateTime(timezone=True), nullable=False),
    Column("updated", DateTime(timezone=True), nullable=False),
)

flex_entitlements = Table(
    "flex_entitlements",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("image_id", String(36), ForeignKey("flex_images.id"), nullable=False),
    #: a pinned image version, or null for the latest at each instance's creation
    Column("version", Integer, nullable=True),
    Column("policy_id", String(36), ForeignKey("flex_policies.id"), nullable=False),
    Column("manage", Boolean, nullable=False, default=False),
    Column("cvd_policy_id", String(36), ForeignKey("policies.id"), nullable=True),
    #: layer specs (``NAME[:V]``) assigned to a managed guest's CVD: base first, then apps
    Column("layers", JSON, nullable=False),
    Column("created", DateTime(timezone=True), nullable=False),
)

#: Who an entitlement is for: ``kind`` user or group, ``subject_id`` a user's or group's id.
flex_entitlement_subjects = Table(
    "flex_entitlement_subjects",
    metadata,
    Column(
        "entitlement_id",
        String(36),
        ForeignKey("flex_entitlements.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("kind", String(8), primary_key=True),
    Column("subject_id", String(36), primary_key=True),
)

#: One downloaded copy of an image for one user on one laptop.
flex_instances = Table(
    "flex_instances",
    metadata,
    Column("id", String(36), primary_key=True),
    Column(
        "entitlement_id",
        String(36),
        ForeignKey("flex_entitlements.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column(
        "user_id",
        String(36),
        ForeignKey("users.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("version_id", String(36), ForeignKey("flex_image_versions.id"), nullable=False),
    #: a per-instance policy overriding the entitlement's
    Column("policy_id", String(36), ForeignKey("flex_policies.id"), nullable=True),
    Column("state", String(16), nullable=False),
    Column("message", Text, nullable=False),
    Column("client", String(255), nullable=False),
    Column("created", DateTime(timezone=True), nullable=False),
    Column("last_checkin", DateTime(timezone=True), nullable=True),
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
    Column(
        "device_id",
        String(36),
        ForeignKey("devices.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("field", String(32), nullable=False),
    Column("value", String(512), nullable=False),
    Index("ix_device_match_facts_field_value", "field", "value"),
)
