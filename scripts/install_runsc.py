#!/usr/bin/env python3
"""Install a current gVisor runsc from Debian's archive, verified end to end.

Debian 12's own runsc (release 20221219) cannot run Debian 12 itself well: its
statx rejects AT_NO_AUTOMOUNT, so coreutils' ``ls`` fails inside sandboxes,
and it has no systrap platform. Debian 13 (trixie) ships a 2024 release, a
static Go binary that runs on Debian 12 unchanged. This script takes it from
the Debian archive with the chain of trust apt itself uses:

    InRelease (signature checked by gpgv with debian-archive-keyring)
      -> SHA256 of main/binary-amd64/Packages.xz
      -> SHA256 of the runsc .deb
      -> /usr/local/lib/corral/bin/runsc

Idempotent: does nothing when that runsc is already there. Stdlib only.
"""

from __future__ import annotations

import hashlib
import lzma
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

MIRROR = os.environ.get("CORRAL_DEBIAN_MIRROR", "http://deb.debian.org/debian")
SUITE = "trixie"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
DEST = Path("/usr/local/lib/corral/bin/runsc")
ARCHES = {"x86_64": "amd64", "aarch64": "arm64"}


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=120) as resp:
        return bytes(resp.read())


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def main() -> int:
    if DEST.exists() and "--force" not in sys.argv:
        print(f"runsc: {DEST} is already installed")
        return 0
    arch = ARCHES.get(platform.machine())
    if arch is None:
        print(f"runsc: no Debian build for {platform.machine()}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        release = work / "InRelease"
        release.write_bytes(fetch(f"{MIRROR}/dists/{SUITE}/InRelease"))
        verified = work / "Release"
        subprocess.run(["gpgv", "--keyring", KEYRING, "--output", str(verified), str(release)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        index_name = f"main/binary-{arch}/Packages.xz"
        index_sum = _release_sha256(verified.read_text(), index_name)
        packages_xz = fetch(f"{MIRROR}/dists/{SUITE}/{index_name}")
        if sha256(packages_xz) != index_sum:
            raise SystemExit(f"runsc: checksum mismatch for {index_name}")
        stanza = _package_stanza(lzma.decompress(packages_xz).decode(), "runsc")
        deb = fetch(f"{MIRROR}/{stanza['Filename']}")
        if sha256(deb) != stanza["SHA256"]:
            raise SystemExit("runsc: checksum mismatch for the .deb")
        (work / "runsc.deb").write_bytes(deb)
        subprocess.run(["dpkg-deb", "-x", str(work / "runsc.deb"), str(work / "x")], check=True)
        DEST.parent.mkdir(parents=True, exist_ok=True)
        staged = DEST.with_suffix(".new")
        shutil.copy2(work / "x" / "usr" / "bin" / "runsc", staged)
        staged.chmod(0o755)
        staged.rename(DEST)
    version = subprocess.run([str(DEST), "--version"], capture_output=True, text=True).stdout.splitlines()
    print(f"runsc: installed {DEST} ({version[0] if version else stanza['Version']})")
    return 0


def _release_sha256(release: str, name: str) -> str:
    in_sha256 = False
    for line in release.splitlines():
        if not line.startswith(" "):
            in_sha256 = line.startswith("SHA256:")
            continue
        parts = line.split()
        if in_sha256 and len(parts) == 3 and parts[2] == name:
            return parts[0]
    raise SystemExit(f"runsc: {name} is not listed in the {SUITE} Release file")


def _package_stanza(packages: str, name: str) -> dict[str, str]:
    for block in packages.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line and not line.startswith(" ") and ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if fields.get("Package") == name:
            return fields
    raise SystemExit(f"runsc: package {name} is not in {SUITE}")


if __name__ == "__main__":
    sys.exit(main())
