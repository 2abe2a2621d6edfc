"""The stop flag that SIGINT and SIGTERM set, shared by the frame loop and the trainer.

A long job installs it, checks ``stop.reason`` between units of work (a frame, a step), and
waits with ``stop.wait(seconds)`` instead of ``time.sleep``, so that a signal cuts a wait short.
A second Ctrl-C raises KeyboardInterrupt for a job that is stuck.
"""
from __future__ import annotations

import signal
import threading
from typing import Optional


class StopFlag:
    """Set by SIGINT/SIGTERM (or :meth:`set`); the job finishes its current unit, then cleans up."""

    def __init__(self) -> None:
        self.reason: Optional[str] = None
        self._event = threading.Event()
        self._old: dict = {}

    def set(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
        self._event.set()

    def __call__(self, signum, frame) -> None:
        if self.reason is not None and signum == signal.SIGINT:  # a second Ctrl-C: stop waiting
            raise KeyboardInterrupt
        self.set(signal.Signals(signum).name)

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True as soon as a stop was asked for."""
        return self._event.wait(max(0.0, seconds))

    def install(self) -> "StopFlag":
        """Handle SIGINT and SIGTERM (main thread only; elsewhere this does nothing)."""
        if threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def restore(self) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old = {}

    @property
    def exit_code(self) -> int:
        """The shell's convention: 128 + the signal number (130 for SIGINT, 143 for SIGTERM)."""
        return {"SIGINT": 130, "SIGTERM": 143}.get(self.reason or "", 0)
