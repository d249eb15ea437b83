from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lamina.errors import ForbiddenError, UsageError
from lamina.layers.rules import (
    CLASSES,
    MAX_WILDCARDS,
    builtin,
    compile_glob,
    globs,
    matches,
    parse_rules,
)


@pytest.mark.parametrize(
    ("path", "cls"),
    [
        ("/etc/passwd", "system"),
        ("/usr/bin/ls", "system"),
        ("/home/alice/thesis.txt", "user_data"),
        ("/root/.bashrc", "user_data"),
        ("/home/alice/.cache/thumbnails/x.png", "excluded"),
        ("/proc/1/status", "excluded"),
        ("/var/log/syslog", "excluded"),
        ("/etc/machine-id", "machine_identity"),
        ("/etc/ssh/ssh_host_ed25519_key", "machine_identity"),
        ("/opt/google/chrome/chrome", "applications"),
        ("/usr/local/bin/tool", "applications"),
        ("/var/lib/lamina/state.json", "excluded"),
    ],
)
def test_default_linux_classes(path: str, cls: str) -> None:
    assert builtin("linux").classify(path) == cls


def test_prunable_keeps_folder_drops_content() -> None:
    r = builtin("linux")
    assert r.prunable("/proc") and r.prunable("/var/log") and r.prunable("/home/bob/.cache")
    assert not r.prunable("/home") and not r.prunable("/etc") and not r.prunable("/var")


def test_globs() -> None:
    assert matches(["/home/*/Documents/**"], "/home/a/Documents/x/y")
    assert not matches(["/home/*/Documents/**"], "/home/a/b/Documents/x")
    assert matches(["/etc"], "/etc/passwd") and matches(["/"], "/anything/at/all")
    assert matches(["/etc/*.conf"], "/etc/a.conf") and not matches(["/etc/*.conf"], "/etc/x/a.conf")


def test_rule_sets_are_data_and_validated() -> None:
    r = parse_rules(
        '{"lamina_rules": 1, "name": "t", "order": ["user_data", "system"],'
        ' "classes": {"user_data": ["/data/**"], "system": ["/**"]}}'
    )
    assert r.classify("/data/x") == "user_data" and r.classify("/etc/x") == "system"
    with pytest.raises(UsageError, match="unknown path class"):
        parse_rules('{"lamina_rules": 1, "classes": {"secret": ["/x"]}}')
    with pytest.raises(UsageError, match="absolute"):
        parse_rules('{"lamina_rules": 1, "classes": {"system": ["etc/**"]}}')
    with pytest.raises(UsageError, match="version"):
        parse_rules('{"lamina_rules": 9}')


def test_rule_set_by_os_family() -> None:
    from lamina.layers.rules import for_os

    assert for_os({"ID": "ubuntu", "ID_LIKE": "debian"}).name == "debian"
    assert for_os({"ID": "rocky", "ID_LIKE": "rhel centos fedora"}).name == "rhel"
    assert for_os({"ID": "fedora"}).name == "rhel"
    assert for_os({}).name == "linux"
    rhel = for_os({"ID": "rhel"})
    assert rhel.classify("/var/cache/yum/x") == "excluded"


# --- stateful data is not "system" (review finding 15) -----------------------------
STATEFUL = [
    "/var/lib/postgresql/16/main/base/1/1259",
    "/var/lib/pgsql/data/postgresql.conf",
    "/var/lib/mysql/ibdata1",
    "/var/lib/mariadb/aria_log.00000001",
    "/var/lib/mongodb/WiredTiger",
    "/var/lib/redis/dump.rdb",
    "/var/lib/docker/volumes/db/_data/x",
    "/var/lib/containerd/io.containerd.content.v1.content/blobs/x",
    "/var/lib/containers/storage/overlay/x",
    "/var/lib/libvirt/images/vm.qcow2",
    "/var/mail/alice",
    "/var/spool/mail/bob",
    "/var/spool/cron/crontabs/alice",
    "/var/www/html/index.php",
]


@pytest.mark.parametrize("ruleset", ["linux", "debian", "rhel"])
@pytest.mark.parametrize("path", STATEFUL)
def test_stateful_data_is_kept_by_revert_and_never_carried_by_layers(
    ruleset: str, path: str
) -> None:
    """A system-only revert keeps user_data; a layer captures only system/applications."""
    rules = builtin(ruleset)
    assert rules.classify(path) == "user_data"
    assert not rules.capturable(path)


# --- rule globs match in linear time (review finding 13c) --------------------------
def _backtracking_regex(pattern: str) -> re.Pattern[str]:
    """The a188115 translation, kept as the reference semantics for the new matcher."""
    if not any(ch in pattern for ch in "*?"):
        return re.compile(re.escape(pattern.rstrip("/")) + r"(?:/.*)?\Z", re.DOTALL)
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("/**", i) and (i + 3 == len(pattern) or pattern[i + 3] == "/"):
            out.append("(?:/.*)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z", re.DOTALL)


@pytest.mark.timeout(20)
def test_hostile_glob_completes() -> None:
    """The review's `/**?**?...**Q`: k=12 stalled the server 2.47 s; larger k never ended."""
    k = MAX_WILDCARDS // 2
    pattern = "/" + "**?" * k + "Q"
    path = "/" + "a" * 4000
    assert not matches([pattern], path)
    assert matches([pattern], "/" + "ab/" * k + "xQ")
    with pytest.raises(UsageError, match="wildcards"):
        parse_rules('{"lamina_rules": 1, "classes": {"system": ["/' + "**?" * 300 + 'Q"]}}')


def test_undecodable_names_and_special_characters_match_as_one_character() -> None:
    """A name with bytes that are not UTF-8 (``surrogateescape``) is still matched;
    ``[`` and ``\\`` are plain characters in the rule-set format."""
    name = b"caf\xe9".decode(errors="surrogateescape")
    assert matches(["/home/*/Documents/**"], f"/home/{name}/Documents/x")
    assert matches(["/tmp/caf?"], f"/tmp/{name}") and not matches(["/tmp/caf??"], f"/tmp/{name}")
    assert matches(["/etc/[ab]"], "/etc/[ab]") and not matches(["/etc/[ab]"], "/etc/a")
    assert (
        matches(["/x\\*"], "/x\\yz") and matches(["/a.b"], "/a.b") and not matches(["/a.b"], "/axb")
    )


@pytest.mark.timeout(20)
def test_hostile_star_runs_in_one_component_complete() -> None:
    pattern = "/" + "*a" * (MAX_WILDCARDS // 2) + "b"
    assert not matches([pattern], "/" + "a" * 4000)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    pattern=st.text(alphabet="ab/*?[\\.é\udcff", max_size=12).map(lambda s: "/" + s),
    path=st.text(alphabet="ab/[\\.é\udcff", max_size=14).map(lambda s: "/" + s),
)
def test_matcher_agrees_with_the_glob_semantics(pattern: str, path: str) -> None:
    expected = _backtracking_regex(pattern).match(path) is not None
    assert compile_glob(pattern).match(path) == expected


def test_custom_rule_sets_need_layer_write(tmp_path: Path) -> None:
    """The review's repro: a readonly user posted a hostile rule set to /layers/rules/test."""
    from lamina.db.engine import make_engine
    from lamina.db.migrate import upgrade
    from lamina.db.stores import StoreLocation, init_store
    from lamina.server.security import ROLES, Principal
    from lamina.server.services.layers import test_rules

    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    upgrade(engine)
    store = init_store(StoreLocation(data=tmp_path / "data"))
    ro = Principal("user", "u1", "ro", "readonly", ROLES["readonly"])
    hostile = '{"lamina_rules": 1, "classes": {"system": ["/**?**?**?Q"]}}'
    with pytest.raises(ForbiddenError) as err:
        test_rules(engine, store, ro, "any-cvd", hostile)
    assert err.value.http_status == 403
    engine.dispose()


# --- the rule-set parser: any input is a rule set or a UsageError ---------------------
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
_keys = st.sampled_from(
    [
        "lamina_rules",
        "name",
        "order",
        "classes",
        "layers",
        *CLASSES,
        "capture_classes",
        "do_not_capture",
        "exceptions",
        "never_override",
        "text_config",
    ]
)
_doc = st.recursive(
    st.none() | st.integers(0, 2) | st.sampled_from([*CLASSES, "/x/**", "x", "/**?"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_keys, inner, max_size=5),
    max_leaves=25,
)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(doc=_doc)
def test_rule_parser_raises_only_usage_errors(doc: object) -> None:
    if isinstance(doc, dict):
        doc = {"lamina_rules": 1, **doc}
    with contextlib.suppress(UsageError):
        parse_rules(json.dumps(doc))


@settings(max_examples=100, deadline=None, derandomize=True)
@given(raw=st.binary(max_size=200) | _json.map(json.dumps))
def test_rule_parser_on_random_bytes(raw: bytes | str) -> None:
    with contextlib.suppress(UsageError):
        parse_rules(raw)


def test_linux_is_the_debian_rules_under_its_own_name() -> None:
    """One file per rule set: ``linux`` reads debian.json (no copy to drift apart)."""
    linux, debian = builtin("linux"), builtin("debian")
    assert linux.name == "linux" and debian.name == "debian"
    assert (linux.order, linux.classes, linux.layers) == (
        debian.order,
        debian.classes,
        debian.layers,
    )
    with pytest.raises(UsageError, match="no built-in rule set"):
        builtin("plan9")


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    patterns=st.lists(
        st.text(alphabet="ab/*?.\udcff", max_size=8).map(lambda s: "/" + s), max_size=3
    ),
    folder=st.text(alphabet="ab/.\udcff", max_size=6).map(lambda s: "/" + s),
    below=st.text(alphabet="ab/.\udcff", min_size=1, max_size=6),
)
def test_one_re2_per_group_and_folder_decisions_agree_with_each_glob(
    patterns: list[str], folder: str, below: str
) -> None:
    """``Globs`` (one RE2 for all patterns) matches as the patterns one by one do, and a
    folder it decides (``below``: True/False) gets that answer for every path under it."""
    g = globs(tuple(patterns))
    path = folder.rstrip("/") + "/" + below
    each = any(compile_glob(p).match(path) for p in patterns)
    assert g.match(path) == each
    decided = g.below(folder)
    if decided is not None:
        assert decided == each
