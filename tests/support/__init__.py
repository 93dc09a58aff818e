"""Real-process test support: Redis servers, ingest and fanout processes, tokens, ports."""
