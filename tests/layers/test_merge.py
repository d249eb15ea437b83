"""layers/merge.py: three-way text merges and dpkg's status database (python-debian)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lamina.errors import IntegrityError
from lamina.layers.merge import (
    Stanzas,
    installed,
    is_text,
    merge_dpkg_live,
    merge_dpkg_status,
    merge_text,
    parse_dpkg_status,
    render_dpkg_status,
)

HOST_STATUS = Path("/var/lib/dpkg/status")

# As dpkg writes them: a trailing space after a description's first line, a field with
# an empty first line and continuation lines (Conffiles), a "." line, multi-arch twins,
# an "all" package sorting between them by name.
FIXTURE = (
    b"Package: libfoo\n"
    b"Status: install ok installed\n"
    b"Architecture: amd64\n"
    b"Multi-Arch: same\n"
    b"Version: 1.0-1\n"
    b"Description: the foo library \n"
    b" It does foo.\n"
    b" .\n"
    b" And more foo.\n"
    b"\n"
    b"Package: libfoo\n"
    b"Status: install ok installed\n"
    b"Architecture: i386\n"
    b"Multi-Arch: same\n"
    b"Version: 1.0-1\n"
    b"\n"
    b"Package: libfoo-data\n"
    b"Status: deinstall ok config-files\n"
    b"Architecture: all\n"
    b"Version: 0.9\n"
    b"Conffiles:\n"
    b" /etc/foo.conf 0123456789abcdef0123456789abcdef\n"
    b" /etc/foo.d/x 0123456789abcdef0123456789abcdef obsolete\n"
    b"\n"
    b"Package: zed\n"
    b"Status: install ok installed\n"
    b"Version: 2\n"
    b"\n"
)


@pytest.mark.skipif(not HOST_STATUS.exists(), reason="this host has no dpkg status database")
def test_the_hosts_status_database_round_trips_byte_identical() -> None:
    data = HOST_STATUS.read_bytes()
    stanzas = parse_dpkg_status(data)
    assert len(stanzas) > 10
    assert render_dpkg_status(stanzas) == data


def test_fixture_round_trips_byte_identical() -> None:
    stanzas = parse_dpkg_status(FIXTURE)
    assert list(stanzas) == ["libfoo:amd64", "libfoo:i386", "libfoo-data", "zed"]
    assert render_dpkg_status(stanzas) == FIXTURE
    assert stanzas["libfoo:amd64"].text.endswith(" And more foo.\n")
    assert "Description: the foo library \n" in stanzas["libfoo:amd64"].text


def test_render_uses_dpkgs_order_not_the_keys() -> None:
    """``libfoo:amd64`` sorts after ``libfoo-data`` as a string; dpkg puts libfoo first."""
    stanzas = parse_dpkg_status(FIXTURE)
    shuffled = dict(reversed(list(stanzas.items())))
    assert render_dpkg_status(shuffled) == FIXTURE


def test_comments_and_extra_blank_lines_are_kept_or_normalised() -> None:
    data = b"# written by hand\nPackage: a\nVersion: 1\n\n\n\nPackage: b\nVersion: 2\n"
    stanzas = parse_dpkg_status(data)
    assert stanzas["a"].text == "# written by hand\nPackage: a\nVersion: 1\n"
    assert render_dpkg_status(stanzas) == (
        b"# written by hand\nPackage: a\nVersion: 1\n\nPackage: b\nVersion: 2\n\n"
    )


def test_non_utf8_bytes_survive() -> None:
    data = b"Package: a\nMaintainer: J\xe9r\xf4me\nVersion: 1\n\n"
    assert render_dpkg_status(parse_dpkg_status(data)) == data


@pytest.mark.parametrize(
    "bad",
    [b"garbage line\n", b"Package: a\n cont\nnot a field\n", b"Package: a\nPackage: b\n"],
)
def test_a_file_dpkg_could_not_read_is_an_integrity_error(bad: bytes) -> None:
    with pytest.raises(IntegrityError, match="deb822"):
        parse_dpkg_status(bad)


def test_paragraphs_without_a_package_are_skipped() -> None:
    assert parse_dpkg_status(b"Foo: bar\n\nPackage: a\n\n").keys() == {"a"}
    assert parse_dpkg_status(b"") == {}


def test_installed_lists_only_installed_packages() -> None:
    assert installed(parse_dpkg_status(FIXTURE)) == {"libfoo": "1.0-1", "zed": "2"}


def _db(*pkgs: tuple[str, str]) -> Stanzas:
    data = "".join(f"Package: {n}\nVersion: {v}\n\n" for n, v in pkgs).encode()
    return parse_dpkg_status(data)


def test_merge_status_later_layer_wins_and_user_packages_stay() -> None:
    base, app = _db(("a", "1"), ("b", "1")), _db(("b", "2"), ("c", "1"))
    endpoint = _db(("a", "1"), ("b", "1"), ("old", "1"), ("mine", "1"))
    out = merge_dpkg_status([base, app], endpoint, owned_before={"old"})
    assert {k: v.version for k, v in out.items()} == {"a": "1", "b": "2", "c": "1", "mine": "1"}


def test_merge_live_three_ways() -> None:
    base = _db(("kept", "1"), ("planned", "1"), ("both", "1"), ("gone", "1"))
    live = _db(("kept", "2"), ("planned", "1"), ("both", "2"), ("new", "1"))
    plan = _db(("kept", "1"), ("planned", "2"), ("both", "3"), ("gone", "1"))
    out = merge_dpkg_live(base, live, plan)
    assert {k: v.version for k, v in out.items()} == {
        "kept": "2",  # only the endpoint changed it
        "planned": "2",  # only the plan changed it
        "both": "3",  # both: the layer wins
        "new": "1",  # installed since the last sync
    }  # "gone": removed on the endpoint, unchanged in the plan


def test_text_merge_clean_and_conflicting() -> None:
    base = b"a\nb\nc\n"
    assert merge_text(base, b"a\nb\nC\n", b"A\nb\nc\n").text == b"A\nb\nC\n"
    m = merge_text(base, b"a\nX\nc\n", b"a\nY\nc\n")
    assert not m.clean and m.text == b"a\nX\nc\n"  # the user's file is kept


def test_is_text() -> None:
    assert is_text(b"key = value\n")
    assert not is_text(b"\x00\x01binary")
    assert not is_text(b"\xff\xfe not utf-8")
    assert not is_text(b"x" * (4 * 1024 * 1024 + 1))
