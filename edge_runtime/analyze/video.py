"""One video of `emo-edge analyze`: per-frame table, per-track summaries and a timeline plot.

:func:`analyze_video` is the whole job for one video (the Python API): it runs the one frame loop
(:func:`emo.edge_runtime.pipeline.run`) with three sinks, a CSV writer that streams rows to disk,
per-track running sums, and a progress counter, then writes ``tracks.csv``, ``timeline.png`` and
``summary.json`` from what those sinks kept. Memory does not grow with the video's length.
A video whose outputs are complete and were made with the same parameters is skipped (resume,
:mod:`.folder`). :mod:`.batch` maps it over many videos (`emo-edge analyze`).

Every output is written under a temporary name and renamed when complete (:mod:`.outputs`);
``summary.json`` is written last and is the mark of a finished video (it is removed first when a
video is redone).
"""
from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path
from typing import Callable, Optional

import cv2

from ..files import discard, shown
from ..job import run_loop
from ..ledger import TrackLedger
from ..stopping import StopFlag
from .folder import claim, is_complete, raw_path
from .inputs import check_recording, identity, video_input
from .options import AnalyzeOptions, VideoResult
from .outputs import Counts, CsvRows, VideoFacts, write_outputs


class ProgressSink:
    """Calls ``report(frames_read, frames_total)`` at most ``hz`` times a second, and at the end."""

    def __init__(self, report: Callable[[int, int], None], total: int, hz: float = 5.0):
        self.report, self.total, self.period = report, total, 1.0 / hz
        self._next, self.done = 0.0, 0

    def write(self, result) -> None:
        self.done = result.frame.index + 1
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self.period
            self.report(self.done, self.total)

    def close(self) -> None:
        self.report(self.done, self.total)


def analyze_video(video, out_dir, options: Optional[AnalyzeOptions] = None, force: bool = False,
                  stop: Optional[StopFlag] = None, progress: Optional[Callable[[int, int], None]] = None,
                  parameters: Optional[dict] = None) -> VideoResult:
    """Analyse one video file, or the http(s) URL of one, into ``out_dir`` (frames.csv, tracks.csv,
    timeline.png, summary.json).

    Returns a :class:`VideoResult` (``status`` done, skipped or stopped); raises EmoError when
    the video cannot be read or the outputs cannot be written. ``progress(read, total)`` is
    called a few times a second; ``stop`` (a StopFlag) ends the run early, leaving no new
    outputs. ``parameters`` is ``options.parameters()``, when the caller already has it."""
    o = options or AnalyzeOptions()
    o.check()
    path = video_input(video)
    out = Path(out_dir)
    params = parameters or o.parameters()
    ident = identity(path)
    if not force and is_complete(out, params, ident):
        return VideoResult(shown(path), shown(out), "skipped", "complete, same parameters")
    claim(out, ident, force)
    result = None
    try:
        result = _analyze(path, out, o, params, ident, stop or StopFlag(), progress)
        return result
    finally:
        if result is None or result.status != "done":
            try:
                out.rmdir()  # only when empty: nothing of a failed or stopped first attempt is left behind
            except OSError:
                pass


def _analyze(path, out: Path, o: AnalyzeOptions, params: dict, ident: dict, stop: StopFlag, progress) -> VideoResult:
    from ..sources import VideoSource

    t0, label = time.monotonic(), shown(path)
    src = VideoSource(path, label, False, stop=stop, stride=o.stride)
    try:
        check_recording(src, label)
        total = int(src.cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        rec = o.recognizer()
    except BaseException:
        src.close()
        raise
    raw = raw_path(out)  # rows as the tracker numbered them; frames.csv is made from it
    try:
        with ExitStack() as files:
            rows, sums = None, TrackLedger(rec.labels)

            def add_sinks(sinks: list) -> None:
                nonlocal rows
                rows = CsvRows(files.enter_context(open(raw, "w", newline="", encoding="utf-8")), rec.labels)
                sinks += [rows, sums] + ([ProgressSink(progress, total)] if progress else [])

            summary = run_loop(src, label, rec, add_sinks, stop)
        if summary.stopped_by:
            return VideoResult(label, shown(out), "stopped", f"stopped by {summary.stopped_by}", summary.frames)
        facts = VideoFacts(ident, src.fps, list(src.size) if src.size else None, total)
        return write_outputs(out, raw, sums, Counts(summary.frames, rows.rows), rec, o, params, facts, label, t0)
    finally:
        discard(raw)
