"""What `emo-edge analyze` does for each video: find the videos named, give each its output folder,
and run one (:func:`run_job`: every failure becomes a failed result, so the batch goes on)."""
from __future__ import annotations

import os
import stat
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

import cv2

from ..errors import EmoError
from ..files import IMAGE_EXTS, VIDEO_EXTS, check_file, is_dir, shown
from ..job import failure
from ..stopping import StopFlag
from .inputs import is_url, video_name
from .options import OUTPUTS, SUMMARY, AnalyzeOptions, VideoResult
from .video import analyze_video

NAME_BYTES = 120  # longest output folder name (UTF-8), leaving room for -N within any file system's 255
_KEPT = frozenset("-_.+,()[] ")
_DEVICES = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}  # Windows
_OUTPUT_NAMES = {n.lower() for n in (*OUTPUTS, SUMMARY, "frames.parquet")}


@dataclass
class Job:
    video: Union[Path, str]  # a file, or an http(s) URL
    out: Path
    frames: int  # as the container reports it (0 when unknown); for the progress bars


def find_videos(inputs: Sequence[str]) -> list[Union[Path, str]]:
    """Video files and http(s) URLs of video files named, or files found (not recursively) in
    folders named, each once, in order."""
    videos, seen = [], set()
    for arg in inputs:
        if is_url(arg):
            found = [arg]
        elif is_dir(arg):
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
            key = p if is_url(p) else os.path.realpath(p)
            if key not in seen:
                seen.add(key)
                videos.append(p)
    if not videos:
        raise EmoError("no videos given")
    return videos


def plan(videos: Sequence[Path], out: Path, count_frames: bool = True) -> list[Job]:
    """One output folder per video, inside ``out`` whatever the video is called: named by
    :func:`folder_name`; a name that repeats in one batch (ignoring case), or whose path in ``out``
    is a link or a file, gets -2, -3, ... in input order. ``count_frames`` asks each container
    for its length up front (for the overall progress bar)."""
    root = os.path.realpath(out)
    jobs, used = [], set()
    for v in videos:
        base = name = folder_name(Path(video_name(v)))
        n = 2
        while name.casefold() in used or _taken(out / name):
            name, n = f"{base}-{n}", n + 1
        used.add(name.casefold())
        if os.path.dirname(os.path.realpath(out / name)) != root:  # the names above cannot; a last guard
            raise EmoError(f"the output folder for {shown(v)} would be outside --out {shown(out)}; rename the video")
        jobs.append(Job(v, out / name, _frame_count(v) if count_frames and not is_url(v) else 0))
    return jobs


def folder_name(video: Path) -> str:
    """The name of ``video``'s output folder: the file's name without its extension, with every
    character but letters, digits and ``-_.+,()[]`` and spaces (so every path separator, control
    character and byte that is not UTF-8) made ``_``, leading dots made ``_``, at most
    :data:`NAME_BYTES` bytes, and ``_`` before a name Windows or analyze itself reserves."""
    stem = video.stem if video.suffix else video.name
    name = "".join(c if c.isalnum() or c in _KEPT else "_" for c in unicodedata.normalize("NFC", stem))
    name = name.encode("utf-8")[:NAME_BYTES].decode("utf-8", "ignore").strip(" ").rstrip(".")
    name = "_" * (len(name) - len(name.lstrip("."))) + name.lstrip(".")
    if name.split(".")[0].rstrip(" ").lower() in _DEVICES or name.lower() in _OUTPUT_NAMES:
        name = "_" + name
    return name or "video"


def _taken(path: Path) -> bool:
    """Whether ``path`` is there as something other than a folder (a link, a file), so not ours to write into."""
    try:
        return not stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


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
    except Exception as e:  # noqa: BLE001 - one bad video must not end the batch; job.failure names it
        return VideoResult(shown(job.video), shown(job.out), "failed", failure(e), seconds=time.monotonic() - t0)
