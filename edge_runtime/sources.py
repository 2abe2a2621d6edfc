"""Frame sources: cameras (V4L2 via OpenCV, picamera2), video files, stream URLs, images,
folders and globs. Every source is a :class:`Source`: it yields :class:`Frame` objects, is closed
with ``close()`` and says what it is (label, live, stills, fps, size, files, state, reconnects,
error), so callers read those attributes and never probe for them.

A source knows whether it is live (a camera, a live stream) or finite (a file, a recording
served over http). A finite source ends; a live source that drops out is reopened with
exponential backoff (:mod:`.capture`). :func:`open_source` turns a SOURCE string into a source;
:func:`open_or_wait` (serve) waits for a camera or stream that is not there yet.
"""
from __future__ import annotations

import importlib.util
import os
import re
import sys
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np

from .capture import DEFAULT_TIMEOUT, PicameraSource, VideoSource
from .errors import EmoError
from .files import IMAGE_EXTS, VIDEO_EXTS, check_file, exists, is_dir, read_image, shown
from .frames import Frame, Source, warn
from .stopping import StopFlag

__all__ = ["DEFAULT_TIMEOUT", "STREAM_SCHEMES", "Frame", "ImageSource", "PicameraSource", "Source", "VideoSource",
           "WaitingSource", "glob_images", "open_or_wait", "open_source", "warn"]

STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp")
FIRST_DELAY, MAX_DELAY = 0.5, 5.0  # seconds between attempts to open a source that is not there yet


class ImageSource:
    """One image, a folder of images, or a glob. Unreadable files in a folder are skipped with a
    warning each and a count at the end; a single image that cannot be read is an error."""

    live, stills, reconnects, error = False, True, 0, None

    def __init__(self, paths: list[Path], label: str, strict: bool, first: Optional[np.ndarray] = None):
        self.paths, self.label, self.strict = paths, label, strict
        self.files = paths
        self._first = first  # the first file, already decoded (a single image is checked when opened)
        self.state = "up"  # "ended" once every file was read
        self.fps = 0.0
        self.size: Optional[tuple[int, int]] = None
        self.skipped = 0

    def __iter__(self) -> Iterator[Frame]:
        first, self._first = self._first, None  # used once: a second iteration reads the file again
        for i, p in enumerate(self.paths):
            try:
                img = first if i == 0 and first is not None else read_image(p)
            except EmoError as e:
                if self.strict:
                    raise
                self.skipped += 1
                warn(f"skipping {e}")
                continue
            yield Frame(img, i, 0.0, shown(p.name))
        self.state = "ended"
        if self.skipped:
            warn(f"skipped {self.skipped} of {len(self.paths)} files that could not be read (see above)")

    def close(self) -> None:
        pass


def glob_images(pattern: str) -> list[Path]:
    """Image files matching ``pattern`` (``**`` recurses), each once, sorted. Symlinked folders are
    not followed, so a link loop cannot make the search endless."""
    parts = Path(pattern).parts
    n = next((i for i, s in enumerate(parts) if any(c in s for c in "*?[")), len(parts))
    root, rest = Path(*parts[:n]) if n else Path("."), "/".join(parts[n:])
    if not rest:
        return []
    seen, out = set(), []
    for p in root.glob(rest):  # pathlib's ** does not descend into symlinked folders
        key = os.path.realpath(p)
        if p.suffix.lower() in IMAGE_EXTS and key not in seen and os.path.isfile(p):
            seen.add(key)
            out.append(p)
    return sorted(out)


def open_source(source: str, width: int = 0, height: int = 0, fps: float = 0, reconnect: int = 10,
                stop: Optional[StopFlag] = None, timeout: float = DEFAULT_TIMEOUT):
    """SOURCE string -> a frame source. See ``emo-edge infer --help`` for the accepted forms."""
    if not source or not source.strip():
        raise EmoError("the source is empty; give an image, a folder, a video, a URL, cameraN or picamN")
    m = re.fullmatch(r"camera(\d+)", source)
    if m:
        if sys.platform.startswith("linux") and not exists(f"/dev/video{m.group(1)}"):
            raise EmoError(f"{source}: no such camera (/dev/video{m.group(1)} does not exist); check `ls /dev/video*` "
                           "or use picam0 for a Raspberry Pi camera module")
        return VideoSource(int(m.group(1)), source, True, width, height, fps, reconnect, stop=stop, timeout=timeout)
    if re.fullmatch(r"/dev/video\d+", source):
        if not exists(source):
            raise EmoError(f"{source}: no such camera device; check `ls /dev/video*`")
        return VideoSource(source, source, True, width, height, fps, reconnect, stop=stop, timeout=timeout)
    m = re.fullmatch(r"picam(\d+)", source)
    if m:
        return PicameraSource(int(m.group(1)), width, height, fps, stop=stop)
    m = re.match(r"([a-zA-Z][a-zA-Z0-9+.-]*)://", source)
    if m:
        if m.group(1).lower() not in STREAM_SCHEMES:
            raise EmoError(f"unsupported URL scheme '{m.group(1)}' in {source}; use rtsp://, http:// or https://")
        return VideoSource(source, source, True, reconnect=reconnect, stop=stop, timeout=timeout)
    label = shown(source)
    if any(c in source for c in "*?[") and not exists(source):
        paths = glob_images(source)
        if not paths:
            raise EmoError(f"no images match {label}")
        return ImageSource(paths, label, strict=False)
    if is_dir(source):
        p = Path(source)
        try:
            paths = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_EXTS and os.path.isfile(f))
        except OSError as e:
            raise EmoError(f"cannot list folder {label}: {e.strerror}") from None
        if not paths:
            raise EmoError(f"folder {label} holds no images ({', '.join(sorted(IMAGE_EXTS))})")
        return ImageSource(paths, label, strict=False)
    if not exists(source) and len(os.fsencode(Path(source).name)) <= 255:
        raise EmoError(f"source {label} not found: give an image, a folder, a video, a URL, cameraN or picamN")
    p = check_file(source, "source")  # a name too long, a FIFO or a device: one line, before anything blocks
    if p.suffix.lower() in IMAGE_EXTS:  # decoded now, so a corrupt file fails before anything starts
        return ImageSource([p], label, strict=True, first=read_image(p))
    if p.suffix.lower() in VIDEO_EXTS:
        return VideoSource(p, label, False, stop=stop)
    try:  # unknown extension: try as an image, then as a video
        return ImageSource([p], label, strict=True, first=read_image(p))
    except EmoError:
        pass
    try:
        return VideoSource(p, label, False, stop=stop)
    except EmoError:
        raise EmoError(f"{label} is neither an image nor a video OpenCV can decode") from None


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

    live, stills = True, False

    def __init__(self, label: str, open_fn: Callable[[], Source], attempts: int, stop: StopFlag, error: str):
        self.label, self._open_fn, self.attempts, self.stop = label, open_fn, attempts, stop
        self.error: Optional[str] = error  # why the last attempt failed; None once open
        self.inner: Optional[Source] = None
        self.fps, self.size, self.files = 0.0, None, []
        warn(f"{label}: not found, retrying ({error})")

    @property
    def state(self) -> str:
        return self.inner.state if self.inner is not None else "not found, retrying"

    @property
    def reconnects(self) -> int:
        return self.inner.reconnects if self.inner is not None else 0

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


def open_or_wait(source: str, width: int = 0, height: int = 0, fps: float = 0, reconnect: int = 10,
                 stop: Optional[StopFlag] = None, timeout: float = DEFAULT_TIMEOUT) -> Source:
    """Like :func:`open_source`, for a service (serve): a live source (cameraN, /dev/videoN, picamN, a
    stream URL) that cannot be opened yet is a :class:`WaitingSource` when ``reconnect`` allows retries.

    ``infer`` fails at once when its camera is missing (exit 2). A service cannot: restarted every
    few seconds by systemd, it would never show its page. So the page and API start at once,
    ``state`` says "not found, retrying" (and ``error`` why), and the source is opened again with
    backoff until it appears. Anything else that is wrong (a missing file, a bad URL scheme,
    picamera2 not installed) is still a one-line error at start."""
    stop = stop or StopFlag()

    def open_now() -> Source:
        return open_source(source, width, height, fps, reconnect, stop=stop, timeout=timeout)

    try:
        return open_now()
    except EmoError as e:
        if stop.reason or reconnect <= 0 or not may_appear(source):
            raise
        return WaitingSource(source, open_now, reconnect, stop, str(e))
