"""The worker side of `emo-edge analyze --workers N`: what each worker process runs.

Workers ignore SIGINT and SIGTERM (a Ctrl-C, or a service manager's stop, reaches the whole
process group) and stop when the parent sets the shared event, so a batch always stops the same
way, from one place. A worker whose parent dies (even by SIGKILL, which leaves the parent no time
to say so) ends too: see :func:`die_with_parent`.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

import cv2

from ..files import shown
from ..stopping import StopFlag
from .jobs import Job, run_job
from .options import AnalyzeOptions, VideoResult

PARENT_POLL = 0.5  # seconds between two looks at the parent, where the kernel cannot be asked to tell
_state: dict = {}


def init_worker(queue, cancel, parent: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    die_with_parent(parent)
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


def die_with_parent(parent: int) -> None:
    """End this process as soon as process ``parent`` (its parent) has ended, however it ended.

    On Linux the kernel kills it (prctl PR_SET_PDEATHSIG); everywhere, a daemon thread also
    checks os.getppid() every PARENT_POLL seconds, since an orphan is handed to another parent.
    What a killed worker leaves (a half-written ``.emo-*`` file) is removed by the next run."""
    _ask_kernel()
    if os.getppid() != parent:  # it died before we asked
        os._exit(1)
    threading.Thread(target=_watch, args=(parent,), name="emo-parent-watch", daemon=True).start()


def _ask_kernel() -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # no libc with prctl (musl without it, a sandbox): the watcher is enough
        pass


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(PARENT_POLL)
    os._exit(1)
