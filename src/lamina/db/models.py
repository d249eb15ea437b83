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

Index("ix_blobs_condemned", blobs.c.condemned, postgresql_where=blobs.c.condemned)
