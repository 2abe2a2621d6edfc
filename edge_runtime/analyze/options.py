"""What an analysis is asked and what it gives: :class:`AnalyzeOptions` (and the resume key made
from them), the columns of the tables, the files of a finished video, and :class:`VideoResult`."""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from ..errors import EmoError
from ..files import check_file
from ..job import RecognizerOptions
from ..labels import LABELS
from .tracks import TRACK_RULE


def frame_columns(labels: Sequence[str] = LABELS) -> tuple[str, ...]:
    return ("timestamp", "frame", "track", "box_x", "box_y", "box_w", "box_h", *labels, "emotion")


def track_columns(labels: Sequence[str] = LABELS) -> tuple[str, ...]:
    return ("track", "first_seen", "last_seen", "seconds", "frames", "merged_from",
            *(f"mean_{e}" for e in labels), *(f"peak_{e}" for e in labels), "dominant")


FRAME_COLUMNS, TRACK_COLUMNS = frame_columns(), track_columns()  # with the model's labels (FER2013 order)
OUTPUTS = ("frames.csv", "tracks.csv", "timeline.png")
SUMMARY = "summary.json"


@dataclass
class AnalyzeOptions(RecognizerOptions):
    """What shapes an analysis (see ``emo-edge analyze --help``). ``threads`` and ``spin`` only
    change the speed, so a rerun with other values still counts as the same analysis."""

    stride: int = 1
    min_track_seconds: float = 0.5
    merge_gap: float = 1.0
    timeline_tracks: int = 4
    parquet: bool = False

    def check(self) -> None:
        """Raise EmoError for values no analysis can use (the CLI's own checks cover most)."""
        if self.stride < 1 or self.detect_every < 1 or self.timeline_tracks < 1:
            raise EmoError("--stride, --detect-every and --timeline-tracks must be at least 1")
        if self.min_track_seconds < 0 or self.merge_gap < 0:
            raise EmoError("--min-track-seconds and --merge-gap must be 0 or more")
        if self.parquet:
            try:
                import pyarrow  # noqa: F401
            except ImportError:
                raise EmoError('--parquet needs pyarrow, which is not installed: pip install "emo-fer[parquet]" '
                               "(or leave --parquet off: frames.csv holds the same table)") from None

    def check_model(self) -> None:
        """Load the model and the face detector once, so that a bad ``--model`` or ``--detector-model``
        (missing, not ONNX, without emo metadata, an unknown name) is refused before any work."""
        self.recognizer()

    def parameters(self) -> dict:
        """The options that decide the outputs, with the model files by content and the detector
        that ``auto`` stands for here: the resume key."""
        from ..classifier import resolve_model
        from ..faces import make_detector

        model = resolve_model(self.model)
        p = {k: v for k, v in asdict(self).items() if k not in ("threads", "spin", "model", "detector_model")}
        p["detector_used"] = make_detector(self.detector, self.detector_model, self.detect_size).name
        p["track_rule"] = TRACK_RULE  # a new rule makes new outputs: an analysis made with another is redone
        p["model_sha256"] = _sha256(check_file(model, "model"))
        p["detector_model_sha256"] = _sha256(check_file(self.detector_model, "detector model")) if self.detector_model else None
        return p


@dataclass
class VideoResult:
    """What happened to one video: ``status`` is done, skipped (complete already), failed or stopped."""

    video: str
    out: str
    status: str
    message: str = ""
    frames: int = 0  # frames processed (every stride-th)
    rows: int = 0
    tracks: int = 0
    seconds: float = 0.0  # wall time
    video_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status in ("done", "skipped")

    @property
    def realtime(self) -> float:
        return self.video_seconds / self.seconds if self.seconds > 0 else 0.0


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
