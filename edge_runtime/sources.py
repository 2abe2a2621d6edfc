"""Frame sources: cameras (V4L2 via OpenCV, picamera2), video files, stream URLs, images,
folders and globs. Every source yields :class:`Frame` objects and is closed with ``close()``.

A source knows whether it is live (a camera, a live stream) or finite (a file, a recording
served over http). A finite source ends; a live source that drops out is reopened with
exponential backoff. Whatever may block (opening a stream, reading a frame from it, the backoff
between reopen attempts) is bounded by a timeout and cut short by the stop flag, so SIGINT and
SIGTERM always stop the program within a fraction of a second.
"""
from __future__ import annotations

import os
import re
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import cv2
import numpy as np

from .errors import EmoError
from .files import IMAGE_EXTS, VIDEO_EXTS, check_file, exists, is_dir, opencv_name, read_image, shown
from .stopping import StopFlag

STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp")
DEFAULT_TIMEOUT = 10.0  # seconds a stream may take to open or to deliver a frame


def warn(msg: str) -> None:
    print(f"emo-edge: warning: {msg}", file=sys.stderr, flush=True)


@dataclass
class Frame:
    image: np.ndarray  # BGR uint8
    index: int
    timestamp: float  # seconds: position in a video, or since the source opened
    name: str = ""  # file name for image sources, printable (see files.shown)


class ImageSource:
    """One image, a folder of images, or a glob. Unreadable files in a folder are skipped with a
    warning each and a count at the end; a single image that cannot be read is an error."""

    live = False

    def __init__(self, paths: list[Path], label: str, strict: bool, first: Optional[np.ndarray] = None):
        self.paths, self.label, self.strict = paths, label, strict
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


class _Stopped(Exception):
    """A blocking call was abandoned because a stop was asked for."""


class VideoSource:
    """A video file, a stream URL or a V4L2 camera through ``cv2.VideoCapture``.

    ``live`` is what the caller knows up front (cameras are live, files are not); for a URL it is
    decided once the stream is open: a stream that reports a frame count is a finite recording.
    ``opener`` returns an opened capture; tests inject fakes through it."""

    def __init__(self, target, label: str, live: bool, width: int = 0, height: int = 0, fps: float = 0,
                 reconnect: int = 10, opener: Optional[Callable[[], "cv2.VideoCapture"]] = None,
                 stop: Optional[StopFlag] = None, timeout: float = DEFAULT_TIMEOUT, stride: int = 1):
        self.target, self.label, self.live = target, label, live
        self.stride = max(1, int(stride))  # yield every stride-th frame; the others are only grabbed
        self.req = (width, height, fps)
        self.reconnect, self.timeout = reconnect, timeout
        self.stop = stop or StopFlag()
        self.opener = opener or self._open
        self.is_url = isinstance(target, str) and "://" in target
        # Streams and cameras can block inside C code, where signals wait: they are called from a thread.
        self._threaded = live or self.is_url
        self._inflight = threading.Event()
        self._inflight.set()
        self.cap = None
        try:
            self.cap = self._blocking(self.opener, "open")
        except _Stopped:
            self.cap = None
        if self.cap is None or not self.cap.isOpened():
            if self.stop.reason:
                raise EmoError(f"{label}: stopped by {self.stop.reason} while opening")
            raise EmoError(self._open_error())
        self.fps = float(self.cap.get(cv2.CAP_PROP_FPS) or 0.0)
        if not (0 < self.fps < 1000):
            self.fps = 0.0
        if self.is_url:
            self.live = not (self.cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0) > 0
        w, h = int(self.cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0), int(self.cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)
        self.size = (w, h) if w and h else None
        self.reconnects = 0
        self.state = "up"  # "reconnecting (attempt n/N)" or "ended": shown by emo-edge serve

    def _blocking(self, fn: Callable, what: str):
        """Run ``fn`` in a daemon thread while this thread waits where a signal can interrupt it;
        give up after the timeout. An abandoned call is left to finish (or to die with the
        process); its capture is then never released under it."""
        if not self._threaded:
            return fn()
        box: dict = {}
        done = threading.Event()

        def call():
            try:
                box["value"] = fn()
            except BaseException as e:  # noqa: BLE001 - handed to the waiting thread
                box["error"] = e
            finally:
                done.set()

        self._inflight = done
        threading.Thread(target=call, name="emo-capture", daemon=True).start()
        deadline = time.monotonic() + self.timeout + 2.0  # FFmpeg's own timeout fires first
        while not done.wait(0.1):
            if self.stop.reason:
                raise _Stopped
            if time.monotonic() > deadline:
                raise EmoError(f"{self.label}: no answer within {self.timeout:g} s ({what}); check the URL, "
                               "the network and the server, or raise --timeout")
        if "error" in box:
            raise box["error"]
        return box["value"]

    def _open_error(self) -> str:
        if self._is_camera():
            return (f"{self.label}: no such camera, or it is busy; check `ls /dev/video*`, that no other program "
                    f"uses it, and that you are in the 'video' group")
        if self.is_url:
            return (f"{self.label}: cannot open the stream, or no answer within {self.timeout:g} s; check the URL, "
                    "the network and that the server is up")
        return f"{self.label} is not a video OpenCV can decode (corrupt or unsupported format)"

    def _is_camera(self) -> bool:
        return isinstance(self.target, int) or str(self.target).startswith("/dev/video")

    def _open(self):
        if self._is_camera():
            cap = cv2.VideoCapture(self.target, cv2.CAP_V4L2) if sys.platform.startswith("linux") else cv2.VideoCapture(self.target)
        elif self.is_url:
            ms = int(self.timeout * 1000)
            cap = cv2.VideoCapture(self.target, cv2.CAP_FFMPEG,
                                   [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms])
        else:
            with opencv_name(self.target) as name:
                cap = cv2.VideoCapture(name)
        w, h, fps = self.req
        if cap.isOpened() and self._is_camera():
            if w:
                cap.set(cv2.CAP_PROP_FRAME_WIDTH, w)
            if h:
                cap.set(cv2.CAP_PROP_FRAME_HEIGHT, h)
            if fps:
                cap.set(cv2.CAP_PROP_FPS, fps)
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        return cap

    def _read(self):
        try:
            return self._blocking(self.cap.read, "read")
        except EmoError:
            if self.live:  # a live source that stalls is treated as a drop-out
                return False, None
            raise

    def _reopen(self) -> Optional[np.ndarray]:
        """Reopen a live source that dropped out; the first new frame, or None (gave up or stopped)."""
        delay = 0.5
        for attempt in range(1, self.reconnect + 1):
            warn(f"{self.label} dropped out; reopening (attempt {attempt}/{self.reconnect}) in {delay:.1f}s")
            self.state = f"reconnecting (attempt {attempt}/{self.reconnect})"
            if self.stop.wait(delay):
                return None
            self.release()
            try:
                self.cap = self._blocking(self.opener, "reopen")
                if self.cap is not None and self.cap.isOpened():
                    ok, img = self._read()
                    if ok and img is not None:
                        warn(f"{self.label} is back")
                        self.state = "up"
                        self.reconnects += 1
                        return img
            except _Stopped:
                return None
            except EmoError:
                pass
            delay = min(delay * 2, 8.0)
        return None

    def __iter__(self) -> Iterator[Frame]:
        i, t0 = 0, time.monotonic()
        while not self.stop.reason:
            try:
                ok, img = self._read()
            except _Stopped:
                return
            if not ok or img is None:
                if not self.live:
                    if i == 0:
                        raise EmoError(f"{self.label} has no frames OpenCV can decode (empty or corrupt video)")
                    self.state = "ended"
                    return  # a video file that ends
                img = self._reopen() if self.reconnect > 0 else None
                if img is None:
                    if self.stop.reason:
                        return
                    raise EmoError(f"{self.label} stopped delivering frames and could not be reopened; check the camera or stream")
            ts = time.monotonic() - t0 if (self.live or not self.fps) else i / self.fps
            yield Frame(img, i, ts)
            i += 1
            for _ in range(self.stride - 1):  # frame indices, and so timestamps, stay those of the source
                try:
                    if not self._blocking(self.cap.grab, "read"):
                        break
                except _Stopped:
                    return
                i += 1

    def release(self) -> None:
        cap, self.cap = self.cap, None
        if cap is not None and self._inflight.is_set():  # never under a read that is still running
            try:
                cap.release()
            except Exception:  # noqa: BLE001 - a capture that cannot even close is gone already
                pass

    def close(self) -> None:
        self.release()


class PicameraSource:
    """Raspberry Pi camera through picamera2 (Raspberry Pi OS: ``sudo apt install python3-picamera2``)."""

    live = True

    def __init__(self, index: int, width: int = 0, height: int = 0, fps: float = 0, stop: Optional[StopFlag] = None):
        try:
            from picamera2 import Picamera2  # type: ignore
        except ImportError:
            raise EmoError(
                f"picam{index} needs picamera2, which is not importable here; on Raspberry Pi OS run "
                "`sudo apt install python3-picamera2` and create the venv with --system-site-packages, or use camera0 (V4L2)"
            ) from None
        try:
            self.cam = Picamera2(index)
            cfg = self.cam.create_video_configuration(main={"size": (width or 640, height or 480), "format": "RGB888"})
            if fps:
                cfg["controls"] = {"FrameRate": float(fps)}
            self.cam.configure(cfg)
            self.cam.start()
        except Exception as e:  # noqa: BLE001 - picamera2 raises many types; all mean "camera not usable"
            raise EmoError(f"picam{index} could not be started ({str(e).splitlines()[0][:100]}); check the ribbon cable and `rpicam-hello`") from None
        self.label, self.fps, self.size = f"picam{index}", float(fps or 0), (width or 640, height or 480)
        self.stop = stop or StopFlag()

    def __iter__(self) -> Iterator[Frame]:
        i, t0 = 0, time.monotonic()
        while not self.stop.reason:
            img = self.cam.capture_array("main")  # RGB888 in picamera2 is BGR byte order
            yield Frame(np.ascontiguousarray(img[:, :, :3]), i, time.monotonic() - t0)
            i += 1

    def close(self) -> None:
        try:
            self.cam.stop()
            self.cam.close()
        except Exception:  # noqa: BLE001
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
