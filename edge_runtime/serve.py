"""`emo-edge serve`: the infer loop, plus a small HTTP server for a device without a screen.

The loop feeds one more sink, :class:`LiveState`. It keeps the latest frame record and counters
and never blocks: a JPEG encoder thread draws and encodes the newest frame, at most
``stream_fps`` times a second and only while someone watches, once for all viewers. Each HTTP
client runs in its own thread and only ever takes the newest JPEG or record, so a slow viewer
skips frames (counted) and a stalled one is dropped after a socket timeout; neither holds up
the loop nor grows memory.

HTTP parsing is the standard library's (``http.server``); this module only routes exact paths.
Endpoints: ``/`` (the page, every byte served from here), ``/stream.mjpg``, ``/snapshot.jpg``,
``/api/latest``, ``/api/events`` (server-sent events), ``/api/status``, ``/metrics``
(Prometheus text format) and ``/healthz``. With a token, everything but ``/healthz`` needs it.
"""
from __future__ import annotations

import hmac
import http.server
import ipaddress
import json
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence
from urllib.parse import parse_qs, urlsplit

import cv2

from .errors import EmoError

PAGE = Path(__file__).parent / "web" / "index.html"
STAGES = ("decode", "detect", "preprocess", "classify", "track")
FRAME_HEADER = "X-Emo-Frame"  # on /snapshot.jpg and each MJPEG part: the "frame" of the record the image shows


@dataclass
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    token: Optional[str] = None
    stream_fps: float = 10.0  # JPEG frames per second for viewers
    stream_width: int = 640  # viewers get the annotated frame scaled to this width (0: as is)
    jpeg_quality: int = 75
    health_timeout: float = 5.0  # /healthz says 503 when no frame came for this long
    max_streams: int = 16  # MJPEG + event-stream clients at once
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

    def __init__(self, source, labels, info: dict, opts: ServeOptions, extra_metrics: Sequence[Callable[[], list]] = ()):
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
                self.c.skipped_stream_fps += max(0, seq - self.jpeg_seq - 1)
                self.jpeg, self.jpeg_seq, self.jpeg_frame = jpeg, seq, result.record["frame"]
                self.c.jpeg_frames += 1
                self.jpeg_ready.notify_all()

    def encode(self, result) -> bytes:
        img = result.annotated
        w = self.opts.stream_width
        if w and img.shape[1] > w:
            img = cv2.resize(img, (w, max(1, round(img.shape[0] * w / img.shape[1]))), interpolation=cv2.INTER_AREA)
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(self.opts.jpeg_quality)])
        return buf.tobytes() if ok else b""

    # --- what the endpoints read ----------------------------------------------------------------
    def source_up(self) -> bool:
        """Frames arrive (or a file source has ended normally): what /healthz reports."""
        if getattr(self.source, "state", "") == "ended":
            return True
        t = self.last_frame_at if self.last_frame_at is not None else self.started_at
        return time.monotonic() - t <= self.opts.health_timeout

    def status(self) -> dict:
        with self.cond:
            age = None if self.last_frame_at is None else round(time.monotonic() - self.last_frame_at, 2)
            return {**self.info, "up": self.source_up(), "source_state": getattr(self.source, "state", "up"),
                    "seconds_since_frame": age, "frames": self.c.frames, "fps": round(self.c.fps, 2),
                    "stage_ms": {k: round(v, 2) for k, v in self.c.stage_ms.items()}, "viewers": self.viewers,
                    "reconnects": getattr(self.source, "reconnects", 0)}

    def metrics(self) -> str:
        with self.cond:
            c, up, viewers = self.c, self.source_up(), self.viewers
            rows = [
                ("emo_frames", "counter", "Frames processed.", [("", c.frames)]),
                ("emo_faces", "counter", "Faces classified.", [("", c.faces)]),
                ("emo_detections", "counter", "Faces by their top emotion.",
                 [(f'{{emotion="{k}"}}', v) for k, v in c.by_emotion.items()]),
                ("emo_fps", "gauge", "Frames per second (moving average).", [("", round(c.fps, 3))]),
                ("emo_stage_latency_ms", "gauge", "Milliseconds per frame in each stage (moving average).",
                 [(f'{{stage="{k}"}}', round(v, 4)) for k, v in c.stage_ms.items()]),
                ("emo_dropped_frames", "counter", "Frames not streamed: over the stream FPS, or a viewer still busy.",
                 [('{reason="stream_fps"}', c.skipped_stream_fps), ('{reason="slow_viewer"}', c.skipped_slow_viewer)]),
                ("emo_stream_frames", "counter", "JPEG frames encoded for viewers.", [("", c.jpeg_frames)]),
                ("emo_reconnects", "counter", "Times the source came back after a drop-out.",
                 [("", getattr(self.source, "reconnects", 0))]),
                ("emo_source_up", "gauge", "1 while frames arrive, 0 when the source is down.", [("", int(up))]),
                ("emo_viewers", "gauge", "MJPEG viewers now.", [("", viewers)]),
                ("emo_dropped_clients", "counter", "Clients dropped for stalling.", [("", c.dropped_clients)]),
                ("emo_unauthorized_requests", "counter", "Requests refused for a missing or wrong token.", [("", c.unauthorized)]),
                ("emo_http_requests", "counter", "HTTP requests served.", [("", c.http_requests)]),
            ]
        for extra in self.extra_metrics:
            rows += extra()
        out = []
        for name, kind, help_, samples in rows:
            full = name + "_total" if kind == "counter" else name  # text format 0.0.4: counters end in _total
            out += [f"# HELP {full} {help_}", f"# TYPE {full} {kind}"]
            out += [f"{full}{labels} {value}" for labels, value in samples]
        return "\n".join(out) + "\n"


ROUTES = {"/": "page", "/index.html": "page", "/stream.mjpg": "mjpeg", "/snapshot.jpg": "snapshot",
          "/api/latest": "latest", "/api/events": "events", "/api/status": "status", "/metrics": "metrics",
          "/healthz": "healthz"}


class Handler(http.server.BaseHTTPRequestHandler):
    """One HTTP request (the standard library parses it); :func:`make_handler` binds the state."""

    state: LiveState
    opts: ServeOptions
    page_html: bytes
    server_version = "emo"
    sys_version = ""
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # requests are counted in /metrics, not printed
        pass

    def do_GET(self):
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        with self.state.cond:
            self.state.c.http_requests += 1
        route = ROUTES.get(url.path)
        if route is None:
            return self._send(404, "text/plain", b"not found\n")
        if url.path != "/healthz" and not self._authorized(query):
            with self.state.cond:
                self.state.c.unauthorized += 1
            return self._send(401, "text/plain", b"token required: add ?token=... or 'Authorization: Bearer ...'\n",
                              {"WWW-Authenticate": "Bearer"})
        try:
            getattr(self, route)(query)
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            with self.state.cond:
                self.state.c.dropped_clients += 1
            self.close_connection = True

    def do_POST(self):
        self._send(405, "text/plain", b"only GET\n", {"Allow": "GET"})

    do_PUT = do_DELETE = do_PATCH = do_POST

    def _authorized(self, query) -> bool:
        if not self.opts.token:
            return True
        given = (query.get("token") or [""])[0]
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            given = auth[len("Bearer "):].strip()
        return hmac.compare_digest(given.encode(), self.opts.token.encode())

    def _send(self, code: int, ctype: str, body: bytes, headers: Optional[dict] = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, obj, code: int = 200) -> None:
        self._send(code, "application/json", json.dumps(obj, separators=(",", ":")).encode())

    # --- endpoints ------------------------------------------------------------------------
    def page(self, query):
        self._send(200, "text/html; charset=utf-8", self.page_html)

    def latest(self, query):
        with self.state.cond:
            result = self.state.latest
        if result is None:
            return self._json({"error": "no frame yet"}, 503)
        self._json(result.record)

    def status(self, query):
        self._json(self.state.status())

    def metrics(self, query):
        self._send(200, "text/plain; version=0.0.4; charset=utf-8", self.state.metrics().encode())

    def healthz(self, query):
        if self.state.source_up():
            return self._send(200, "text/plain", b"ok\n")
        self._send(503, "text/plain", f"source down: {getattr(self.state.source, 'state', 'no frames')}\n".encode())

    def snapshot(self, query):
        with self.state.cond:
            result, jpeg, fresh = self.state.latest, self.state.jpeg, self.state.jpeg_seq == self.state.seq
        if result is None:
            return self._send(503, "text/plain", b"no frame yet\n")
        self._send(200, "image/jpeg", jpeg if (fresh and jpeg) else self.state.encode(result),
                   {FRAME_HEADER: str(result.record["frame"])})

    def _stream(self, ctype: str, body):
        """Hold one of the streaming slots while ``body()`` writes; 503 when all are taken."""
        with self.state.cond:
            if self.state.streams >= self.opts.max_streams:
                full = True
            else:
                full, self.state.streams = False, self.state.streams + 1
        if full:
            return self._send(503, "text/plain", b"too many streaming clients\n")
        try:
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Cache-Control", "no-store")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            body()
        finally:
            with self.state.cond:
                self.state.streams -= 1

    def mjpeg(self, query):
        def body():
            with self.state.cond:
                self.state.viewers += 1
                self.state.cond.notify_all()
            try:
                sent = self.state.c.jpeg_frames
                while True:
                    with self.state.cond:
                        self.state.jpeg_ready.wait_for(lambda: self.state.closed or self.state.c.jpeg_frames > sent, timeout=1.0)
                        if self.state.closed:
                            return
                        if self.state.c.jpeg_frames <= sent or not self.state.jpeg:
                            continue
                        if sent:  # JPEGs made while this viewer was still writing the last one
                            self.state.c.skipped_slow_viewer += self.state.c.jpeg_frames - sent - 1
                        jpeg, frame, sent = self.state.jpeg, self.state.jpeg_frame, self.state.c.jpeg_frames
                    self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n%s: %d\r\n\r\n"
                                     % (len(jpeg), FRAME_HEADER.encode(), frame) + jpeg + b"\r\n")
            finally:
                with self.state.cond:
                    self.state.viewers -= 1
        self._stream("multipart/x-mixed-replace; boundary=frame", body)

    def events(self, query):
        try:
            rate = float((query.get("rate") or ["0"])[0])
        except ValueError:
            return self._send(400, "text/plain", b"rate must be a number of events per second\n")
        gap = 1.0 / rate if rate > 0 else 0.0

        def body():
            seen, last_sent = 0, 0.0
            while True:
                with self.state.cond:
                    self.state.cond.wait_for(lambda: self.state.closed or self.state.seq > seen, timeout=15.0)
                    if self.state.closed:
                        return
                    fresh = self.state.seq > seen
                    record, seen = (self.state.latest.record if self.state.latest else None), self.state.seq
                if not fresh:
                    self.wfile.write(b": keep-alive\n\n")
                    continue
                if gap and time.monotonic() - last_sent < gap:
                    time.sleep(max(0.0, gap - (time.monotonic() - last_sent)))
                    with self.state.cond:
                        record, seen = self.state.latest.record, self.state.seq
                last_sent = time.monotonic()
                self.wfile.write(b"data: " + json.dumps(record, separators=(",", ":")).encode() + b"\n\n")
                self.wfile.flush()
        self._stream("text/event-stream", body)


def make_handler(state: LiveState, opts: ServeOptions) -> type:
    """The request handler class, bound to one LiveState; the socket timeout drops stalled clients."""
    return type("BoundHandler", (Handler,), {"state": state, "opts": opts, "page_html": PAGE.read_bytes(),
                                             "timeout": opts.client_timeout})


class Server:
    """The HTTP server in background threads; ``close()`` ends the streams and the server."""

    def __init__(self, state: LiveState, opts: ServeOptions):
        self.state = state
        try:
            self.httpd = http.server.ThreadingHTTPServer((opts.host, opts.port), make_handler(state, opts))
        except OSError as e:
            raise EmoError(f"cannot listen on {opts.host}:{opts.port} ({e.strerror}); pick another --port or --host") from None
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="emo-http", daemon=True)
        self._thread.start()

    def write(self, result) -> None:
        self.state.write(result)

    def close(self) -> None:
        self.state.close()
        self.httpd.shutdown()
        self.httpd.server_close()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve_sinks(opts: ServeOptions):
    """``extra_sinks`` for runner.run_job: the LiveState + HTTP server, started once the source is open."""

    def make(src, rec, stop, sinks: list) -> list:
        if not is_loopback(opts.host) and not opts.token:
            print(f"emo-edge: warning: serving on {opts.host}:{opts.port} without --token; anyone on the network "
                  "can see the camera", file=sys.stderr)
        det = rec.face_detector
        info = {"source": src.label, "model": rec.classifier.path.name, "model_arch": rec.classifier.meta.arch,
                "precision": rec.classifier.meta.precision, "detector": det.name, "labels": list(rec.labels)}
        state = LiveState(src, rec.labels, info, opts, [s.metrics for s in sinks if hasattr(s, "metrics")])
        server = Server(state, opts)
        shown_host = f"[{opts.host}]" if ":" in opts.host else opts.host
        print(f"emo-edge: serving http://{shown_host}:{server.port}/", file=sys.stderr, flush=True)
        return [server]

    return make
