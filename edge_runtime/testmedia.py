"""Media for the benchmarks and tests, made here rather than shipped: a clip of a real face
drifting across the frame (:func:`make_test_video`) and a camera-like MJPEG stream over HTTP
that can drop out (:class:`MjpegTestStream`)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Optional

import cv2
import numpy as np


def make_test_video(photo: Path, path: Path, frames: int = 300, size=(640, 480), fps: float = 30.0, face_px: int = 120) -> Path:
    """A 640x480 clip with one real face from ``photo`` drifting slowly across the frame.

    The photo is cropped around its largest face and scaled so the face is ``face_px`` high:
    about what a webcam sees of a person one metre away.
    """
    from .faces import HaarDetector

    img = cv2.imread(str(photo), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"cannot read {photo}")
    w, h = size
    faces = HaarDetector(max_side=max(img.shape[:2])).detect(img)
    if faces:
        x, y, fw, fh = max(faces, key=lambda b: b[2] * b[3])
        cx, cy, r = x + fw // 2, y + fh // 2, int(1.6 * fw)
        img = img[max(0, cy - r) : cy + r, max(0, cx - r) : cx + r]
        s = face_px / fh
    else:
        s = 1.0
    s = min(s, 0.9 * h / img.shape[0], 0.6 * w / img.shape[1])
    img = cv2.resize(img, (int(img.shape[1] * s), int(img.shape[0] * s)), interpolation=cv2.INTER_AREA)
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    for i in range(frames):
        c = np.full((h, w, 3), 100, np.uint8)
        span = max(1, w - img.shape[1])
        x = int((np.sin(i / 40) * 0.5 + 0.5) * span)
        y = (h - img.shape[0]) // 2
        c[y : y + img.shape[0], x : x + img.shape[1]] = img
        vw.write(c)
    vw.release()
    return path


class MjpegTestStream:
    """A live MJPEG-over-HTTP stream on 127.0.0.1 that loops ``frames`` (JPEG bytes) at ``fps``,
    for soak tests and the serve tests. ``set_up(False)`` cuts every connection and answers 503
    until ``set_up(True)``, like a network camera that reboots; ``schedule`` (a callable of the
    seconds since start) can decide that instead."""

    def __init__(self, frames: list[bytes], fps: float = 10.0, schedule: Optional[Callable[[float], bool]] = None):
        import http.server
        import threading

        self.frames, self.period, self.schedule = frames, 1.0 / fps, schedule
        self.t0 = time.monotonic()
        self._up = True
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                if not owner.up():
                    self.close_connection = True
                    self.send_error(503)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                i = 0
                try:
                    while owner.up():
                        jpg = owner.frames[i % len(owner.frames)]
                        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpg)
                                         + jpg + b"\r\n")
                        i += 1
                        time.sleep(owner.period)
                except OSError:
                    pass

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/live.mjpg"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()

    @classmethod
    def of_video(cls, video: Path, **kw) -> "MjpegTestStream":
        cap = cv2.VideoCapture(str(video))
        frames = []
        while True:
            ok, img = cap.read()
            if not ok:
                break
            frames.append(cv2.imencode(".jpg", img)[1].tobytes())
        cap.release()
        return cls(frames, **kw)

    def up(self) -> bool:
        return self.schedule(time.monotonic() - self.t0) if self.schedule else self._up

    def set_up(self, up: bool) -> None:
        self._up = up

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
