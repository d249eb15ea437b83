from __future__ import annotations

import pytest

from lamina.errors import UsageError
from lamina.layers.rules import builtin, matches, parse_rules


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
    assert rhel.layers.package_databases == ()
    assert for_os({"ID": "debian"}).layers.package_databases == (("/var/lib/dpkg/status", "dpkg"),)
