"""Many videos for `emo-edge analyze`: :func:`analyze_batch` maps :func:`analyze.analyze_video`
over the videos named, in worker processes when asked, with progress bars on a terminal and one
line per video; one video that fails is reported and the others go on; a signal stops the batch
cleanly, and the same command run again resumes it (finished videos are skipped).
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import cv2

from .analyze import AnalyzeOptions, VideoResult, analyze_video
from .errors import EmoError
from .files import IMAGE_EXTS, VIDEO_EXTS, check_file, check_writable_dir, is_dir, shown
from .stopping import StopFlag

# Exit status of `emo-edge analyze` (README: Analyse recordings); 130/143 when stopped by a signal.
EXIT_ALL, EXIT_SOME, EXIT_USAGE, EXIT_NONE = 0, 1, 2, 3


@dataclass
class Job:
    video: Path
    out: Path
    frames: int  # as the container reports it (0 when unknown); for the progress bars


def find_videos(inputs: Sequence[str]) -> list[Path]:
    """Video files named, or found (not recursively) in folders named, each once, in order."""
    videos, seen = [], set()
    for arg in inputs:
        if is_dir(arg):
            try:
                found = sorted(p for p in Path(arg).iterdir() if p.suffix.lower() in VIDEO_EXTS and p.is_file())
            except OSError as e:
                raise EmoError(f"cannot list folder {shown(arg)}: {e.strerror}") from None
            if not found:
                raise EmoError(f"folder {shown(arg)} holds no videos ({', '.join(sorted(VIDEO_EXTS))})")
        else:
            found = [check_file(arg, "video")]
            if found[0].suffix.lower() in IMAGE_EXTS:
                raise EmoError(f"{shown(arg)} is an image; analyze takes videos (emo-edge infer reads images)")
        for p in found:
            key = os.path.realpath(p)
            if key not in seen:
                seen.add(key)
                videos.append(p)
    if not videos:
        raise EmoError("no videos given")
    return videos


def plan(videos: Sequence[Path], out: Path, count_frames: bool = True) -> list[Job]:
    """One output folder per video, named after the file without its extension; names that
    repeat in one batch get -2, -3, ... in input order. ``count_frames`` asks each container
    for its length up front (for the overall progress bar)."""
    jobs, used = [], set()
    for v in videos:
        name, n = v.stem or v.name, 2
        while name.lower() in used:
            name, n = f"{v.stem}-{n}", n + 1
        used.add(name.lower())
        jobs.append(Job(v, out / name, _frame_count(v) if count_frames else 0))
    return jobs


def _frame_count(path: Path) -> int:
    from .files import opencv_name

    with opencv_name(path) as name:
        cap = cv2.VideoCapture(name)
        try:
            return int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if cap.isOpened() else 0
        finally:
            cap.release()


def exit_status(results: Sequence[VideoResult], stop: Optional[StopFlag] = None) -> int:
    """0 all videos done or already complete, 1 some failed, 3 none succeeded; 130/143 when a
    signal stopped the batch (a rerun resumes it)."""
    if stop is not None and stop.reason:
        return stop.exit_code or 1
    ok = sum(r.ok for r in results)
    return EXIT_ALL if ok == len(results) else EXIT_NONE if ok == 0 else EXIT_SOME


def analyze_batch(inputs: Sequence[str], out, options: Optional[AnalyzeOptions] = None, workers: int = 1,
                  force: bool = False, progress: Optional[bool] = None) -> int:
    """What `emo-edge analyze` does: every video of ``inputs`` into ``out/<name>/``; one line per
    video on stderr, progress bars on a terminal; returns the exit status (:func:`exit_status`)."""
    o = options or AnalyzeOptions()
    o.check()
    if workers < 1:
        raise EmoError("--workers must be at least 1")
    if workers > (os.cpu_count() or 1):
        print(f"emo-edge: warning: --workers {workers} is more than the {os.cpu_count()} CPU cores here; "
              "they will share them, which is no faster", file=sys.stderr)
    out = check_writable_dir(out, "--out")
    bars = sys.stderr.isatty() if progress is None else progress
    jobs = plan(find_videos(inputs), out, count_frames=bars)
    params = o.parameters()
    show = _Display(jobs, bars)
    stop = StopFlag().install()
    results: dict[int, VideoResult] = {}
    try:
        with show:
            if workers == 1 or len(jobs) == 1:
                for i, job in enumerate(jobs):
                    if stop.reason:
                        break
                    show.started(i)
                    results[i] = _run_job(job, o, params, force, stop, lambda d, t, i=i: show.advance(i, d, t))
                    show.finished(i, results[i])
            else:
                _run_pool(jobs, o, params, force, workers, stop, show, results)
    finally:
        stop.restore()
    return _report(jobs, results, out, stop)


def _run_job(job: Job, o: AnalyzeOptions, params: dict, force: bool, stop: StopFlag, progress) -> VideoResult:
    """analyze_video, with every failure turned into a failed result (the batch goes on)."""
    t0 = time.monotonic()
    try:
        return analyze_video(job.video, job.out, o, force, stop, progress, params)
    except EmoError as e:
        msg = str(e)
    except MemoryError:
        msg = "out of memory"
    except Exception as e:  # noqa: BLE001 - one bad video must not end the batch; the type is named
        msg = f"unexpected {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    return VideoResult(shown(job.video), shown(job.out), "failed", msg, seconds=time.monotonic() - t0)


# Worker processes ignore SIGINT and SIGTERM (a Ctrl-C, or a service manager's stop, reaches the
# whole process group) and stop when the parent sets the shared event, so a batch always stops
# the same way, from one place.
_worker_state: dict = {}


def _init_worker(queue, cancel) -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    cv2.setNumThreads(1)  # one worker per core: OpenCV's own threads would only compete
    _worker_state.update(queue=queue, cancel=cancel)


def _worker(i: int, job: Job, o: AnalyzeOptions, params: dict, force: bool) -> VideoResult:
    queue, cancel = _worker_state["queue"], _worker_state["cancel"]
    stop = StopFlag()

    def progress(done: int, total: int) -> None:  # called a few times a second from the frame loop
        if cancel.is_set():
            stop.set("stop")  # the parent names the signal in its report
        queue.put((i, done, total))

    queue.put((i, -1, job.frames))
    if cancel.is_set():
        return VideoResult(shown(job.video), shown(job.out), "stopped", "not started")
    return _run_job(job, o, params, force, stop, progress)


def _run_pool(jobs: list[Job], o: AnalyzeOptions, params: dict, force: bool, workers: int, stop: StopFlag,
              show: "_Display", results: dict) -> None:
    import multiprocessing as mp
    import queue as queue_mod
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    ctx = mp.get_context("spawn")  # a fresh interpreter: no onnxruntime or OpenCV threads inherited
    q, cancel = ctx.Queue(), ctx.Event()
    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=ctx, initializer=_init_worker, initargs=(q, cancel)) as pool:
        futures = {pool.submit(_worker, i, job, o, params, force): i for i, job in enumerate(jobs)}
        while futures:
            if stop.reason and not cancel.is_set():
                cancel.set()
                for f in futures:
                    f.cancel()
            try:
                while True:
                    i, done, total = q.get(timeout=0.1)
                    if done < 0:
                        show.started(i)
                    else:
                        show.advance(i, done, total)
            except queue_mod.Empty:
                pass
            for f in [f for f in futures if f.done()]:
                i = futures.pop(f)
                if f.cancelled():
                    continue
                try:
                    results[i] = f.result()
                except BrokenProcessPool:
                    results[i] = VideoResult(shown(jobs[i].video), shown(jobs[i].out),
                                             "stopped" if stop.reason else "failed", "the worker process died")
                show.finished(i, results[i])


def _report(jobs: list[Job], results: dict, out: Path, stop: StopFlag) -> int:
    done = [r for r in results.values() if r.status == "done"]
    skipped = [r for r in results.values() if r.status == "skipped"]
    failed = [r for r in results.values() if r.status == "failed"]
    parts = [f"{len(done)} analysed", f"{len(skipped)} already complete", f"{len(failed)} failed"]
    if stop.reason:
        left = len(jobs) - len(done) - len(skipped) - len(failed)
        parts.append(f"{left} not finished: stopped by {stop.reason}; run the same command again to resume")
    print(f"emo-edge: {len(jobs)} video(s) into {shown(out)}: " + ", ".join(parts), file=sys.stderr, flush=True)
    return exit_status(list(results.values()), stop)


class _Display:
    """Progress bars (rich, on a terminal) and one line per finished video (always)."""

    def __init__(self, jobs: list[Job], bars: bool):
        self.jobs, self.tasks, self.progress = jobs, {}, None
        if bars:
            try:
                from rich.console import Console
                from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                           TimeRemainingColumn)
            except ImportError:  # typer without rich: lines only
                return
            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("frames"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                     console=Console(stderr=True), transient=True)
            total = sum(j.frames for j in jobs) or None
            self.overall = self.progress.add_task(f"all {len(jobs)} video(s)", total=total)
            self._done: dict[int, int] = {}

    def __enter__(self):
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.stop()

    def started(self, i: int) -> None:
        if self.progress is not None and i not in self.tasks:
            self.tasks[i] = self.progress.add_task(f"  {self.jobs[i].video.name[:40]}", total=self.jobs[i].frames or None)

    def advance(self, i: int, done: int, total: int) -> None:
        if self.progress is None:
            return
        self.started(i)
        self.progress.update(self.tasks[i], completed=done, total=total or None)
        self._done[i] = done
        self.progress.update(self.overall, completed=sum(self._done.values()))

    def finished(self, i: int, r: VideoResult) -> None:
        if r.status == "done":
            line = (f"done    {r.video} -> {r.out} ({r.frames} frames, {r.rows} rows, {r.tracks} track(s), {r.seconds:.1f} s, "
                    f"{r.realtime:.1f}x real time)" + (f"; {r.message}" if r.message else ""))
        elif r.status == "skipped":
            line = f"skipped {r.video}: {r.out} is complete with the same parameters (--force redoes it)"
        elif r.status == "failed":
            line = f"FAILED  {r.video}: {r.message}"
        else:
            when = " before it started" if r.message == "not started" else ""
            line = f"stopped {r.video}{when}; nothing written for it, a rerun does it"
        if self.progress is not None:
            if i in self.tasks:
                self.progress.remove_task(self.tasks.pop(i))
            self._done[i] = self.jobs[i].frames
            self.progress.update(self.overall, completed=sum(self._done.values()))
            self.progress.console.print(f"emo-edge: {line}", markup=False, highlight=False, soft_wrap=True)
        else:
            print(f"emo-edge: {line}", file=sys.stderr, flush=True)
