"""Files emo can download on request (`emo-edge fetch NAME`) into a per-user cache.

This is the only download emo ever does, and only when a user runs `emo-edge fetch`. A file is
pinned by SHA-256, streamed to a temporary name in the cache and renamed only once its checksum
matches, so nothing half-written or unverified is ever found in the cache.

The mirror is not trusted: the download stops at the most bytes the file can have (its pinned size,
or the asset's ``max_bytes`` for another release) and a Content-Length above that is refused before
a byte is read; the whole download, redirects included, has a deadline; and SIGTERM, SIGINT or
SIGHUP during it raise :class:`Stopped`, so the temporary file is removed on every way out.

The cache is ``$EMO_CACHE_DIR``, else ``$XDG_CACHE_HOME/emo``, else ``~/.cache/emo``.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from .errors import EmoError
from .files import atomic_output, shown

DEADLINE = 120.0  # seconds for a whole download (`emo-edge fetch --deadline`)
CHUNK = 65536
STOP_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP")


@dataclass(frozen=True)
class Asset:
    name: str
    file: str
    url: str
    sha256: str
    size: int  # bytes of the pinned file
    what: str
    max_bytes: int  # the most any release may have (for a --sha256 other than the pinned one)


ASSETS = {
    "yunet": Asset(
        "yunet", "face_detection_yunet_2023mar.onnx",
        "https://github.com/opencv/opencv_zoo/raw/main/models/face_detection_yunet/face_detection_yunet_2023mar.onnx",
        "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4", 232_589,
        "YuNet face detector (opencv_zoo, MIT licence): finds more faces than Haar, gives eye landmarks",
        max_bytes=1 << 20),
}


class Stopped(Exception):
    """A signal stopped a download (the temporary file is gone); ``code`` is the shell's exit status."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.code = 128 + signum


class _Refused(Exception):
    """The mirror sent something no copy of the file can be: too big, or too slow."""


class _TooSlow(_Refused):
    """The deadline passed (a stalled or trickling mirror)."""


def cache_dir() -> Path:
    if os.environ.get("EMO_CACHE_DIR"):
        return Path(os.environ["EMO_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "emo"


def fetch_command(name: str) -> str:
    """The command that puts ``name`` into this process's cache (naming EMO_CACHE_DIR when it is set)."""
    env = f"EMO_CACHE_DIR={shown(cache_dir())} " if os.environ.get("EMO_CACHE_DIR") else ""
    return f"{env}emo-edge fetch {name}"


def asset(name: str) -> Asset:
    if name not in ASSETS:
        raise EmoError(f"emo cannot fetch '{name}'; it knows: {', '.join(ASSETS)}")
    return ASSETS[name]


def cached(name: str) -> Optional[Path]:
    """The asset's file in the cache, if it is there (put there by fetch, or by hand)."""
    p = cache_dir() / asset(name).file
    return p if p.is_file() else None


def fetch(name: str, url: Optional[str] = None, sha256: Optional[str] = None, timeout: float = 30.0,
          deadline: Optional[float] = None) -> Path:
    """Download an asset into the cache, verified, atomically; returns its path. ``timeout`` is per
    read, ``deadline`` (default DEADLINE) for the whole download. Raises EmoError, or Stopped on
    SIGTERM/SIGINT/SIGHUP."""
    a, deadline = asset(name), deadline or DEADLINE
    url, want = url or a.url, (sha256 or a.sha256).lower()
    cap = a.size if want == a.sha256 else a.max_bytes
    dest = cache_dir() / a.file
    by_hand = f"download {a.url} yourself and put it at {shown(dest)}"
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EmoError(f"cannot create the cache folder {shown(dest.parent)} ({e.strerror}); set EMO_CACHE_DIR") from None
    try:  # the signals raise inside atomic_output, whose clean-up removes the temporary file on any exit
        with _signals_raise(deadline), atomic_output(dest) as tmp:
            try:
                got = _download(url, tmp, timeout, cap, time.monotonic() + deadline)
            except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
                reason = str(getattr(e, "reason", None) or e).strip() or type(e).__name__
                raise EmoError(f"cannot download {url} ({reason[:100]}); offline? {by_hand}") from None
            if got != want:
                raise EmoError(f"{url} does not have the expected SHA-256 (got {got[:16]}..., want {want[:16]}...); "
                               f"nothing was saved. Try again later, or {by_hand}")
    except _Refused as e:
        why = f"did not arrive within {deadline:g} s (allow more with --deadline)" if isinstance(e, _TooSlow) else str(e)
        raise EmoError(f"{url} {why}; nothing was saved. Try another mirror, or {by_hand}") from None
    return dest


def _download(url: str, tmp: Path, timeout: float, cap: int, end: float) -> str:
    """Stream ``url`` into ``tmp``, at most ``cap`` bytes, until ``end`` (time.monotonic); the
    SHA-256 of what arrived (a cut connection raises ValueError, a hostile mirror _Refused)."""
    h, n = hashlib.sha256(), 0
    req = urllib.request.Request(url, headers={"User-Agent": "emo-edge fetch"})
    with urllib.request.urlopen(req, timeout=timeout) as r, open(tmp, "wb") as out:
        expected = _declared_length(r, cap)
        while chunk := r.read1(CHUNK):  # what has arrived: a trickle cannot hold a read for long
            n += len(chunk)
            if n > cap:
                raise _Refused(f"sent more than the {cap:,} bytes this file can have")
            if time.monotonic() > end:
                raise _TooSlow
            h.update(chunk)
            out.write(chunk)
        if expected is not None and n != expected:
            raise ValueError(f"the connection was cut after {n} of {expected} bytes")
        out.flush()
        os.fsync(out.fileno())
    return h.hexdigest()


def _declared_length(r, cap: int) -> Optional[int]:
    """The response's Content-Length (None without one); refused when unreadable or above ``cap``."""
    values = {v.strip() for v in r.headers.get_all("Content-Length") or []}
    if not values:
        return None
    if len(values) > 1 or not next(iter(values)).isdigit():
        raise _Refused(f"sent an invalid Content-Length ({', '.join(sorted(values))[:40]})")
    n = int(values.pop())
    if n > cap:
        raise _Refused(f"announces {n:,} bytes, more than the {cap:,} this file can have")
    return n


@contextmanager
def _signals_raise(deadline: float) -> Iterator[None]:
    """While downloading: SIGTERM, SIGINT and SIGHUP raise Stopped, and an alarm at ``deadline``
    seconds raises _TooSlow even inside a blocked read. Signals work in the main thread only;
    elsewhere (and where there is no setitimer) only the deadline checks between reads apply."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return
    fired: list = []

    def handler(signum, frame) -> None:
        if fired:  # only the first: a second signal must not cut the clean-up short
            return
        fired.append(signum)
        raise _TooSlow if signum == signal.SIGALRM else Stopped(signum)

    old = {s: signal.signal(s, handler) for s in (*(getattr(signal, n) for n in STOP_SIGNALS), signal.SIGALRM)}
    signal.setitimer(signal.ITIMER_REAL, deadline)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for s, h in old.items():
            signal.signal(s, h)
