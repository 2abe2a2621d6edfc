"""The frame loop: source -> recognizer -> sinks, with clean stops on SIGINT/SIGTERM.

Every way of consuming results (JSON Lines, the live table, the annotated video, benchmarks) is
a sink: an object with ``write(result)`` and ``close()`` that the one loop feeds. A sink gets a
:class:`FrameResult`: the frame, its faces, the JSON Lines record, and the annotated image
(drawn on first use, once per frame, whoever asks).
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Optional, Protocol

import numpy as np

from .outputs import annotate, frame_record
from .recognizer import Face, Recognizer
from .sources import Frame, ImageSource
from .stopping import StopFlag

OUTPUT_CLOSED = "output closed"  # stop reason when the reader of stdout goes away (`| head -1`)


@dataclass
class FrameResult:
    frame: Frame
    faces: list[Face]
    record: dict  # the JSON Lines object (schema in README.md)
    labels: tuple[str, ...]
    _annotated: Optional[np.ndarray] = field(default=None, repr=False)

    @property
    def annotated(self) -> np.ndarray:
        """The frame with boxes and score bars drawn; made once, on first use."""
        if self._annotated is None:
            self._annotated = annotate(self.frame.image, self.faces, self.labels)
        return self._annotated


class Sink(Protocol):
    def write(self, result: FrameResult) -> None: ...

    def close(self) -> None: ...


@dataclass
class Summary:
    frames: int = 0
    faces: int = 0
    seconds: float = 0.0
    stopped_by: Optional[str] = None

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def run(source, label: str, rec: Recognizer, sinks: list, max_frames: int = 0, duration: float = 0,
        stop: Optional[StopFlag] = None, hold_at_end: bool = False) -> Summary:
    """Process frames until the source ends, a limit is hit or a stop is asked for.

    Sinks are closed (and the source too) however the loop ends; a reader that closes stdout
    stops the loop with ``stopped_by == OUTPUT_CLOSED``. With ``hold_at_end``, a source that
    ends leaves the sinks open with its last frame until a stop is asked for (serve)."""
    stop = stop or StopFlag()
    summary, t_start = Summary(), time.monotonic()
    it = iter(source)
    per_image = isinstance(source, ImageSource)  # unrelated images: no tracking across them
    try:
        while stop.reason is None:
            if (max_frames and summary.frames >= max_frames) or (duration and time.monotonic() - t_start >= duration):
                break
            t0 = time.perf_counter()
            frame = next(it, None)
            if frame is None:
                if hold_at_end and stop.reason is None:
                    print(f"emo-edge: {label} ended after {summary.frames} frames; still serving the last one "
                          "(Ctrl-C to stop)", file=sys.stderr, flush=True)
                    while not stop.wait(0.5):
                        pass
                break
            decode_ms = (time.perf_counter() - t0) * 1e3
            if per_image:
                rec.reset()
            faces = rec.process(frame.image)
            record = frame_record(label, frame.index, frame.timestamp, faces, {"decode_ms": decode_ms, **rec.timings}, frame.name)
            if summary.frames == 0:  # say once which detector runs (auto may pick either)
                record["detector"] = rec.face_detector.name
            result = FrameResult(frame, faces, record, rec.labels)
            try:
                for sink in sinks:
                    sink.write(result)
            except BrokenPipeError:
                stop.set(OUTPUT_CLOSED)
            summary.frames += 1
            summary.faces += len(faces)
    finally:
        summary.seconds = time.monotonic() - t_start
        summary.stopped_by = stop.reason
        try:
            source.close()
        finally:
            _close_all(sinks)
    return summary


def _close_all(sinks: list) -> None:
    """Close every sink even if one fails; the first failure is raised afterwards."""
    first: Optional[BaseException] = None
    for sink in sinks:
        try:
            sink.close()
        except BrokenPipeError:
            pass
        except Exception as e:  # noqa: BLE001 - re-raised below, after the other sinks are closed
            first = first or e
    if first is not None:
        raise first
