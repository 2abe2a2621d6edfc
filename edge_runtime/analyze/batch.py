"""Many videos for `emo-edge analyze`: :func:`analyze_batch` maps :func:`.video.analyze_video`
over the videos named, in worker processes when asked, with progress bars on a terminal and one
line per video; one video that fails is reported and the others go on; a signal stops the batch
cleanly, and the same command run again resumes it (finished videos are skipped).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from ..errors import EmoError
from ..files import check_writable_dir, shown
from ..job import signals, stopped_status
from ..stopping import StopFlag
from .jobs import Job, find_videos, plan, run_job
from .inputs import video_name
from .options import AnalyzeOptions, VideoResult
from .workers import init_worker, run_in_worker

# Exit status of `emo-edge analyze` (README: Analyse recordings); 130/143 when stopped by a signal.
EXIT_ALL, EXIT_SOME, EXIT_USAGE, EXIT_NONE = 0, 1, 2, 3


def exit_status(results: Sequence[VideoResult], stop: Optional[StopFlag] = None) -> int:
    """0 all videos done or already complete, 1 some failed, 3 none succeeded; 130/143 when a
    signal stopped the batch (a rerun resumes it)."""
    if stop is not None and stop.reason:
        return stopped_status(stop)
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
    o.check_model()
    out = check_writable_dir(out, "--out")
    bars = sys.stderr.isatty() if progress is None else progress
    jobs = plan(find_videos(inputs), out, count_frames=bars)
    params = o.parameters()
    show = _Display(jobs, bars)
    results: dict[int, VideoResult] = {}
    with signals() as stop, show:
        if workers == 1 or len(jobs) == 1:
            for i, job in enumerate(jobs):
                if stop.reason:
                    break
                show.started(i)
                results[i] = run_job(job, o, params, force, stop, lambda d, t, i=i: show.advance(i, d, t))
                show.finished(i, results[i])
        else:
            _run_pool(jobs, o, params, force, workers, stop, show, results)
    return report(jobs, results, out, stop)


def _run_pool(jobs: list[Job], o: AnalyzeOptions, params: dict, force: bool, workers: int, stop: StopFlag,
              show: "_Display", results: dict) -> None:
    import multiprocessing as mp
    import queue as queue_mod
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    ctx = mp.get_context("spawn")  # a fresh interpreter: no onnxruntime or OpenCV threads inherited
    q, cancel = ctx.Queue(), ctx.Event()
    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=ctx, initializer=init_worker, initargs=(q, cancel, os.getpid())) as pool:
        futures = {pool.submit(run_in_worker, i, job, o, params, force): i for i, job in enumerate(jobs)}
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


def report(jobs: list[Job], results: dict, out: Path, stop: StopFlag) -> int:
    """The batch's last line; returns the exit status."""
    done = [r for r in results.values() if r.status == "done"]
    skipped = [r for r in results.values() if r.status == "skipped"]
    failed = [r for r in results.values() if r.status == "failed"]
    parts = [f"{len(done)} analysed", f"{len(skipped)} already complete", f"{len(failed)} failed"]
    if stop.reason:
        left = len(jobs) - len(done) - len(skipped) - len(failed)
        parts.append(f"{left} not finished: stopped by {stop.reason}; run the same command again to resume")
    print(f"emo-edge: {len(jobs)} video(s) into {shown(out)}: " + ", ".join(parts), file=sys.stderr, flush=True)
    return exit_status(list(results.values()), stop)


def result_line(r: VideoResult) -> str:
    """The line each video ends with (after "emo-edge: ")."""
    if r.status == "done":
        return (f"done    {r.video} -> {r.out} ({r.frames} frames, {r.rows} rows, {r.tracks} track(s), {r.seconds:.1f} s, "
                f"{r.realtime:.1f}x real time)" + (f"; {r.message}" if r.message else ""))
    if r.status == "skipped":
        return f"skipped {r.video}: {r.out} is complete with the same parameters (--force redoes it)"
    if r.status == "failed":
        return f"FAILED  {r.video}: {r.message}"
    if r.message.startswith("kept "):  # --ray: the chunks that finished are kept
        return f"stopped {r.video}; {r.message}, a rerun does the rest"
    when = " before it started" if r.message == "not started" else ""
    return f"stopped {r.video}{when}; nothing written for it, a rerun does it"


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
            self.tasks[i] = self.progress.add_task(f"  {video_name(self.jobs[i].video)[:40]}", total=self.jobs[i].frames or None)

    def advance(self, i: int, done: int, total: int) -> None:
        if self.progress is None:
            return
        self.started(i)
        self.progress.update(self.tasks[i], completed=done, total=total or None)
        self._done[i] = done
        self.progress.update(self.overall, completed=sum(self._done.values()))

    def finished(self, i: int, r: VideoResult) -> None:
        line = result_line(r)
        if self.progress is not None:
            if i in self.tasks:
                self.progress.remove_task(self.tasks.pop(i))
            self._done[i] = self.jobs[i].frames
            self.progress.update(self.overall, completed=sum(self._done.values()))
            self.progress.console.print(f"emo-edge: {line}", markup=False, highlight=False, soft_wrap=True)
        else:
            print(f"emo-edge: {line}", file=sys.stderr, flush=True)
