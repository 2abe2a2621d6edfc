"""What `emo-edge infer` and `emo-edge serve` do around the frame loop: check the options, open
the recognizer, the source and the sinks, run the loop with signal handling, and report.

Both commands go through :func:`run_job`; serve only opens its source its own way (``opener``)
and adds sinks (its HTTP server) through ``extra_sinks``. What every job does around the loop
(the recognizer's options, signals, sinks opened after the source, the exit status of a stop) is
:mod:`emo.edge_runtime.job`, shared with `emo-edge analyze`; the loop itself is
:func:`emo.edge_runtime.pipeline.run`.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Callable, Optional

from .errors import EmoError
from .frames import Source
from .job import RecognizerOptions, run_loop, signals, stopped_status, usable_threads  # noqa: F401 (RecognizerOptions, usable_threads: imported from here too)
from .pipeline import OUTPUT_CLOSED, Metered, Sink, Summary
from .recognizer import Recognizer
from .stopping import StopFlag

FORMATS = ("auto", "json", "table", "none")


@dataclass
class JobOptions(RecognizerOptions):
    """The options infer and serve share (see ``emo-edge infer --help``)."""

    source: str = ""
    width: int = 0
    height: int = 0
    fps: float = 0.0
    reconnect: int = 10
    timeout: float = 10.0
    save: Optional[str] = None
    max_frames: int = 0
    duration: float = 0.0
    output: str = "auto"
    mqtt: Optional[str] = None
    mqtt_interval: float = 1.0
    ha_discovery: bool = True
    realtime: bool = False  # play a video file at its own frame rate (serve), not as fast as possible


ExtraSinks = Callable[[Source, Recognizer, StopFlag, list[Metered]], list[Sink]]  # serve: its HTTP server
Opener = Callable[[JobOptions, StopFlag], Source]


def run_job(o: JobOptions, extra_sinks: Optional[ExtraSinks] = None, opener: Optional[Opener] = None,
            endless: bool = False) -> int:
    """Run the loop for ``o``; returns the exit status (0, or 130/143 when stopped by a signal).
    ``extra_sinks(source, recognizer, stop, metered)`` adds sinks (``metered``: the sinks so far that
    have counters for /metrics); ``opener(o, stop)`` opens the source (default: sources.open_source);
    ``endless``: the job runs until stopped, whatever the source (serve), so what would be said at
    the end is said at the start."""
    from .sinks.outputs import JsonLinesWriter, TableWriter
    from .sinks.saver import AnnotatedSaver
    from .sources import open_source

    if o.output not in FORMATS:
        raise EmoError(f"--format must be one of {', '.join(FORMATS)}, not '{o.output}'")
    if o.mqtt:  # a bad broker URL or topic is refused before anything starts
        from .sinks.topics import parse_url
        parse_url(o.mqtt)
    rec = o.recognizer()
    saver = None
    with signals() as stop:
        try:
            if opener is not None:
                src = opener(o, stop)
            else:
                src = open_source(o.source, o.width, o.height, o.fps, o.reconnect, stop=stop, timeout=o.timeout)
            endless = endless or src.live

            def add_sinks(sinks: list[Sink]) -> None:
                nonlocal saver
                metered: list[Metered] = []
                if o.save:
                    saver = AnnotatedSaver(o.save, src.stills and len(src.files) == 1, src.fps, src.files)
                    sinks.append(saver)
                table = o.output == "table" or (o.output == "auto" and sys.stdout.isatty())
                if table:
                    sinks.append(TableWriter(rec.labels, live=src.live))
                elif o.output != "none":
                    sinks.append(JsonLinesWriter(sys.stdout))
                if o.mqtt:
                    mqtt = _mqtt_sink(o, rec)
                    sinks.append(mqtt)
                    metered.append(mqtt)
                if extra_sinks is not None:
                    sinks.extend(extra_sinks(src, rec, stop, metered))
                if endless:  # a run that may go on for ever says it now; one over files when it is done
                    _say_haar_fallback(o, rec)

            summary = run_loop(src, src.label, rec, add_sinks, stop, o.max_frames, o.duration, o.realtime)
        except EmoError as e:
            if not stop.reason:
                raise
            print(f"emo-edge: stopped by {stop.reason} ({e})", file=sys.stderr)  # e.g. while a stream was opening
            return stop.exit_code
    if not endless:
        _say_haar_fallback(o, rec)
    return _report(summary, saver, o.save, stop)


def _say_haar_fallback(o: JobOptions, rec: Recognizer) -> None:
    """--detector auto without YuNet in the cache runs Haar: one line says so, where it looked and what to
    run (a service whose user cannot see the cache `emo-edge fetch` filled would otherwise run Haar quietly)."""
    if o.detector == "auto" and rec.face_detector.name == "haar":
        from .faces import haar_fallback_line
        print(f"emo-edge: {haar_fallback_line()}", file=sys.stderr)


def _mqtt_sink(o: JobOptions, rec: Recognizer):
    from . import __version__
    from .sinks.mqtt import MqttOptions, MqttSink

    return MqttSink(MqttOptions(o.mqtt, o.mqtt_interval, o.ha_discovery), rec.labels, {"emo_version": __version__})


def _report(summary: Summary, saver, save: Optional[str], stop: StopFlag) -> int:
    if summary.stopped_by == OUTPUT_CLOSED:
        _silence_stdout()
        print(f"emo-edge: stopped: output closed after {summary.frames} frames", file=sys.stderr)
    elif summary.stopped_by:
        print(f"emo-edge: stopped by {summary.stopped_by} after {summary.frames} frames", file=sys.stderr)
    if saver is not None:
        print(f"emo-edge: wrote {saver.count} annotated frame(s) to {save}", file=sys.stderr)
    if summary.stopped_by and summary.stopped_by != OUTPUT_CLOSED:
        return stopped_status(stop)
    return 0


def _silence_stdout() -> None:
    """The reader of stdout is gone: point fd 1 at /dev/null so the final flush cannot fail."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
