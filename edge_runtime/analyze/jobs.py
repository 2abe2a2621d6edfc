"""What `emo-edge analyze` does for each video: find the videos named, give each its output folder,
and run one (:func:`run_job`: every failure becomes a failed result, so the batch goes on)."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2

from ..errors import EmoError
from ..files import IMAGE_EXTS, VIDEO_EXTS, check_file, is_dir, shown
from ..stopping import StopFlag
from .video import AnalyzeOptions, VideoResult, analyze_video


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
    from ..files import opencv_name

    with opencv_name(path) as name:
        cap = cv2.VideoCapture(name)
        try:
            return int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if cap.isOpened() else 0
        finally:
            cap.release()


def run_job(job: Job, o: AnalyzeOptions, params: dict, force: bool, stop: StopFlag, progress) -> VideoResult:
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
