"""``vski-ingest``: run the ingest app under gunicorn with the repository's gunicorn config."""

from __future__ import annotations

import sys

from common.config import ConfigError
from common.policy import PolicyError
from common.policy_source import policy_path, read_policy
from ingest.settings import load_ingest


def main(argv: list[str] | None = None) -> None:
    try:
        load_ingest()  # fail fast with a clear message before gunicorn starts
    except ConfigError as exc:
        sys.stderr.write(f"vski-ingest: configuration error: {exc}\n")
        raise SystemExit(2) from None
    try:
        read_policy(policy_path())
    except PolicyError as exc:
        sys.stderr.write(f"vski-ingest: policy error: {exc}\n")
        raise SystemExit(2) from None
    from gunicorn.app.wsgiapp import run

    extra = sys.argv[1:] if argv is None else argv
    sys.argv = ["vski-ingest", "--config", "python:ingest.gunicorn_conf", *extra, "ingest.wsgi:app"]
    run()


if __name__ == "__main__":
    main()
