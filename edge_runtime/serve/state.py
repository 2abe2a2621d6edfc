"""The state `emo-edge serve` keeps: the sink the loop feeds (:class:`LiveState`), its counters,
and the JPEG encoder.

LiveState keeps the latest frame record and counters and never blocks: a JPEG encoder thread
draws and encodes the newest frame, at most ``stream_fps`` times a second and only while someone
watches, once for all viewers. A viewer who comes when no new frames do (the source ended or is
down) gets the held frame, or a card that says why there is none yet.
"""
from __future__ import annotations

import textwrap
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import cv2
import numpy as np

from ..frames import Source
from .metrics import metrics_text


@dataclass
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    token: Optional[str] = None
    stream_fps: float = 10.0  # JPEG frames per second for viewers
    stream_width: int = 640  # viewers get the annotated frame scaled to this width (0: as is)
    jpeg_quality: int = 75
    health_timeout: float = 5.0  # /healthz says 503 when no frame came for this long
    max_streams: int = 32  # MJPEG + event-stream clients at once
    client_timeout: float = 5.0  # a client that takes longer to accept data is dropped


@dataclass
class Counters:
    frames: int = 0
    faces: int = 0
    by_emotion: dict = field(default_factory=dict)
    stage_ms: dict = field(default_factory=dict)  # exponential moving average per stage
    fps: float = 0.0
    jpeg_frames: int = 0
    skipped_stream_fps: int = 0  # frames not encoded: newer ones came before the next stream slot
    skipped_slow_viewer: int = 0  # encoded frames a viewer missed because it was still busy
    dropped_clients: int = 0
    unauthorized: int = 0
    http_requests: int = 0


class LiveState:
    """The sink that serve adds to the loop: the newest result, counters, and the JPEG encoder."""

    def __init__(self, source: Source, labels, info: dict, opts: ServeOptions,
                 extra_metrics: Sequence[Callable[[], list]] = ()):
        self.source, self.labels, self.info, self.opts = source, labels, info, opts
        self.extra_metrics = list(extra_metrics)  # other sinks' rows for /metrics (MQTT counters)
        lock = threading.Lock()
        self.cond = threading.Condition(lock)  # notified per frame: the encoder and event streams wait on it
        self.jpeg_ready = threading.Condition(lock)  # notified per JPEG: MJPEG viewers wait on it
        self.c = Counters(by_emotion={n: 0 for n in labels})
        self.latest = None  # FrameResult
        self.seq = 0  # frames received
        self.last_frame_at: Optional[float] = None
        self.started_at = time.monotonic()
        self.jpeg: Optional[bytes] = None
        self.jpeg_seq = 0  # frame seq the JPEG shows
        self.jpeg_frame = -1  # the "frame" index of the record the JPEG shows
        self._card = ("", b"")  # (text, JPEG) shown while there is no frame yet
        self.viewers = 0
        self.streams = 0
        self.closed = False
        self._encoder = threading.Thread(target=self._encode_loop, name="emo-jpeg", daemon=True)
        self._encoder.start()

    # --- the sink -------------------------------------------------------------------------------
    def write(self, result) -> None:
        now = time.monotonic()
        with self.cond:
            if self.last_frame_at is not None and now > self.last_frame_at:
                self.c.fps = 0.9 * self.c.fps + 0.1 / (now - self.last_frame_at) if self.c.fps else 1 / (now - self.last_frame_at)
            self.latest, self.last_frame_at = result, now
            self.seq += 1
            self.c.frames += 1
            self.c.faces += len(result.faces)
            for f in result.faces:
                self.c.by_emotion[f.emotion] = self.c.by_emotion.get(f.emotion, 0) + 1
            for k, v in result.record["timing_ms"].items():
                old = self.c.stage_ms.get(k)
                self.c.stage_ms[k] = v if old is None else 0.9 * old + 0.1 * v
            self.cond.notify_all()

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()
            self.jpeg_ready.notify_all()

    # --- JPEG, once per frame for all viewers ---------------------------------------------------
    def _encode_loop(self) -> None:
        next_slot = 0.0
        while True:
            with self.cond:
                self.cond.wait_for(lambda: self.closed or (self.viewers > 0 and self.seq > self.jpeg_seq), timeout=1.0)
                if self.closed:
                    return
                if not (self.viewers > 0 and self.seq > self.jpeg_seq):
                    continue
            wait = next_slot - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            with self.cond:
                result, seq = self.latest, self.seq
            jpeg = self.encode(result)
            next_slot = time.monotonic() + 1.0 / max(0.1, self.opts.stream_fps)
            with self.cond:
                if seq <= self.jpeg_seq:  # a viewer's held_jpeg() encoded this frame already
                    continue
                self.c.skipped_stream_fps += max(0, seq - self.jpeg_seq - 1)
                self.jpeg, self.jpeg_seq, self.jpeg_frame = jpeg, seq, result.record["frame"]
                self.c.jpeg_frames += 1
                self.jpeg_ready.notify_all()

    def encode(self, result) -> bytes:
        return self._jpeg(result.annotated)

    def _jpeg(self, img: np.ndarray) -> bytes:
        w = self.opts.stream_width
        if w and img.shape[1] > w:
            img = cv2.resize(img, (w, max(1, round(img.shape[0] * w / img.shape[1]))), interpolation=cv2.INTER_AREA)
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(self.opts.jpeg_quality)])
        return buf.tobytes() if ok else b""

    def held_jpeg(self) -> tuple[bytes, int, int]:
        """What a viewer is shown now, without waiting for a new frame: the newest frame (held, when
        the source has ended or is down), or a card that says why there is none yet. Returns
        (JPEG, its frame index or -1 for the card, the JPEG count it stands for)."""
        with self.cond:
            result, seq, count = self.latest, self.seq, self.c.jpeg_frames
            if self.jpeg is not None and self.jpeg_seq == seq:
                return self.jpeg, self.jpeg_frame, count
        if result is None:
            return self._card_jpeg(), -1, count
        jpeg = self.encode(result)
        with self.cond:
            if self.jpeg_seq < seq:  # kept for the next viewer; the encoder skips this frame
                self.jpeg, self.jpeg_seq, self.jpeg_frame = jpeg, seq, result.record["frame"]
            return self.jpeg, self.jpeg_frame, self.c.jpeg_frames  # or the encoder's, if it was quicker

    def _card_jpeg(self) -> bytes:
        text = f"{self.source.label}: {self.source_state()}" if self.source_state() != "up" else "waiting for the first frame"
        if self._card[0] != text:
            img = np.full((360, 640, 3), 40, np.uint8)
            for i, line in enumerate(textwrap.wrap(text.encode("ascii", "replace").decode(), 40)[:8]):
                cv2.putText(img, line, (24, 60 + 34 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (230, 230, 230), 2, cv2.LINE_AA)
            self._card = (text, self._jpeg(img))
        return self._card[1]

    # --- what the endpoints read ----------------------------------------------------------------
    def source_state(self) -> str:
        return self.source.state

    def reconnects(self) -> int:
        return self.source.reconnects

    def health(self) -> dict:
        """``ok`` while frames arrive, ``ended`` when a file source has ended (its last frame held),
        ``degraded`` when the source is not up (not found, reconnecting) or no frame came for
        ``health_timeout`` seconds: what /healthz answers (503 when degraded)."""
        state, last = self.source_state(), self.last_frame_at
        age = None if last is None else round(time.monotonic() - last, 2)
        if state == "ended":
            status = "ended"
        elif state == "up" and time.monotonic() - (last if last is not None else self.started_at) <= self.opts.health_timeout:
            status = "ok"
        else:
            status = "degraded"
        out = {"status": status, "source": self.source.label, "source_state": state, "seconds_since_frame": age}
        error = self.source.error
        return {**out, "source_error": error} if error else out

    def status(self) -> dict:
        with self.cond:
            h = self.health()
            return {**self.info, "up": h["status"] != "degraded", "health": h["status"], "source_state": h["source_state"],
                    "source_error": h.get("source_error"), "seconds_since_frame": h["seconds_since_frame"],
                    "frames": self.c.frames, "fps": round(self.c.fps, 2),
                    "stage_ms": {k: round(v, 2) for k, v in self.c.stage_ms.items()}, "viewers": self.viewers,
                    "streams": self.streams, "reconnects": self.reconnects()}

    def metrics(self) -> str:
        return metrics_text(self)
