"""Merges: text configuration three ways (merge3), package databases per package."""

from __future__ import annotations

from dataclasses import dataclass

import merge3


@dataclass(frozen=True)
class TextMerge:
    clean: bool
    text: bytes


def is_text(data: bytes) -> bool:
    if b"\0" in data[:8192] or len(data) > 4 * 1024 * 1024:
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def merge_text(base: bytes, ours: bytes, theirs: bytes) -> TextMerge:
    """``ours``: the endpoint's edited copy; ``theirs``: the new layer version."""
    m = merge3.Merge3(
        base.decode().splitlines(keepends=True),
        ours.decode().splitlines(keepends=True),
        theirs.decode().splitlines(keepends=True),
    )
    clean = all(g[0] != "conflict" for g in m.merge_groups())
    if not clean:
        return TextMerge(False, ours)
    return TextMerge(True, "".join(m.merge_lines()).encode())


# --- dpkg's status database ---------------------------------------------------------
def parse_dpkg_status(data: bytes) -> dict[str, str]:
    """Package name -> its stanza (text, without the blank line that ends it)."""
    out: dict[str, str] = {}
    for stanza in data.decode("utf-8", errors="surrogateescape").split("\n\n"):
        stanza = stanza.strip("\n")
        if not stanza:
            continue
        name = None
        arch = ""
        for line in stanza.splitlines():
            if line.startswith("Package:"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("Architecture:"):
                arch = line.split(":", 1)[1].strip()
        if name:
            key = f"{name}:{arch}" if arch and arch not in ("all",) else name
            out[key] = stanza
    return out


def installed(stanzas: dict[str, str]) -> dict[str, str]:
    """Installed packages -> version."""
    out = {}
    for key, stanza in stanzas.items():
        fields = dict(
            line.split(":", 1)
            for line in stanza.splitlines()
            if ":" in line and not line.startswith(" ")
        )
        if "install ok installed" in fields.get("Status", ""):
            out[key.split(":")[0]] = fields.get("Version", "").strip()
    return out


def render_dpkg_status(stanzas: dict[str, str]) -> bytes:
    return "".join(f"{stanzas[k]}\n\n" for k in sorted(stanzas)).encode(
        "utf-8", errors="surrogateescape"
    )


def merge_dpkg_status(
    layers: list[dict[str, str]], endpoint: dict[str, str], owned_before: set[str]
) -> dict[str, str]:
    """Layers' packages in assigned order (later wins), plus the endpoint's own packages:
    those no previous layer owned (installed by the user) stay listed."""
    out: dict[str, str] = {}
    for layer in layers:
        out.update(layer)
    for key, stanza in endpoint.items():
        if key not in out and key not in owned_before:
            out[key] = stanza
    return out


def merge_dpkg_live(
    base: dict[str, str], live: dict[str, str], planned: dict[str, str]
) -> dict[str, str]:
    """Per package, three ways: the server planned from ``base`` (the last snapshot);
    the endpoint is at ``live`` now. A package the endpoint did not change since
    takes the plan's stanza; one the plan left as it was keeps the endpoint's;
    changed on both sides, the plan (the layer) wins."""
    out: dict[str, str] = {}
    for key in sorted(set(base) | set(live) | set(planned)):
        b, now, p = base.get(key), live.get(key), planned.get(key)
        v = p if now == b or p != b else now
        if v is not None:
            out[key] = v
    return out
