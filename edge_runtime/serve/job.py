"""How `emo-edge serve` runs the infer job (:func:`run_serve`): its source is opened or waited for
(:func:`~emo.edge_runtime.sources.open_or_wait`) and held when it ends (:class:`HeldSource`), and
the LiveState and HTTP server are added as sinks (:func:`serve_sinks`). The loop itself knows
nothing of serve."""
from __future__ import annotations

import ipaddress
import sys
from typing import Iterator, Optional

from ..frames import Frame, Source
from ..pipeline import Metered, Sink
from ..recognizer import Recognizer
from ..runner import JobOptions, run_job
from ..sources import open_or_wait
from ..stopping import StopFlag
from .http import Server
from .state import LiveState, ServeOptions


def run_serve(o: JobOptions, opts: ServeOptions) -> int:
    """`emo-edge serve`: the infer job for ``o``, served as ``opts`` says, until stopped; the exit status."""
    return run_job(o, serve_sinks(opts, o.realtime), opener=open_held, endless=True)


def open_held(o: JobOptions, stop: StopFlag) -> Source:
    """The source of a serve job: opened now, or waited for (a camera that is not there yet), and held."""
    return HeldSource(open_or_wait(o.source, o.width, o.height, o.fps, o.reconnect, stop=stop, timeout=o.timeout), stop)


class HeldSource:
    """A source as serve plays it: when it ends (an image, a video file), the loop does not end but
    waits, its last frame held on the page and in the API, until a stop is asked for. Everything
    else is the inner source's."""

    def __init__(self, inner: Source, stop: StopFlag):
        self.inner, self.stop = inner, stop
        self.frames = 0  # frames read from it

    label = property(lambda self: self.inner.label)
    live = property(lambda self: self.inner.live)
    stills = property(lambda self: self.inner.stills)
    fps = property(lambda self: self.inner.fps)
    size = property(lambda self: self.inner.size)
    files = property(lambda self: self.inner.files)
    state = property(lambda self: self.inner.state)
    reconnects = property(lambda self: self.inner.reconnects)
    error = property(lambda self: self.inner.error)

    def __iter__(self) -> Iterator[Frame]:
        for frame in self.inner:
            self.frames += 1
            yield frame
        if self.stop.reason is None:
            print(f"emo-edge: {self.label} ended after {self.frames} frames; still serving the last one "
                  "(Ctrl-C to stop)", file=sys.stderr, flush=True)
            while not self.stop.wait(0.5):
                pass

    def close(self) -> None:
        self.inner.close()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def pace(src: Source, realtime: bool) -> Optional[str]:
    """How serve plays ``src``: "realtime" or "fast" for a video file, None for a camera, a stream or images."""
    if src.live or not src.fps:
        return None
    return "realtime" if realtime else "fast"


def warn_if_open(opts: ServeOptions, exposed: str) -> None:
    """The warning for a page bound beyond loopback without a token (``exposed``: what anyone could do)."""
    if not is_loopback(opts.host) and not opts.token:
        print(f"emo-edge: warning: serving on {opts.host}:{opts.port} without --token; anyone on the network "
              f"{exposed}", file=sys.stderr, flush=True)


def say_serving(host: str, port: int) -> None:
    shown_host = f"[{host}]" if ":" in host else host
    print(f"emo-edge: serving http://{shown_host}:{port}/", file=sys.stderr, flush=True)


def serve_sinks(opts: ServeOptions, realtime: bool = True):
    """``extra_sinks`` for runner.run_job: the LiveState + HTTP server, started once the source is open.
    ``realtime``: whether the loop plays a video file at its own frame rate (said on stderr)."""

    def make(src: Source, rec: Recognizer, stop: StopFlag, metered: list[Metered]) -> list[Sink]:
        warn_if_open(opts, "can see the camera")
        det = rec.face_detector
        info = {"source": src.label, "model": rec.classifier.path.name, "model_arch": rec.classifier.meta.arch,
                "precision": rec.classifier.meta.precision, "detector": det.name, "labels": list(rec.labels),
                "pace": pace(src, realtime)}
        state = LiveState(src, rec.labels, info, opts, [m.metrics for m in metered])
        server = Server(state, opts)
        if info["pace"] == "realtime":
            print(f"emo-edge: playing {src.label} at its own {src.fps:g} fps, skipping frames if processing falls behind "
                  "(--fast: every frame, as fast as possible)", file=sys.stderr, flush=True)
        elif info["pace"] == "fast":
            print(f"emo-edge: playing {src.label} as fast as possible, faster or slower than its own {src.fps:g} fps "
                  "(without --fast: at its own rate)", file=sys.stderr, flush=True)
        say_serving(opts.host, server.port)
        return [server]

    return make
