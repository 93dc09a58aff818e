"""Ingest tier: VSKI webhooks in (HTTP, Falcon under gunicorn), events stored in Redis."""
