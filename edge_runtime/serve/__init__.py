"""`emo-edge serve`: the infer loop, plus a small HTTP server for a device without a screen.

The loop feeds one more sink, :class:`LiveState` (:mod:`.state`). It keeps the latest frame record
and counters and never blocks: a JPEG encoder thread draws and encodes the newest frame, at most
``stream_fps`` times a second and only while someone watches, once for all viewers. Each HTTP
client runs in its own thread and only ever takes the newest JPEG or record, so a slow viewer
skips frames (counted) and a stalled one is dropped after a socket timeout; neither holds up
the loop nor grows memory. A viewer who comes when no new frames do (the source ended or is
down) gets the held frame, or a card that says why there is none yet.

Endpoints (see :mod:`.http`): ``/`` (the page, every byte served from here: ``web/index.html``),
``/stream.mjpg``, ``/snapshot.jpg``, ``/api/latest``, ``/api/events`` (server-sent events),
``/api/status``, ``/metrics`` (Prometheus text format, :mod:`.metrics`) and ``/healthz``. With a
token, everything but ``/healthz`` needs it. :mod:`.job` wires it into the infer job.
"""
from .http import PAGE, Server
from .job import HeldSource, is_loopback, open_held, pace, run_serve, serve_sinks
from .state import Counters, LiveState, ServeOptions

__all__ = ["PAGE", "Counters", "HeldSource", "LiveState", "ServeOptions", "Server", "is_loopback", "open_held", "pace",
           "run_serve", "serve_sinks"]
