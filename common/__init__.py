"""Shared core of vski-realtime: message types, Redis key layout, event ids, JWT, config, logs."""
