"""layers/capture.py: a base layer filters a snapshot; an app layer is a difference."""

from __future__ import annotations

from lamina.layers.capture import capture_app, capture_base
from lamina.layers.rules import builtin
from lamina.tree.paths import index, read_file
from tests.layers.golden_plan import MemoryTrees

STATUS = (
    "Package: base-files\nStatus: install ok installed\nVersion: 12\n\n"
    "Package: gone\nStatus: deinstall ok config-files\nVersion: 1\n\n"
)
REFERENCE = {
    "/usr/bin/sh": "sh",
    "/etc/hostname": "ref-host\n",  # machine identity: never in a layer
    "/etc/passwd": "root\n",  # do_not_capture
    "/home/alice/notes.txt": "mine\n",  # user data
    "/var/log/syslog": "log\n",  # excluded
    "/opt/tool/bin": "tool",
    "/var/lib/dpkg/status": STATUS,
    "/usr/share/applications/tool.desktop": "[Desktop Entry]\nName=The Tool\n",
}


def test_base_layer_keeps_only_what_a_layer_may_carry() -> None:
    t = MemoryTrees()
    cap = capture_base(t.load, t.put, t.tree(REFERENCE), builtin("debian"))
    files = {p for p, e in index(t.load, cap.root).items() if e.type != "dir"}
    assert files == {
        "/usr/bin/sh",
        "/opt/tool/bin",
        "/var/lib/dpkg/status",
        "/usr/share/applications/tool.desktop",
    }
    assert cap.dropped == 4 and cap.files == 4 and cap.whiteouts == []
    assert cap.apps == {"packages": {"base-files": "12"}, "desktop": ["The Tool"]}


def test_app_layer_is_the_difference_with_whiteouts() -> None:
    t = MemoryTrees()
    start = {**REFERENCE, "/opt/old/a": "a", "/opt/old/sub/b": "b"}
    end = {k: v for k, v in REFERENCE.items() if k != "/usr/bin/sh"}
    end.update(
        {
            "/opt/tool/bin": "tool 2",
            "/opt/new/run": "new",
            "/home/alice/notes.txt": "changed by the user",  # user data: not captured
            "/var/lib/dpkg/status": STATUS + "Package: new-app\nStatus: install ok installed\n"
            "Version: 3\n\n",
        }
    )
    cap = capture_app(t.load, t.put, t.tree(start), t.tree(end), builtin("debian"))
    entries = index(t.load, cap.root)
    files = {p for p, e in entries.items() if e.type != "dir"}
    assert files == {"/opt/tool/bin", "/opt/new/run", "/var/lib/dpkg/status"}
    assert read_file(t.load, entries["/opt/tool/bin"]) == b"tool 2"
    # a removed folder is one whiteout, not one per file inside it
    assert cap.whiteouts == ["/opt/old", "/usr/bin"]  # /usr/bin held only sh
    assert cap.apps["packages"] == {"new-app": "3"}  # only what the recording changed


def test_nothing_captured_is_an_empty_tree() -> None:
    t = MemoryTrees()
    cap = capture_base(t.load, t.put, t.tree({"/home/a/x": "x"}), builtin("debian"))
    assert index(t.load, cap.root) == {} and cap.files == 0 and cap.dropped == 1
