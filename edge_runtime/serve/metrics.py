"""`/metrics` of `emo-edge serve`: the live state's counters in Prometheus text format 0.0.4."""
from __future__ import annotations


def metrics_text(state) -> str:
    """The rows of one LiveState (and of the other sinks that report through it) as Prometheus text."""
    with state.cond:
        c, up, reconnects = state.c, state.health()["status"] != "degraded", state.reconnects()
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
            ("emo_reconnects", "counter", "Times the source came back after a drop-out.", [("", reconnects)]),
            ("emo_source_up", "gauge", "1 while frames arrive, 0 when the source is down.", [("", int(up))]),
            ("emo_viewers", "gauge", "MJPEG viewers now.", [("", state.viewers)]),
            ("emo_streams", "gauge", "Streaming clients now (MJPEG and server-sent events).", [("", state.streams)]),
            ("emo_dropped_clients", "counter", "Clients dropped for stalling.", [("", c.dropped_clients)]),
            ("emo_unauthorized_requests", "counter", "Requests refused for a missing or wrong token.", [("", c.unauthorized)]),
            ("emo_http_requests", "counter", "HTTP requests served.", [("", c.http_requests)]),
        ]
    for extra in state.extra_metrics:
        rows += extra()
    out = []
    for name, kind, help_, samples in rows:
        full = name + "_total" if kind == "counter" else name  # text format 0.0.4: counters end in _total
        out += [f"# HELP {full} {help_}", f"# TYPE {full} {kind}"]
        out += [f"{full}{labels} {value}" for labels, value in samples]
    return "\n".join(out) + "\n"
