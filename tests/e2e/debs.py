"""Real Debian packages for tests: built with dpkg-deb, installed with dpkg --root."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


def init_dpkg(root: Path) -> None:
    db = root / "var/lib/dpkg"
    for d in ("info", "updates", "triggers", "alternatives"):
        (db / d).mkdir(parents=True, exist_ok=True)
    for f in ("status", "available"):
        (db / f).touch()


def build_deb(
    work: Path, name: str, version: str, files: dict[str, bytes | str], desktop: str | None = None
) -> Path:
    pkg = work / f"{name}-{version}"
    if pkg.exists():
        shutil.rmtree(pkg)
    (pkg / "DEBIAN").mkdir(parents=True)
    (pkg / "DEBIAN/control").write_text(
        f"Package: {name}\nVersion: {version}\nArchitecture: all\nMaintainer: Lamina Tests <t@example.org>\n"
        f"Description: {name} for tests\n"
    )
    conffiles = []
    for rel, data in files.items():
        p = pkg / rel.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data.encode() if isinstance(data, str) else data)
        if rel.startswith("/usr/bin/"):
            p.chmod(0o755)
        if rel.startswith("/etc/"):
            conffiles.append(rel)
    if conffiles:
        (pkg / "DEBIAN/conffiles").write_text("".join(f"{c}\n" for c in conffiles))
    if desktop:
        d = pkg / f"usr/share/applications/{name}.desktop"
        d.parent.mkdir(parents=True, exist_ok=True)
        d.write_text(f"[Desktop Entry]\nType=Application\nName={desktop}\nExec={name}\n")
    out = work / f"{name}_{version}_all.deb"
    subprocess.run(
        ["dpkg-deb", "--build", "--root-owner-group", str(pkg), str(out)],
        check=True,
        capture_output=True,
    )
    return out


def dpkg_install(root: Path, deb: Path) -> None:
    subprocess.run(
        [
            "dpkg",
            f"--root={root}",
            "--log=/dev/null",
            "--force-script-chrootless",
            "--force-not-root",
            "--force-confnew",
            "-i",
            str(deb),
        ],
        check=True,
        capture_output=True,
    )


def dpkg_installed(root: Path) -> dict[str, str]:
    out = subprocess.run(
        ["dpkg-query", f"--root={root}", "-W", "-f=${Package} ${Version} ${db:Status-Abbrev}\n"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return {
        p: v for p, v, st in (line.split(" ", 2) for line in out.splitlines()) if st.strip() == "ii"
    }
