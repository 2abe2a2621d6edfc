"""How `emo-edge serve` runs the infer job: the LiveState and HTTP server it adds as sinks, and how
it plays its source."""
from __future__ import annotations

import ipaddress
import sys
from typing import Optional

from .http import Server
from .state import LiveState, ServeOptions


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def pace(src, realtime: bool) -> Optional[str]:
    """How serve plays ``src``: "realtime" or "fast" for a video file, None for a camera, a stream or images."""
    if src.live or not src.fps:
        return None
    return "realtime" if realtime else "fast"


def serve_sinks(opts: ServeOptions, realtime: bool = True):
    """``extra_sinks`` for runner.run_job: the LiveState + HTTP server, started once the source is open.
    ``realtime``: whether the loop plays a video file at its own frame rate (said on stderr)."""

    def make(src, rec, stop, sinks: list) -> list:
        if not is_loopback(opts.host) and not opts.token:
            print(f"emo-edge: warning: serving on {opts.host}:{opts.port} without --token; anyone on the network "
                  "can see the camera", file=sys.stderr)
        det = rec.face_detector
        info = {"source": src.label, "model": rec.classifier.path.name, "model_arch": rec.classifier.meta.arch,
                "precision": rec.classifier.meta.precision, "detector": det.name, "labels": list(rec.labels),
                "pace": pace(src, realtime)}
        state = LiveState(src, rec.labels, info, opts, [s.metrics for s in sinks if hasattr(s, "metrics")])
        server = Server(state, opts)
        if info["pace"] == "realtime":
            print(f"emo-edge: playing {src.label} at its own {src.fps:g} fps, skipping frames if processing falls behind "
                  "(--fast: every frame, as fast as possible)", file=sys.stderr, flush=True)
        elif info["pace"] == "fast":
            print(f"emo-edge: playing {src.label} as fast as possible, faster or slower than its own {src.fps:g} fps "
                  "(without --fast: at its own rate)", file=sys.stderr, flush=True)
        shown_host = f"[{opts.host}]" if ":" in opts.host else opts.host
        print(f"emo-edge: serving http://{shown_host}:{server.port}/", file=sys.stderr, flush=True)
        return [server]

    return make
