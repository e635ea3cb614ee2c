#!/usr/bin/env python3
"""Make sure headless Chromium is there for the browser test: install Debian's package when possible."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys


def main() -> int:
    if shutil.which("chromium") or os.environ.get("KASOCKI_CHROMIUM"):
        return 0
    apt = shutil.which("apt-get")
    if apt and os.geteuid() == 0:
        print("Installing Debian's chromium for the browser test ...", file=sys.stderr)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run([apt, "update", "-qq"], check=True, env=env, stdin=subprocess.DEVNULL)
        subprocess.run([apt, "install", "-y", "-qq", "chromium"], check=True, env=env, stdin=subprocess.DEVNULL)
        return 0
    print(
        "chromium is not installed and cannot be installed here (needs root and apt-get);\n"
        "install it (Debian: apt-get install chromium) or set KASOCKI_CHROMIUM to a Chromium binary.",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
