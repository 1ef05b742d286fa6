"""The simulator's clock: virtual seconds that advance only when something says so.

The engine reads time by calling its clock (`clock()`, as it calls time.perf_counter); the bench
runner waits for the next arrival through `clock.wait_until(t)`. The simulated executor advances
the clock by the host time it models (scheduling, row building, launches) and, when the engine
reads an iteration back, to the moment its tokens reach the host.
"""

from __future__ import annotations


class VirtualClock:
    """Virtual time in seconds, starting at `start_s`; never goes backwards."""

    __slots__ = ("now",)

    def __init__(self, start_s: float = 0.0):
        self.now = float(start_s)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        """Move forward by `seconds` (>= 0); returns the new time."""
        if seconds < 0:
            raise ValueError(f"a clock cannot go back: advance({seconds})")
        self.now += seconds
        return self.now

    def wait_until(self, t: float) -> None:
        """Return with the clock at max(now, t): what sleeping until `t` does to a wall clock."""
        if t > self.now:
            self.now = float(t)
