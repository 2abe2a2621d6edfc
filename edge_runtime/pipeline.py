"""The infer loop: source -> recognizer -> outputs, with clean stops on SIGINT/SIGTERM."""
from __future__ import annotations

import signal
import time
from typing import Optional

from .outputs import AnnotatedSaver, annotate, frame_record
from .recognizer import Recognizer
from .sources import ImageSource


class StopFlag:
    """Set by SIGINT/SIGTERM; the loop finishes the current frame, then flushes and closes."""

    def __init__(self):
        self.reason: Optional[str] = None

    def __call__(self, signum, frame):
        if self.reason is not None:  # a second Ctrl-C: stop waiting
            raise KeyboardInterrupt
        self.reason = signal.Signals(signum).name

    def install(self):
        self._old = {s: signal.signal(s, self) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def restore(self):
        for s, h in getattr(self, "_old", {}).items():
            signal.signal(s, h)


def run(source, label: str, rec: Recognizer, writer, saver: Optional[AnnotatedSaver] = None,
        max_frames: int = 0, duration: float = 0, stop: Optional[StopFlag] = None) -> dict:
    """Process frames until the source ends, a limit is hit or a signal arrives. Returns a summary."""
    stop = stop or StopFlag()
    n, t_start = 0, time.monotonic()
    faces_total = 0
    it = iter(source)
    per_image = isinstance(source, ImageSource)  # unrelated images: no tracking across them
    try:
        while stop.reason is None:
            if max_frames and n >= max_frames:
                break
            if duration and time.monotonic() - t_start >= duration:
                break
            t0 = time.perf_counter()
            frame = next(it, None)
            if frame is None:
                break
            decode_ms = (time.perf_counter() - t0) * 1e3
            if per_image:
                rec.reset()
            faces = rec.process(frame.image)
            timing = {"decode_ms": decode_ms, **rec.timings}
            writer.write(frame_record(label, frame.index, frame.timestamp, faces, timing, frame.name))
            if saver is not None:
                saver.write(annotate(frame.image, faces, rec.labels), frame.index, frame.name)
            n += 1
            faces_total += len(faces)
    finally:
        writer.close()
        if saver is not None:
            saver.close()
        source.close()
    elapsed = time.monotonic() - t_start
    return {"frames": n, "faces": faces_total, "seconds": elapsed, "fps": n / elapsed if elapsed > 0 else 0.0,
            "stopped_by": stop.reason}
