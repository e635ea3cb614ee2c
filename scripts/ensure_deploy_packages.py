#!/usr/bin/env python3
"""Make sure nginx and PostgreSQL are there for the deployment test: install Debian's packages when possible.

When they are missing and cannot be installed here (not root, or no apt-get) this says so and
exits 0: tests/test_deployment.py then skips with the same reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path


def postgres_bin() -> Path | None:
    """Debian keeps the server programs in /usr/lib/postgresql/<major>/bin, off PATH; the newest major wins."""
    majors = [p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/initdb") if p.parent.parent.name.isdigit()]
    if majors:
        return max(majors, key=lambda bin_dir: int(bin_dir.parent.name))
    initdb = shutil.which("initdb")  # other systems put them on PATH
    return Path(initdb).resolve().parent if initdb else None


def nginx() -> Path | None:
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    return Path(found) if found else None


def missing() -> list[str]:
    """The Debian packages to install."""
    return [package for package, found in (("nginx", nginx()), ("postgresql", postgres_bin())) if found is None]


def why_unavailable() -> str | None:
    """None once nginx and PostgreSQL are there (installing them if this runs as root with apt-get)."""
    needed = missing()
    if not needed:
        return None
    apt = shutil.which("apt-get")
    if not apt or os.geteuid() != 0:
        return (
            f"{' and '.join(needed)} not installed, and installing needs root and apt-get "
            f"(Debian: apt-get install {' '.join(needed)})"
        )
    print(f"Installing Debian's {' and '.join(needed)} for the deployment test ...", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([apt, "update", "-qq"], check=True, env=env, stdin=subprocess.DEVNULL)
    subprocess.run([apt, "install", "-y", "-qq", *needed], check=True, env=env, stdin=subprocess.DEVNULL)
    still = missing()
    return f"{' and '.join(still)} still missing after apt-get install" if still else None


def main() -> int:
    reason = why_unavailable()
    if reason:
        print(f"{reason}; tests/test_deployment.py will be skipped.", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
