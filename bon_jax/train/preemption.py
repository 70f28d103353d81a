"""SIGTERM / SIGINT handling for preemptible machines (Cloud TPU VMs send SIGTERM before preemption).

The handler only records the signal; the training loop polls `requested()` between steps, saves a
checkpoint and exits cleanly. Saving from inside a signal handler would race with the step in flight.
"""

from __future__ import annotations

import signal
import threading


class PreemptionGuard:
    """Context manager: while active, SIGTERM (and optionally SIGINT) set a flag instead of killing us."""

    def __init__(self, signals=(signal.SIGTERM,)):
        self._signals = tuple(signals)
        self._event = threading.Event()
        self._previous = {}
        self.received: int | None = None

    def _handle(self, signum, frame):
        self.received = signum
        self._event.set()

    def requested(self) -> bool:
        return self._event.is_set()

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in self._signals:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()
