"""The job wrapper: what every command that runs the frame loop does around it, written once.

`emo-edge infer` and `serve` (:func:`emo.edge_runtime.runner.run_job`) and `emo-edge analyze`
(one video, :func:`emo.edge_runtime.analyze.video.analyze_video`; a batch,
:func:`emo.edge_runtime.analyze.batch.analyze_batch`; on Ray, ``analyze.ray_runner``) all:

- make the Recognizer from the same options (:class:`RecognizerOptions`), so that a bad ``--model``
  or ``--detector-model`` is refused before any work, and ``--threads`` is held to the cores here;
- hold SIGINT and SIGTERM for the length of the job (:func:`signals`): a signal sets the job's
  :class:`~emo.edge_runtime.stopping.StopFlag`, and the handlers before are restored however it ends;
- open the source, then the sinks, and run the one loop (:func:`run_loop`): a sink that fails to
  open closes the sinks opened before it and the source;
- end with the shell's exit status for a stop (:func:`stopped_status`), and turn a unit of work
  that failed into one line (:func:`failure`) where a batch goes on past it.
"""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

from .errors import EmoError
from .frames import Source
from .pipeline import Sink, Summary, run
from .recognizer import Recognizer
from .stopping import StopFlag


@dataclass
class RecognizerOptions:
    """The options that make the Recognizer, shared by infer, serve and analyze."""

    model: Optional[Path] = None
    detector: str = "auto"
    detector_model: Optional[Path] = None
    align: bool = True
    detect_every: int = 1
    detect_size: Optional[int] = None
    smooth: float = 0.0
    tta: bool = False
    threads: int = 1
    spin: bool = True

    def recognizer(self) -> Recognizer:
        return Recognizer(model=self.model, detector=self.detector,
                          detector_model=str(self.detector_model) if self.detector_model else None,
                          threads=usable_threads(self.threads), spin=self.spin, detect_every=self.detect_every,
                          smooth=self.smooth, detect_size=self.detect_size, align=self.align, tta=self.tta)


def usable_threads(threads: int) -> int:
    cores = os.cpu_count() or 1
    if threads > cores:
        print(f"emo-edge: warning: --threads {threads} is more than the {cores} CPU cores here; using {cores}", file=sys.stderr)
        return cores
    return threads


@contextmanager
def signals() -> Iterator[StopFlag]:
    """A StopFlag that SIGINT and SIGTERM set while the block runs (main thread only); the
    handlers before it are restored however the block ends. The flag stays readable after."""
    stop = StopFlag().install()
    try:
        yield stop
    finally:
        stop.restore()


def run_loop(src: Source, label: str, rec: Recognizer, add_sinks: Callable[[list[Sink]], None], stop: StopFlag,
             max_frames: int = 0, duration: float = 0.0, realtime: bool = False) -> Summary:
    """Open the sinks, once the source is open (``add_sinks(sinks)`` appends them to ``sinks``),
    and run the frame loop over ``src``. When a sink fails to open, the sinks added before it and
    the source are closed and the error raised; the loop itself closes them however it ends."""
    sinks: list[Sink] = []
    try:
        add_sinks(sinks)
    except BaseException:
        for s in (*sinks, src):
            s.close()
        raise
    return run(src, label, rec, sinks, max_frames, duration, stop, realtime)


def stopped_status(stop: StopFlag) -> int:
    """The exit status of a job a stop ended: 130 (SIGINT), 143 (SIGTERM), else 1."""
    return stop.exit_code or 1


def failure(e: BaseException) -> str:
    """One line for a unit of work that failed while the job goes on (a video of a batch): the
    message of an EmoError, "out of memory", or the unexpected exception's type and first line."""
    if isinstance(e, EmoError):
        return str(e)
    if isinstance(e, MemoryError):
        return "out of memory"
    return f"unexpected {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
