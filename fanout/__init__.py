"""Fanout tier: client WebSockets out, events read from Redis."""
