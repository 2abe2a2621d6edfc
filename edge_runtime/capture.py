"""Sources that read through a capture device: :class:`VideoSource` (a video file, a stream URL or a
V4L2 camera through ``cv2.VideoCapture``) and :class:`PicameraSource` (picamera2). Opened by
:func:`.sources.open_source`, which parses the SOURCE string.

Whatever may block (opening a stream, reading a frame from it, the backoff between reopen
attempts) is bounded by a timeout and cut short by the stop flag, so SIGINT and SIGTERM always
stop the program within a fraction of a second.
"""
from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, Optional

import cv2
import numpy as np

from .errors import EmoError
from .files import opencv_name
from .frames import Frame, warn
from .stopping import StopFlag

DEFAULT_TIMEOUT = 10.0  # seconds a stream may take to open or to deliver a frame


class _Stopped(Exception):
    """A blocking call was abandoned because a stop was asked for."""


class VideoSource:
    """A video file, a stream URL or a V4L2 camera through ``cv2.VideoCapture``.

    ``live`` is what the caller knows up front (cameras are live, files are not); for a URL it is
    decided once the stream is open: a stream that reports a frame count is a finite recording.
    ``opener`` returns an opened capture; tests inject fakes through it. ``start`` (a file) begins
    at that frame, with the indices and timestamps it has in the whole video (see :meth:`_seek`)."""

    stills = False
    error: Optional[str] = None  # (a drop-out is said by ``state``)

    def __init__(self, target, label: str, live: bool, width: int = 0, height: int = 0, fps: float = 0,
                 reconnect: int = 10, opener: Optional[Callable[[], "cv2.VideoCapture"]] = None,
                 stop: Optional[StopFlag] = None, timeout: float = DEFAULT_TIMEOUT, stride: int = 1, start: int = 0,
                 seek: bool = True):
        self.target, self.label, self.live = target, label, live
        self.stride = max(1, int(stride))  # yield every stride-th frame; the others are only grabbed
        self.start = max(0, int(start))
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
        if self.start:
            self._seek(seek)

    @property
    def files(self) -> list[Path]:
        return [self.target] if isinstance(self.target, Path) else []

    def _seek(self, seek: bool) -> None:
        """Move to frame ``start``: by the container's seek where the capture then says it is
        there, else (or with ``seek`` False) by reading from the first frame (slow, but exact)."""
        try:
            if seek and self._blocking(lambda: self.cap.set(cv2.CAP_PROP_POS_FRAMES, self.start), "seek") \
                    and int(self.cap.get(cv2.CAP_PROP_POS_FRAMES)) == self.start:
                return
            if seek:
                self.release()
                self.cap = self._blocking(self.opener, "open")
            for _ in range(self.start):
                if not self._blocking(self.cap.grab, "read"):
                    break
        except _Stopped:
            pass

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
        i, t0 = self.start, time.monotonic()
        while not self.stop.reason:
            try:
                ok, img = self._read()
            except _Stopped:
                return
            if not ok or img is None:
                if not self.live:
                    if i == 0:  # (a start past the end is a range with no frames, not an error)
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

    live, stills, state, reconnects, error = True, False, "up", 0, None

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
        self.files: list[Path] = []

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
