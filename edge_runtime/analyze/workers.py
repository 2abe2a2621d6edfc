"""The worker side of `emo-edge analyze --workers N`: what each worker process runs."""
from __future__ import annotations

import cv2

from ..files import shown
from ..stopping import StopFlag
from .jobs import Job, run_job
from .video import AnalyzeOptions, VideoResult

# Worker processes ignore SIGINT and SIGTERM (a Ctrl-C, or a service manager's stop, reaches the
# whole process group) and stop when the parent sets the shared event, so a batch always stops
# the same way, from one place.
_state: dict = {}


def init_worker(queue, cancel) -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    cv2.setNumThreads(1)  # one worker per core: OpenCV's own threads would only compete
    _state.update(queue=queue, cancel=cancel)


def run_in_worker(i: int, job: Job, o: AnalyzeOptions, params: dict, force: bool) -> VideoResult:
    queue, cancel = _state["queue"], _state["cancel"]
    stop = StopFlag()

    def progress(done: int, total: int) -> None:  # called a few times a second from the frame loop
        if cancel.is_set():
            stop.set("stop")  # the parent names the signal in its report
        queue.put((i, done, total))

    queue.put((i, -1, job.frames))
    if cancel.is_set():
        return VideoResult(shown(job.video), shown(job.out), "stopped", "not started")
    return run_job(job, o, params, force, stop, progress)
