"""Exponential backoff for loops that retry Redis: short first waits so a blip costs little,
a cap so a long outage is retried at a steady pace, and a reset once a try succeeds."""

from __future__ import annotations

import asyncio


class Backoff:
    __slots__ = ("base", "cap", "delay", "factor")

    def __init__(self, base: float = 0.05, cap: float = 2.0, factor: float = 2.0) -> None:
        self.base = base
        self.cap = cap
        self.factor = factor
        self.delay = base

    def next(self) -> float:
        """The wait before the next try; each call lengthens the one after it, up to ``cap``."""
        delay = self.delay
        self.delay = min(self.delay * self.factor, self.cap)
        return delay

    def reset(self) -> None:
        self.delay = self.base

    async def sleep(self) -> None:
        await asyncio.sleep(self.next())
