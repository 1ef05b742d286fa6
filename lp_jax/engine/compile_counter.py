"""Counts XLA backend compilations in this process (every jit, AOT compile or eager op that
compiles). The engine reads it after start-up; serving must not move it."""

from __future__ import annotations

import threading

from jax import monitoring

_BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_lock = threading.Lock()
_count = 0


def _listener(event: str, duration_s: float, **kwargs) -> None:
    global _count
    if event == _BACKEND_COMPILE_EVENT:
        with _lock:
            _count += 1


monitoring.register_event_duration_secs_listener(_listener)


def count() -> int:
    """Backend compilations so far in this process."""
    return _count
