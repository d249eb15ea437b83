"""Tree objects: deterministic encoding, strict decoding of hostile input."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lamina.errors import IntegrityError, LaminaError, UnsafePathError
from lamina.tree.model import (
    TREE_VERSION,
    TYPES,
    Entry,
    _decode_checked,
    _file_entry,
    decode_entry,
    decode_tree,
    decode_typed,
    encode_tree,
    references,
)
from tests.strategies import PARSER_SETTINGS, msgpack_values, mutations, packb

CID = bytes(range(32))
SUB = bytes(range(1, 33))


def good_entries() -> list[Entry]:
    return [
        Entry(
            b"file",
            "file",
            0o4755,
            1,
            2,
            "u",
            "g",
            -5,
            10,
            [(b"user.a", b"\x00")],
            hardlink=b"h" * 16,
            content=[CID, 7, CID],
        ),
        Entry(b"dir", "dir", 0o1777, subtree=SUB),
        Entry(b"link", "symlink", 0o777, target=b"../x"),
        Entry(b"dev", "chardev", 0o600, rdev=0x0103),
        Entry(b"blk", "blockdev", 0o600, rdev=2**40),
        Entry(b"pipe", "fifo"),
        Entry(b"sock", "socket"),
        Entry(b"\xff\xfe", "file", content=[]),
    ]


def raw(entries: list[dict[str, Any]], v: Any = TREE_VERSION) -> bytes:
    return msgpack.packb({"v": v, "entries": entries}, use_bin_type=True)


def one(**over: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "name": b"f",
        "type": "file",
        "mode": 0o644,
        "uid": 0,
        "gid": 0,
        "user": "",
        "group": "",
        "mtime": 0,
        "size": 1,
        "content": [CID],
    }
    d.update(over)
    return {k: v for k, v in d.items() if v is not DROP}


DROP = object()


def test_round_trip_keeps_every_field() -> None:
    entries = good_entries()
    back = decode_tree(encode_tree(entries))
    assert back == sorted(entries, key=lambda e: e.name)


def test_encoding_is_deterministic_and_sorted_bytewise() -> None:
    entries = good_entries()
    a = encode_tree(entries)
    b = encode_tree(list(reversed(entries)))
    assert a == b
    names = [e.name for e in decode_tree(a)]
    assert names == sorted(names) and names[0] == b"blk" and names[-1] == b"\xff\xfe"
    # xattrs are sorted too
    e1 = Entry(b"x", "file", xattrs=[(b"user.b", b"2"), (b"user.a", b"1")], content=[])
    e2 = Entry(b"x", "file", xattrs=[(b"user.a", b"1"), (b"user.b", b"2")], content=[])
    assert encode_tree([e1]) == encode_tree([e2])


def test_trees_of_every_kind_of_entry_take_the_typed_decoder() -> None:
    """Every kind of entry the scanner makes is decoded by the typed structs (the fast
    path), to the entries the general checks make."""
    data = encode_tree(good_entries())
    typed = decode_typed(data)
    assert typed is not None and typed == _decode_checked(data)
    assert typed == sorted(good_entries(), key=lambda e: e.name)


def _typed_is_the_checks(data: bytes) -> None:
    """What the typed decoder takes, the general checks take, making the same entries."""
    typed = decode_typed(data)
    if typed is not None:
        assert typed == _decode_checked(data)


@pytest.mark.parametrize(
    "over",
    [
        {"user": None},
        {"hardlink": None},
        {"xattrs": None},
        {"type": "dir", "content": "not a list", "subtree": SUB},
        {"type": "fifo", "target": 5},
        {"type": "dir", "subtree": None},
        {"type": "symlink", "target": None},
        {"type": "chardev", "rdev": -1},
        {"mode": True},
        {"name": b".."},
        {"zz": 1},  # (an unknown key: ignored by the checks, once read as UTF-8)
    ],
)
def test_the_typed_decoder_leaves_what_it_does_not_take_to_the_general_checks(
    over: dict[str, Any],
) -> None:
    """An entry outside the typed structs (a present ``None``, a field of another type
    where the checks ignore it, a refusal) goes to the general checks, which accept or
    refuse it as before."""
    data = raw([one(**over)])
    assert decode_typed(data) is None
    _typed_is_the_checks(data)


@PARSER_SETTINGS
@given(st.data())
def test_the_typed_decoder_makes_what_the_checks_make_of_mutated_trees(
    data: st.DataObject,
) -> None:
    _typed_is_the_checks(data.draw(mutations(encode_tree(good_entries()))))


@PARSER_SETTINGS
@given(
    st.fixed_dictionaries(
        {k: st.one_of(st.just(v), msgpack_values()) for k, v in one(content=[CID, 3]).items()}
    )
)
def test_the_typed_decoder_makes_what_the_checks_make_of_odd_entries(d: dict[str, Any]) -> None:
    _typed_is_the_checks(raw([d]))


def test_references_lists_subtrees_and_chunks_not_holes() -> None:
    trees, chunks = references(encode_tree(good_entries()))
    assert trees == [SUB]
    assert chunks == [CID, CID]


@pytest.mark.parametrize("v", [2, 0, None, "1", True, 1.0])
def test_wrong_version_is_refused(v: Any) -> None:
    with pytest.raises(IntegrityError, match="version"):
        decode_tree(raw([one()], v=v))


def test_missing_version_is_refused() -> None:
    with pytest.raises(IntegrityError, match="version"):
        decode_tree(msgpack.packb({"entries": []}))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",
        b"\x92\x01",
        msgpack.packb([1, 2]),
        msgpack.packb({"v": 1}),
        msgpack.packb({"v": 1, "entries": {}}),
        raw([1]),
        raw([[b"f", "file"]]),
    ],
)
def test_garbage_is_refused(data: bytes) -> None:
    with pytest.raises(IntegrityError):
        decode_tree(data)


def test_unsorted_entries_are_refused() -> None:
    with pytest.raises(IntegrityError, match="not sorted"):
        decode_tree(raw([one(name=b"b"), one(name=b"a")]))


def test_duplicate_entries_are_refused() -> None:
    with pytest.raises(IntegrityError, match="not sorted or not unique"):
        decode_tree(raw([one(name=b"a"), one(name=b"a", type="dir", subtree=SUB, content=DROP)]))


@pytest.mark.parametrize(
    "over,match",
    [
        ({"content": [CID[:31]]}, "32-byte"),
        ({"content": [CID + b"\0"]}, "32-byte"),
        ({"content": ["x" * 32]}, "32-byte"),
        ({"content": [0]}, "hole"),
        ({"content": [-4]}, "hole"),
        ({"content": [True]}, "32-byte"),
        ({"content": CID}, "list"),
        ({"type": "dir", "content": DROP, "subtree": SUB[:16]}, "32-byte"),
        ({"type": "dir", "content": DROP}, "subtree"),
        ({"size": -1}, "negative"),
        ({"uid": -1}, "negative"),
        ({"gid": -7}, "negative"),
        ({"uid": 2**32}, "range"),
        ({"size": 2**63}, "range"),
        ({"content": [2**63]}, "hole"),
        ({"type": "chardev", "rdev": -1}, "device"),
        ({"type": "chardev"}, "rdev"),
        ({"size": "1"}, "size"),
        ({"size": True}, "size"),
        ({"mode": None}, "mode"),
        ({"mode": DROP}, "mode"),
        ({"mtime": 1.5}, "mtime"),
        ({"type": "door"}, "type"),
        ({"type": DROP}, "type"),
        ({"name": DROP}, "name"),
        ({"name": "f"}, "name"),
        ({"type": "symlink"}, "target"),
        ({"type": "symlink", "target": b""}, "target"),
        ({"type": "symlink", "target": b"a\0b"}, "target"),
        ({"type": "symlink", "target": "str"}, "target"),
        ({"hardlink": b"short"}, "hardlink"),
        ({"xattrs": [[b"user.a"]]}, "xattr"),
        ({"xattrs": [[b"user.a", "str"]]}, "xattr"),
        ({"xattrs": {b"user.a": b"v"}}, "xattr"),
    ],
)
def test_malformed_entries_are_refused(over: dict[str, Any], match: str) -> None:
    with pytest.raises(IntegrityError, match=match):
        decode_tree(raw([one(**over)]))


@pytest.mark.parametrize("name", [b"", b".", b"..", b"a/b", b"/", b"a\0", b"/etc"])
def test_unsafe_names_are_refused(name: bytes) -> None:
    with pytest.raises(UnsafePathError):
        decode_tree(raw([one(name=name)]))


def test_a_valid_raw_tree_decodes() -> None:
    """The raw builder above makes valid trees, so each refusal is due to its one change."""
    (e,) = decode_tree(raw([one()]))
    assert e.content == [CID] and e.size == 1


def _general(d: dict[str, Any]) -> Entry | str:
    """What the general checks make of ``d``: an 11th, unknown key keeps ``decode_entry``
    off its fast path for a file of ten keys (``_file_entry``)."""
    try:
        return decode_entry({**d, "zz": 0})
    except LaminaError as e:
        return type(e).__name__


def _fast(d: dict[str, Any]) -> Entry | str | None:
    try:
        return _file_entry(d)
    except LaminaError as e:
        return type(e).__name__


@pytest.mark.parametrize(
    "over",
    [
        {},
        {"content": [CID, 7, CID]},
        {"content": []},
        {"content": [CID[:31]]},
        {"content": [True]},
        {"content": CID},
        {"mode": 0o104755},
        {"mode": True},
        {"size": -1},
        {"size": 2**63},
        {"uid": 2**32},
        {"user": None},
        {"user": b"u"},
        {"name": b".."},
        {"name": b"a/b"},
        {"name": "f"},
        {"type": "dir", "content": DROP, "subtree": SUB},
        {"type": "symlink", "content": DROP, "target": b"x"},
        {"content": DROP, "hardlink": b"h" * 16},
        {"size": DROP, "xattrs": [[b"a", b"b"]]},
    ],
)
def test_the_file_fast_path_accepts_and_refuses_what_the_general_checks_do(
    over: dict[str, Any],
) -> None:
    """A file of ten keys decodes on the fast path (``_file_entry``) to the same entry,
    or the same refusal, as the general checks; anything else is left to them (None)."""
    d = one(**over)
    fast, general = _fast(d), _general(d)
    assert fast is None or fast == general
    assert decode_entry(d) == general if isinstance(general, Entry) else True
    if not over:  # the common file does take the fast path
        assert isinstance(fast, Entry)


@PARSER_SETTINGS
@given(
    st.fixed_dictionaries(
        {k: st.one_of(st.just(v), msgpack_values()) for k, v in one(content=[CID, 3]).items()}
    )
)
def test_any_ten_key_entry_is_decoded_the_same_on_the_fast_path(d: dict[str, Any]) -> None:
    fast = _fast(d)
    assert fast is None or fast == _general(d)


# --- property tests: hostile bytes never escape as anything but a Lamina error ---------------

_ENTRY_KEYS = [
    "name", "type", "mode", "uid", "gid", "user", "group", "mtime", "size",
    "xattrs", "target", "rdev", "hardlink", "content", "subtree",
]  # fmt: skip


def _decodes_or_refuses(data: bytes) -> None:
    _typed_is_the_checks(data)
    try:
        entries = decode_tree(data)
    except LaminaError:
        return
    # What decodes must be what the format promises: it re-encodes without error.
    encode_tree(entries)


@PARSER_SETTINGS
@given(st.binary(max_size=300))
def test_random_bytes_decode_or_raise_a_lamina_error(data: bytes) -> None:
    _decodes_or_refuses(data)


@PARSER_SETTINGS
@given(st.data())
def test_mutated_trees_decode_or_raise_a_lamina_error(data: st.DataObject) -> None:
    _decodes_or_refuses(data.draw(mutations(encode_tree(good_entries()))))


# Deeply nested entries: minutes on a loaded 2-core box, so it gets the heavy timeout and
# starts early (tests/conftest.py).
@pytest.mark.slow
@PARSER_SETTINGS
@given(
    st.lists(
        st.one_of(
            msgpack_values(_ENTRY_KEYS),
            st.fixed_dictionaries(
                {"name": st.binary(min_size=1, max_size=4), "type": st.sampled_from(TYPES)},
                optional={k: msgpack_values() for k in _ENTRY_KEYS[2:]},
            ),
        ),
        max_size=4,
    )
)
def test_random_entry_structures_decode_or_raise_a_lamina_error(entries: list[Any]) -> None:
    _decodes_or_refuses(packb({"v": TREE_VERSION, "entries": entries}))


@PARSER_SETTINGS
@given(msgpack_values(["v", "entries"]))
def test_random_documents_decode_or_raise_a_lamina_error(doc: Any) -> None:
    _decodes_or_refuses(packb(doc))
