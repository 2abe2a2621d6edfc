"""The HTTP side of `emo-edge serve`: routes, query parameters and the streaming endpoints.

HTTP parsing is the standard library's (``http.server``); this module only routes exact paths.
Query parameters are read by :mod:`.params` (400 with one line for a value an endpoint cannot take).

A streaming client (``/stream.mjpg``, ``/api/events``) gets the newest frame or record at once:
the held one when the source has ended or is down, or a card saying why there is none yet. While
nothing new comes it gets a keep-alive every second, and ten times a second it is checked for
having left, so its slot is freed at once; one that stops reading is dropped after the socket
timeout.
"""
from __future__ import annotations

import hmac
import http.server
import json
import select
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Optional

from ..errors import EmoError
from .params import PARAMS, TOKEN, BadRequest, read_params
from .state import LiveState, ServeOptions

PAGE = Path(__file__).parent / "web" / "index.html"

FRAME_HEADER = "X-Emo-Frame"  # on /snapshot.jpg and each MJPEG part: the "frame" of the record the image shows
TICK = 0.1  # seconds between checks that an idle streaming client is still there
KEEPALIVE = 1.0  # seconds without data after which a streaming client gets a keep-alive
STREAM_SNDBUF = 256 * 1024  # send buffer of a streaming client: a few frames, so a stall shows (and old frames don't pile up)

ROUTES = {"/": "page", "/index.html": "page", "/stream.mjpg": "mjpeg", "/snapshot.jpg": "snapshot",
          "/api/latest": "latest", "/api/events": "events", "/api/status": "status", "/metrics": "metrics",
          "/healthz": "healthz"}


class ClientLeft(Exception):
    """A streaming client closed its connection."""


def client_gone(sock: socket.socket) -> bool:
    """True when the peer has closed (or reset) the connection; never blocks."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    try:
        if not poller.poll(0):
            return False
        return sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


class Handler(http.server.BaseHTTPRequestHandler):
    """One HTTP request (the standard library parses it); :func:`make_handler` binds the state."""

    state = None  # LiveState
    opts = None  # ServeOptions
    page_html = b""
    server_version = "emo"
    sys_version = ""
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # requests are counted in /metrics, not printed
        pass

    def do_GET(self):
        path, _, query = self.path.partition("?")
        with self.state.cond:
            self.state.c.http_requests += 1
        route = ROUTES.get(path)
        if route is None:
            return self._send(404, "text/plain", b"not found\n")
        needs_token = bool(self.opts.token) and route != "healthz"
        try:
            params = read_params(query.partition("#")[0], {**({"token": TOKEN} if needs_token else {}), **PARAMS.get(route, {})})
        except BadRequest as e:
            return self._send(400, "text/plain", f"{e}\n".encode())
        if needs_token and not self._authorized(params["token"]):
            with self.state.cond:
                self.state.c.unauthorized += 1
            return self._send(401, "text/plain", b"token required: add ?token=... or 'Authorization: Bearer ...'\n",
                              {"WWW-Authenticate": "Bearer"})
        try:
            getattr(self, route)(params)
        except socket.timeout:  # the client stopped reading
            with self.state.cond:
                self.state.c.dropped_clients += 1
            self.close_connection = True
        except (ClientLeft, ConnectionError):
            self.close_connection = True

    def do_POST(self):
        self._send(405, "text/plain", b"only GET\n", {"Allow": "GET"})

    do_PUT = do_DELETE = do_PATCH = do_POST

    def _authorized(self, given: str) -> bool:
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
    def page(self, params):
        self._send(200, "text/html; charset=utf-8", self.page_html)

    def latest(self, params):
        with self.state.cond:
            result = self.state.latest
        if result is None:
            return self._json({"error": "no frame yet"}, 503)
        self._json(result.record)

    def status(self, params):
        self._json(self.state.status())

    def metrics(self, params):
        self._send(200, "text/plain; version=0.0.4; charset=utf-8", self.state.metrics().encode())

    def healthz(self, params):
        h = self.state.health()
        self._json(h, 503 if h["status"] == "degraded" else 200)

    def snapshot(self, params):
        if self.state.latest is None:
            return self._send(503, "text/plain", b"no frame yet\n")
        jpeg, frame, _ = self.state.held_jpeg()
        self._send(200, "image/jpeg", jpeg, {FRAME_HEADER: str(frame)})

    # --- streams --------------------------------------------------------------------------
    def _stream(self, ctype: str, body, viewer: bool) -> None:
        """Hold one of the streaming slots (and count a viewer) while ``body()`` writes; 503 when all are taken."""
        st = self.state
        with st.cond:
            full = st.streams >= self.opts.max_streams
            if not full:
                st.streams += 1
                st.viewers += viewer
                st.cond.notify_all()  # the encoder starts when the first viewer comes
        if full:
            return self._send(503, "text/plain", b"too many streaming clients\n")
        try:
            self.close_connection = True
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, STREAM_SNDBUF)
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Cache-Control", "no-store")
            self.send_header("Connection", "close")
            self.end_headers()
            body()
        finally:
            with st.cond:
                st.streams -= 1
                st.viewers -= viewer

    def _keepalive_due(self, last_write: float) -> bool:
        """Between writes: True when a keep-alive is due; ClientLeft when the client has gone."""
        if time.monotonic() - last_write >= KEEPALIVE:
            return True
        if client_gone(self.connection):
            raise ClientLeft
        return False

    def _part(self, jpeg: bytes, frame: int) -> float:
        """One MJPEG part, closed by the next boundary so that a browser shows it at once."""
        self.wfile.write(b"Content-Type: image/jpeg\r\nContent-Length: %d\r\n%s: %d\r\n\r\n"
                         % (len(jpeg), FRAME_HEADER.encode(), frame) + jpeg + b"\r\n--frame\r\n")
        return time.monotonic()

    def mjpeg(self, params):
        st = self.state

        def body():
            jpeg, frame, sent = st.held_jpeg()  # the newest frame at once, held or not
            self.wfile.write(b"--frame\r\n")
            last = self._part(jpeg, frame)
            while True:
                with st.cond:
                    st.jpeg_ready.wait_for(lambda: st.closed or st.c.jpeg_frames > sent, timeout=TICK)
                    if st.closed:
                        return
                    new = st.c.jpeg_frames > sent and st.jpeg is not None
                    if new:  # JPEGs made while this viewer was still writing the last one are skipped
                        st.c.skipped_slow_viewer += st.c.jpeg_frames - sent - 1
                        jpeg, frame, sent = st.jpeg, st.jpeg_frame, st.c.jpeg_frames
                if new or self._keepalive_due(last):
                    if not new and frame < 0:  # no frame yet: the card may say something new
                        jpeg, frame, sent = st.held_jpeg()
                    last = self._part(jpeg, frame)
        self._stream("multipart/x-mixed-replace; boundary=frame", body, viewer=True)

    def events(self, params):
        st, rate = self.state, params["rate"]
        gap = 1.0 / rate if rate > 0 else 0.0

        def body():
            seen, due, last = 0, 0.0, time.monotonic()  # due: when the next event may go (rate)
            while True:
                now = time.monotonic()
                with st.cond:
                    st.cond.wait_for(lambda: st.closed or (st.seq > seen and time.monotonic() >= due),
                                     timeout=TICK if due <= now else min(TICK, due - now))
                    if st.closed:
                        return
                    fresh = st.seq > seen and time.monotonic() >= due
                    if fresh:
                        record, seen = st.latest.record, st.seq
                if fresh:
                    self.wfile.write(b"data: " + json.dumps(record, separators=(",", ":")).encode() + b"\n\n")
                    last = time.monotonic()
                    due = last + gap
                elif self._keepalive_due(last):
                    self.wfile.write(b": keep-alive\n\n")
                    last = time.monotonic()
        self._stream("text/event-stream", body, viewer=False)


class HTTPServer(http.server.ThreadingHTTPServer):
    """The standard threading server. A client that resets or drops its connection (between
    requests, say) is no error; a request that fails in an unforeseen way is one line on stderr."""

    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        e = sys.exc_info()[1]
        if isinstance(e, (ConnectionError, TimeoutError)):
            return
        print(f"emo-edge: warning: a request failed: {type(e).__name__}: {' '.join(str(e).split())[:200]}",
              file=sys.stderr, flush=True)


def make_handler(state, opts, page_html: bytes) -> type:
    """The request handler class, bound to one LiveState; the socket timeout drops stalled clients."""
    return type("BoundHandler", (Handler,), {"state": state, "opts": opts, "page_html": page_html,
                                             "timeout": opts.client_timeout})


class BackgroundServer:
    """An HTTPServer for ``handler`` on ``opts.host:opts.port``, answering in background threads
    (serve's page, label's page); ``port`` is the one it got; ``close()`` stops it."""

    def __init__(self, handler: type, opts: ServeOptions, thread_name: str):
        try:
            self.httpd = HTTPServer((opts.host, opts.port), handler)
        except OSError as e:
            raise EmoError(f"cannot listen on {opts.host}:{opts.port} ({e.strerror}); pick another --port or --host") from None
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name=thread_name, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class Server(BackgroundServer):
    """serve's HTTP server, bound to one LiveState; ``close()`` ends the streams and the server."""

    def __init__(self, state: LiveState, opts: ServeOptions):
        self.state = state
        super().__init__(make_handler(state, opts, PAGE.read_bytes()), opts, "emo-http")

    def write(self, result) -> None:
        self.state.write(result)

    def close(self) -> None:
        self.state.close()
        super().close()
