"""The infer loop: source -> recognizer -> outputs, with clean stops on SIGINT/SIGTERM."""
from __future__ import annotations

import time
from typing import Optional

from .outputs import AnnotatedSaver, annotate, frame_record
from .recognizer import Recognizer
from .sources import ImageSource
from .stopping import StopFlag


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
