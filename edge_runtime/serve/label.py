"""`emo-edge label DIR`: a page for sorting face crops into emotion folders by key, on serve's
HTTP server, token check and request hardening, with its own routes (the folder and its log:
:mod:`.label_store`).

GET ``/`` (the page, ``web/label.html``), ``/api/state`` (counts, the key map, what undo would
do), ``/api/files?folder=F`` (the faces of one folder), ``/image?folder=F&file=N`` (one face) and
``/healthz``; POST ``/api/move`` (JSON ``{"folder", "file", "to"}``) and ``/api/undo``. With a
token every route but ``/healthz`` needs it. A move must be a POST with a small JSON body
(``Content-Type: application/json``, which a page of another site cannot send without asking
first), from no other origin; on a loopback address the Host header must be a loopback name, so a
site that rebinds its DNS name to 127.0.0.1 gets nothing.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit

from ..files import shown
from ..job import signals
from ..labels import LABELS
from .http import BackgroundServer, Handler
from .job import is_loopback, say_serving, warn_if_open
from .label_store import DISCARDED, FOLDERS, LOG_NAME, LabelStore, Refused
from .params import TOKEN, BadRequest, Param, read_params
from .state import ServeOptions

PAGE = Path(__file__).parent / "web" / "label.html"
MAX_BODY = 4096  # bytes of a POST body
MAX_IMAGE = 8 * 2**20  # bytes of a face image served
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".bmp": "image/bmp",
               ".webp": "image/webp", ".tif": "image/tiff", ".tiff": "image/tiff", ".pgm": "image/x-portable-graymap",
               ".ppm": "image/x-portable-pixmap", ".jp2": "image/jp2"}
GET_ROUTES = {"/": "page", "/index.html": "page", "/api/state": "state", "/api/files": "files", "/image": "image",
              "/healthz": "healthz"}
POST_ROUTES = {"/api/move": "move", "/api/undo": "undo"}
FOLDER = Param("one of " + ", ".join(FOLDERS), "", choices=FOLDERS)
PARAMS = {"files": {"folder": FOLDER}, "image": {"folder": FOLDER, "file": Param("a file name", "", max_len=255)}}
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


class LabelHandler(Handler):
    """One request; :func:`make_handler` binds the store and the options."""

    store: LabelStore = None  # type: ignore[assignment]

    def do_GET(self):
        self._route(GET_ROUTES, "GET")

    def do_POST(self):
        self._route(POST_ROUTES, "POST")

    def end_headers(self):
        if getattr(self, "command", None) == "POST":  # an answer may come before the body is read: never reuse
            self.send_header("Connection", "close")   # the connection (send_header sets close_connection too)
        super().end_headers()

    def do_PUT(self):
        self._send(405, "text/plain", b"only GET and POST\n", {"Allow": "GET, POST"})

    do_DELETE = do_PATCH = do_PUT

    def _route(self, routes: dict, method: str) -> None:
        path, _, query = self.path.partition("?")
        route = routes.get(path)
        if route is None:
            other = (POST_ROUTES if method == "GET" else GET_ROUTES).get(path)
            if other:
                allow = "POST" if method == "GET" else "GET"
                return self._send(405, "text/plain", f"only {allow}\n".encode(), {"Allow": allow})
            return self._send(404, "text/plain", b"not found\n")
        if not self._host_ok():
            return self._send(403, "text/plain", b"this server answers only to its own address (Host header)\n")
        needs_token = bool(self.opts.token) and route != "healthz"
        try:
            params = read_params(query.partition("#")[0], {**({"token": TOKEN} if needs_token else {}), **PARAMS.get(route, {})})
        except BadRequest as e:
            return self._send(400, "text/plain", f"{e}\n".encode())
        if needs_token and not self._authorized(params["token"]):
            return self._send(401, "text/plain", b"token required: add ?token=... or 'Authorization: Bearer ...'\n",
                              {"WWW-Authenticate": "Bearer"})
        try:
            if method == "POST":
                getattr(self, route)(self._body())
            else:
                getattr(self, route)(params)
        except Refused as e:
            self._json({"error": str(e)}, e.code)
        except ConnectionError:
            self.close_connection = True

    def _host_ok(self) -> bool:
        """On a loopback address, only loopback Host names (no DNS rebinding); elsewhere any."""
        if not is_loopback(self.opts.host):
            return True
        host = self.headers.get("Host", "")
        if not host:  # an HTTP/1.0 client; a browser always says which name it asked for
            return True
        try:
            name = urlsplit("//" + host).hostname or ""
        except ValueError:
            return False
        return name in LOOPBACK_NAMES or name == self.opts.host

    def _body(self) -> dict:
        """The JSON object a POST carries, or Refused (4xx) for anything else."""
        if self.headers.get("Transfer-Encoding"):
            raise Refused(411, "send a Content-Length, not a chunked body")
        origin = self.headers.get("Origin")
        if origin and origin != "null" and urlsplit(origin).netloc != self.headers.get("Host", ""):
            raise Refused(403, "a move must come from this server's own page")
        if self.headers.get_content_type() != "application/json":
            raise Refused(415, "send the body as application/json")
        try:
            size = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise Refused(411, "a Content-Length is required") from None
        if not 0 <= size <= MAX_BODY:
            raise Refused(413, f"the body is larger than {MAX_BODY} bytes")
        try:
            body = json.loads(self.rfile.read(size) or b"{}")
        except (ValueError, UnicodeDecodeError):
            raise Refused(400, "the body is not JSON") from None
        if not isinstance(body, dict):
            raise Refused(400, "the body must be a JSON object")
        return body

    # --- endpoints ------------------------------------------------------------------------------
    def page(self, params):
        self._send(200, "text/html; charset=utf-8", self.page_html, {"X-Frame-Options": "DENY",
                                                                     "Content-Security-Policy": "frame-ancestors 'none'"})

    def healthz(self, params):
        self._json({"status": "ok"})

    def state(self, params):
        self._json(state_of(self.store))

    def files(self, params):
        if not params["folder"]:
            raise Refused(400, "folder is required")
        self._json({"folder": params["folder"], "files": self.store.files(params["folder"])})

    def image(self, params):
        p = self.store.face_path(params["folder"], params["file"])
        try:
            with open(p, "rb") as fh:
                data = fh.read(MAX_IMAGE + 1)
        except OSError:
            raise Refused(404, "the face could not be read") from None
        if len(data) > MAX_IMAGE:
            raise Refused(413, f"the face is larger than {MAX_IMAGE // 2**20} MiB")
        self._send(200, IMAGE_TYPES.get(p.suffix.lower(), "application/octet-stream"), data,
                   {"X-Content-Type-Options": "nosniff"})

    def move(self, body: dict):
        folder, name, to = (body.get(k) for k in ("folder", "file", "to"))
        if not all(isinstance(v, str) for v in (folder, name, to)):
            raise Refused(400, 'send {"folder": ..., "file": ..., "to": ...} (strings)')
        m = self.store.move(folder, name, to)
        self._json({"move": m.record(), **state_of(self.store)})

    def undo(self, body: dict):
        m = self.store.undo()
        self._json({"move": m.record(), **state_of(self.store)})


def state_of(store: LabelStore) -> dict:
    """What the page shows besides the faces: counts per folder, the key map, what undo would do."""
    last = store.undoable()[-1:] or [None]
    return {"folder": shown(store.root.name), "labels": list(LABELS), "discarded": DISCARDED,
            "keys": {str(i + 1): n for i, n in enumerate(LABELS)} | {"x": DISCARDED},
            "counts": store.counts(), "undoable": len(store.done), "last": last[0].record() if last[0] else None,
            "log": LOG_NAME}


def make_handler(store: LabelStore, opts: ServeOptions, page_html: bytes) -> type:
    return type("BoundLabelHandler", (LabelHandler,), {"store": store, "opts": opts, "page_html": page_html,
                                                       "timeout": opts.client_timeout})


class LabelServer(BackgroundServer):
    """``emo-edge label``'s HTTP server in background threads; :meth:`close` stops it."""

    def __init__(self, store: LabelStore, opts: ServeOptions):
        self.store = store
        super().__init__(make_handler(store, opts, PAGE.read_bytes()), opts, "emo-label-http")


def run_label(root: Path, host: str = "127.0.0.1", port: int = 8000, token: Optional[str] = None) -> int:
    """`emo-edge label DIR`: serve the page until SIGINT/SIGTERM; the exit status (130/143)."""
    store = LabelStore(root)
    note = store.finish_last()
    if note:
        print(f"emo-edge: {note}", file=sys.stderr, flush=True)
    opts = ServeOptions(host=host, port=port, token=token or None)
    warn_if_open(opts, "can see and move the faces")
    with signals() as stop:
        server = LabelServer(store, opts)
        try:
            counts = store.counts()
            print(f"emo-edge: labelling {sum(counts.values())} faces in {shown(root)} (undo: {len(store.done)} moves "
                  f"in {LOG_NAME})", file=sys.stderr, flush=True)
            say_serving(host, server.port)
            while not stop.wait(0.5):
                pass
        finally:
            server.close()
    print(f"emo-edge: label stopped by {stop.reason}; {store.session_moves} moves this run, every one in "
          f"{shown(store.log_path)}", file=sys.stderr, flush=True)
    return stop.exit_code
