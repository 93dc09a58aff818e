"""Local development stack: ``vski-realtime dev``, embedded Redis, CLI helpers, console page."""
