"""Frame sources: cameras (V4L2 via OpenCV, picamera2), video files, stream URLs, images,
folders and globs. Every source yields :class:`Frame` objects and is closed with ``close()``.

Live sources (cameras, streams) that drop out are reopened with exponential backoff and a
warning; a video file that ends simply ends the iteration.
"""
from __future__ import annotations

import contextlib
import glob
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import cv2
import numpy as np

from .errors import EmoError

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".pgm", ".ppm", ".jp2"}
VIDEO_EXTS = {".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".gif", ".3gp", ".ts"}
STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp")

try:  # OpenCV's own warnings (V4L2 probing, FFmpeg) would break our one-line errors
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
except AttributeError:
    pass


def warn(msg: str) -> None:
    print(f"emo-edge: warning: {msg}", file=sys.stderr, flush=True)


@dataclass
class Frame:
    image: np.ndarray  # BGR uint8
    index: int
    timestamp: float  # seconds: position in a video, or since the source opened
    name: str = ""  # file name for image sources


@contextlib.contextmanager
def quiet_stderr():
    """Silence C libraries (libjpeg, libpng) that print straight to fd 2 on corrupt files."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as BGR (alpha dropped, EXIF orientation applied), or raise EmoError."""
    p = Path(path)
    if not p.is_file():
        raise EmoError(f"image {p} does not exist")
    with quiet_stderr():
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
    if img is None or img.size == 0:
        raise EmoError(f"{p} is not an image OpenCV can decode (corrupt or unsupported format)")
    return img


class ImageSource:
    """One image, a folder of images, or a glob. Unreadable files in a folder are skipped with a warning."""

    live = False

    def __init__(self, paths: list[Path], label: str, strict: bool):
        self.paths, self.label, self.strict = paths, label, strict
        self.fps = 0.0
        self.size: Optional[tuple[int, int]] = None

    def __iter__(self) -> Iterator[Frame]:
        for i, p in enumerate(self.paths):
            try:
                img = read_image(p)
            except EmoError as e:
                if self.strict:
                    raise
                warn(f"skipping {e}")
                continue
            yield Frame(img, i, 0.0, p.name)

    def close(self) -> None:
        pass


class VideoSource:
    """A video file, a stream URL or a V4L2 camera through ``cv2.VideoCapture``."""

    def __init__(self, target, label: str, live: bool, width: int = 0, height: int = 0, fps: float = 0,
                 reconnect: int = 10, opener: Optional[Callable[[], "cv2.VideoCapture"]] = None):
        self.target, self.label, self.live = target, label, live
        self.req = (width, height, fps)
        self.reconnect = reconnect
        self.opener = opener or self._open
        self.cap = self.opener()
        if self.cap is None or not self.cap.isOpened():
            raise EmoError(self._open_error())
        self.fps = float(self.cap.get(cv2.CAP_PROP_FPS) or 0.0)
        if not (0 < self.fps < 1000):
            self.fps = 0.0
        w, h = int(self.cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0), int(self.cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)
        self.size = (w, h) if w and h else None

    def _open_error(self) -> str:
        if isinstance(self.target, int) or str(self.target).startswith("/dev/video"):
            return (f"{self.label}: no such camera, or it is busy; check `ls /dev/video*`, that no other program "
                    f"uses it, and that you are in the 'video' group")
        if self.live:
            return f"{self.label}: cannot open the stream; check the URL, the network and that the server is up"
        return f"{self.label} is not a video OpenCV can decode (corrupt or unsupported format)"

    def _open(self):
        if isinstance(self.target, int) or str(self.target).startswith("/dev/video"):
            cap = cv2.VideoCapture(self.target, cv2.CAP_V4L2) if sys.platform.startswith("linux") else cv2.VideoCapture(self.target)
        else:
            cap = cv2.VideoCapture(str(self.target))
        w, h, fps = self.req
        if cap.isOpened():
            if w:
                cap.set(cv2.CAP_PROP_FRAME_WIDTH, w)
            if h:
                cap.set(cv2.CAP_PROP_FRAME_HEIGHT, h)
            if fps:
                cap.set(cv2.CAP_PROP_FPS, fps)
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        return cap

    def _reopen(self) -> bool:
        delay = 0.5
        for attempt in range(1, self.reconnect + 1):
            warn(f"{self.label} dropped out; reopening (attempt {attempt}/{self.reconnect}) in {delay:.1f}s")
            time.sleep(delay)
            try:
                self.cap.release()
            except Exception:
                pass
            self.cap = self.opener()
            if self.cap is not None and self.cap.isOpened():
                ok, img = self.cap.read()
                if ok and img is not None:
                    self._pending = img
                    warn(f"{self.label} is back")
                    return True
            delay = min(delay * 2, 8.0)
        return False

    def __iter__(self) -> Iterator[Frame]:
        i, t0 = 0, time.monotonic()
        self._pending = None
        while True:
            if self._pending is not None:
                ok, img, self._pending = True, self._pending, None
            else:
                ok, img = self.cap.read()
            if not ok or img is None:
                if self.live and self.reconnect > 0 and self._reopen():
                    continue
                if self.live:
                    raise EmoError(f"{self.label} stopped delivering frames and could not be reopened; check the camera or stream")
                return  # a video file that ends
            if self.live or not self.fps:
                ts = time.monotonic() - t0
            else:
                ts = i / self.fps
            yield Frame(img, i, ts)
            i += 1

    def close(self) -> None:
        if self.cap is not None:
            self.cap.release()


class PicameraSource:
    """Raspberry Pi camera through picamera2 (Raspberry Pi OS: ``sudo apt install python3-picamera2``)."""

    live = True

    def __init__(self, index: int, width: int = 0, height: int = 0, fps: float = 0):
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
        except Exception as e:
            raise EmoError(f"picam{index} could not be started ({str(e).splitlines()[0][:100]}); check the ribbon cable and `rpicam-hello`") from None
        self.label, self.fps, self.size = f"picam{index}", float(fps or 0), (width or 640, height or 480)

    def __iter__(self) -> Iterator[Frame]:
        i, t0 = 0, time.monotonic()
        while True:
            img = self.cam.capture_array("main")  # RGB888 in picamera2 is BGR byte order
            yield Frame(np.ascontiguousarray(img[:, :, :3]), i, time.monotonic() - t0)
            i += 1

    def close(self) -> None:
        try:
            self.cam.stop()
            self.cam.close()
        except Exception:
            pass


def open_source(source: str, width: int = 0, height: int = 0, fps: float = 0, reconnect: int = 10):
    """SOURCE string -> a frame source. See ``emo-edge infer --help`` for the accepted forms."""
    m = re.fullmatch(r"camera(\d+)", source)
    if m:
        if sys.platform.startswith("linux") and not Path(f"/dev/video{m.group(1)}").exists():
            raise EmoError(f"{source}: no such camera (/dev/video{m.group(1)} does not exist); check `ls /dev/video*` "
                           "or use picam0 for a Raspberry Pi camera module")
        return VideoSource(int(m.group(1)), source, True, width, height, fps, reconnect)
    if re.fullmatch(r"/dev/video\d+", source):
        if not Path(source).exists():
            raise EmoError(f"{source}: no such camera device; check `ls /dev/video*`")
        return VideoSource(source, source, True, width, height, fps, reconnect)
    m = re.fullmatch(r"picam(\d+)", source)
    if m:
        return PicameraSource(int(m.group(1)), width, height, fps)
    m = re.match(r"([a-zA-Z][a-zA-Z0-9+.-]*)://", source)
    if m:
        if m.group(1).lower() not in STREAM_SCHEMES:
            raise EmoError(f"unsupported URL scheme '{m.group(1)}' in {source}; use rtsp://, http:// or https://")
        return VideoSource(source, source, True, reconnect=reconnect)
    p = Path(source)
    if any(c in source for c in "*?[") and not p.exists():
        paths = sorted(Path(f) for f in glob.glob(source, recursive=True) if Path(f).suffix.lower() in IMAGE_EXTS)
        if not paths:
            raise EmoError(f"no images match {source}")
        return ImageSource(paths, source, strict=False)
    if p.is_dir():
        paths = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTS)
        if not paths:
            raise EmoError(f"folder {p} holds no images ({', '.join(sorted(IMAGE_EXTS))})")
        return ImageSource(paths, source, strict=False)
    if not p.exists():
        raise EmoError(f"source {source} not found: give an image, a folder, a video, a URL, cameraN or picamN")
    if p.suffix.lower() in IMAGE_EXTS:
        read_image(p)  # fail now, with a clear message, if it is corrupt
        return ImageSource([p], source, strict=True)
    if p.suffix.lower() in VIDEO_EXTS:
        return VideoSource(str(p), source, False)
    # unknown extension: try as an image, then as a video
    with quiet_stderr():
        is_image = cv2.imread(str(p), cv2.IMREAD_COLOR) is not None
    if is_image:
        return ImageSource([p], source, strict=True)
    with quiet_stderr():
        cap = cv2.VideoCapture(str(p))
        ok = cap.isOpened() and cap.read()[0]
        cap.release()
    if ok:
        return VideoSource(str(p), source, False)
    raise EmoError(f"{source} is neither an image nor a video OpenCV can decode")
