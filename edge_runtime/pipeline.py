"""The frame loop: source -> recognizer -> sinks, with clean stops on SIGINT/SIGTERM.

Every way of consuming results (JSON Lines, the live table, the annotated video, serve, MQTT,
analyze, benchmarks) is a :class:`Sink`: an object with ``write(result)`` and ``close()`` that the
one loop feeds. A sink gets a :class:`FrameResult`: the frame, its faces, the JSON Lines record,
and the annotated image (drawn on first use, once per frame, whoever asks). A sink that counts
something for ``/metrics`` is also :class:`Metered`. The source is a :class:`~.frames.Source`;
the loop knows no sink and no command by name.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional, Protocol, Sequence

import numpy as np

from .draw import annotate
from .recognizer import Face, Recognizer
from .frames import Frame, Source
from .stopping import StopFlag

OUTPUT_CLOSED = "output closed"  # stop reason when the reader of stdout goes away (`| head -1`)


def frame_record(source: str, frame_index: int, timestamp: float, faces: list, timing: dict, name: str = "") -> dict:
    """One JSON Lines object (schema: docs/infer.md)."""
    rec = {"source": source, "frame": frame_index, "timestamp": round(timestamp, 4)}
    if name:
        rec["file"] = name
    rec["faces"] = [f.to_dict() for f in faces]
    rec["timing_ms"] = {k.removesuffix("_ms"): round(v, 3) for k, v in timing.items()}
    return rec


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
    """What the loop feeds: ``write`` once per frame (it must not block the loop), ``close`` at the end."""

    def write(self, result: FrameResult) -> None: ...

    def close(self) -> None: ...


MetricRow = tuple  # (name, "counter" or "gauge", help text, [(labels such as '{reason="x"}', value), ...])


class Metered(Protocol):
    """A sink that also has counters for serve's ``/metrics`` (the MQTT sink: messages sent, dropped)."""

    def metrics(self) -> list[MetricRow]: ...


@dataclass
class Summary:
    frames: int = 0
    faces: int = 0
    seconds: float = 0.0
    stopped_by: Optional[str] = None
    late: int = 0  # frames skipped to keep a video at its own rate (realtime)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


class Pacer:
    """Keeps a video file at its own frame rate: each frame waits until it is due (by its
    timestamp), and a frame already more than one frame late is skipped, so a slow machine keeps
    time instead of falling behind."""

    def __init__(self, fps: float, stop: StopFlag):
        self.period, self.stop = 1.0 / fps, stop
        self.t0: Optional[float] = None  # the wall-clock time of timestamp 0

    def due(self, frame: Frame) -> bool:
        """Wait until ``frame`` is due; False when it is late (skip it)."""
        now = time.monotonic()
        if self.t0 is None:
            self.t0 = now - frame.timestamp
        lag = now - (self.t0 + frame.timestamp)
        if lag > self.period:
            return False
        self.stop.wait(-lag)
        return True


def run(source: Source, label: str, rec: Recognizer, sinks: Sequence[Sink], max_frames: int = 0, duration: float = 0,
        stop: Optional[StopFlag] = None, realtime: bool = False) -> Summary:
    """Process frames until the source ends, a limit is hit or a stop is asked for.

    Sinks are closed (and the source too) however the loop ends; a reader that closes stdout
    stops the loop with ``stopped_by == OUTPUT_CLOSED``. With ``realtime``, a video file plays at
    its own frame rate (see :class:`Pacer`)."""
    stop = stop or StopFlag()
    summary, t_start = Summary(), time.monotonic()
    it = iter(source)
    pacer = Pacer(source.fps, stop) if realtime and not source.live and source.fps else None
    try:
        while stop.reason is None:
            if (max_frames and summary.frames >= max_frames) or (duration and time.monotonic() - t_start >= duration):
                break
            t0 = time.perf_counter()
            frame = next(it, None)
            if frame is None:
                break
            decode_ms = (time.perf_counter() - t0) * 1e3
            if pacer is not None and not pacer.due(frame):
                summary.late += 1
                continue
            if source.stills:  # unrelated images: no tracking across them
                rec.reset()
            done = rec.process_timed(frame.image)
            faces = done.faces
            record = frame_record(label, frame.index, frame.timestamp, faces, {"decode_ms": decode_ms, **done.timings}, frame.name)
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


def _close_all(sinks: Sequence[Sink]) -> None:
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
