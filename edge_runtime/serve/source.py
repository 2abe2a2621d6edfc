"""How `emo-edge serve` opens its source: a camera or stream that is not there yet is waited for.

``infer`` fails at once when its camera is missing (exit 2). A service cannot: restarted every few
seconds by systemd, it would never show its page. So serve opens a live source (cameraN,
/dev/videoN, picamN, a stream URL) that cannot be opened yet as a :class:`WaitingSource`: the
page and API start at once, ``state`` says "not found, retrying" (and ``error`` why), and the
source is opened again with backoff until it appears. Anything else that is wrong (a missing
file, a bad URL scheme, picamera2 not installed) is still a one-line error at start.
"""
from __future__ import annotations

import importlib.util
import re
from typing import Callable, Iterator, Optional

from ..errors import EmoError
from ..sources import STREAM_SCHEMES, Frame, open_source, warn
from ..stopping import StopFlag

FIRST_DELAY, MAX_DELAY = 0.5, 5.0  # seconds between attempts to open: doubling up to MAX_DELAY


def may_appear(source: str) -> bool:
    """Whether ``source`` is something that can appear later: a camera, or a stream that may come up."""
    if re.fullmatch(r"camera\d+|/dev/video\d+", source):
        return True
    if re.fullmatch(r"picam\d+", source):
        return importlib.util.find_spec("picamera2") is not None
    m = re.match(r"([a-zA-Z][a-zA-Z0-9+.-]*)://", source)
    return bool(m) and m.group(1).lower() in STREAM_SCHEMES


class WaitingSource:
    """A live source that could not be opened yet: opened again with backoff (up to ``attempts``
    times, cut short by the stop flag) until it appears, then read like any other."""

    live = True

    def __init__(self, label: str, open_fn: Callable[[], object], attempts: int, stop: StopFlag, error: str):
        self.label, self._open_fn, self.attempts, self.stop = label, open_fn, attempts, stop
        self.error: Optional[str] = error  # why the last attempt failed; None once open
        self.inner = None
        self.fps, self.size = 0.0, None
        warn(f"{label}: not found, retrying ({error})")

    @property
    def state(self) -> str:
        return getattr(self.inner, "state", "up") if self.inner is not None else "not found, retrying"

    @property
    def reconnects(self) -> int:
        return getattr(self.inner, "reconnects", 0) if self.inner is not None else 0

    def __iter__(self) -> Iterator[Frame]:
        if self._open_when_there():
            yield from self.inner

    def _open_when_there(self) -> bool:
        delay, attempt = FIRST_DELAY, 1
        while not self.stop.wait(delay):
            attempt += 1
            try:
                self.inner = self._open_fn()
            except EmoError as e:
                if self.stop.reason:
                    return False
                self.error = str(e)
                if attempt >= self.attempts:
                    raise EmoError(f"{self.label}: not found after {attempt} attempts ({e})") from None
                if attempt & (attempt - 1) == 0:  # attempts 2, 4, 8, ...: the log stays short
                    warn(f"{self.label}: not found, retrying (attempt {attempt})")
                delay = min(2 * delay, MAX_DELAY)
                continue
            self.fps, self.size, self.error = self.inner.fps, self.inner.size, None
            warn(f"{self.label} is here (attempt {attempt}); starting")
            return True
        return False

    def close(self) -> None:
        if self.inner is not None:
            self.inner.close()


def open_or_wait(o, stop: StopFlag):
    """The source of a serve job (runner.JobOptions ``o``): opened now, or a WaitingSource when it is a
    live source that is not there yet and ``o.reconnect`` allows retries."""
    def open_now():
        return open_source(o.source, o.width, o.height, o.fps, o.reconnect, stop=stop, timeout=o.timeout)

    try:
        return open_now()
    except EmoError as e:
        if stop.reason or o.reconnect <= 0 or not may_appear(o.source):
            raise
        return WaitingSource(o.source, open_now, o.reconnect, stop, str(e))
