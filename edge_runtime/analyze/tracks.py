"""The track rule of `emo-edge analyze`: per-track running sums, and how the raw tracks of the
tracker become the tracks of ``tracks.csv`` (split pieces of one face merged, flicker dropped)."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional, Sequence

import numpy as np

from ..labels import LABELS
from ..tracking import MAX_SCALE, same_face

TRACK_RULE = ("tracks of one face split by a short loss are merged: a track that starts at most merge_gap seconds "
              "after another ended, with its first box centre within one face width of that track's last box, "
              f"its face size within {MAX_SCALE}x of it and a face that looks alike (the colour of the face's middle, "
              "see appearance.py), continues it; then tracks on screen for less than min_track_seconds "
              "(frames x stride / fps) are dropped from tracks.csv and timeline.png (their rows stay in frames.csv)")


@dataclass
class TrackStats:
    """Running summary of one track: what tracks.csv needs, nothing per frame."""

    id: int
    first: float
    last: float
    first_box: tuple
    last_box: tuple
    frames: int = 0
    sums: np.ndarray = field(default_factory=lambda: np.zeros(len(LABELS)))
    peaks: np.ndarray = field(default_factory=lambda: np.zeros(len(LABELS)))
    merged_from: list = field(default_factory=list)
    first_look: Optional[np.ndarray] = None  # appearance.look where it starts and where it ends (None: unknown)
    last_look: Optional[np.ndarray] = None

    def add(self, t: float, box: tuple, scores: np.ndarray, look: Optional[np.ndarray] = None) -> None:
        self.last, self.last_box = t, box
        if look is not None:
            self.first_look = self.first_look if self.first_look is not None else look
            self.last_look = look
        self.frames += 1
        self.sums += scores
        np.maximum(self.peaks, scores, out=self.peaks)

    def absorb(self, other: "TrackStats") -> None:
        self.last, self.last_box = other.last, other.last_box
        self.last_look = other.last_look if other.last_look is not None else self.last_look
        self.frames += other.frames
        self.sums += other.sums
        np.maximum(self.peaks, other.peaks, out=self.peaks)
        self.merged_from += [other.id, *other.merged_from]

    @property
    def means(self) -> np.ndarray:
        return self.sums / max(1, self.frames)


class TrackSums:
    """A sink keeping a :class:`TrackStats` per track id."""

    def __init__(self, labels: Sequence[str]):
        self.labels, self.tracks = labels, {}
        self.with_faces, self.last_index = 0, -1

    def write(self, result) -> None:
        self.add_frame(result.frame.index, result.frame.timestamp,
                       [(f.track, f.box, np.array([f.scores[e] for e in self.labels]), f.look) for f in result.faces])

    def add_frame(self, index: int, t: float, faces: Sequence[tuple]) -> None:
        """One processed frame: ``faces`` are (track, box, scores in label order, look or None).
        The Ray runner feeds the rows of its chunks through here, in time order, so the sums
        are added up in the same order as in a local run."""
        self.last_index = index
        self.with_faces += bool(faces)
        for track, box, scores, look in faces:
            s = self.tracks.get(track)
            if s is None:
                n = len(self.labels)
                s = self.tracks[track] = TrackStats(track, t, t, box, box, 0, np.zeros(n), np.zeros(n))
            s.add(t, box, scores, look)

    def close(self) -> None:
        pass


# --- the rule for short and split tracks ---------------------------------------------------------

def consolidate(tracks: Sequence[TrackStats], step: float, min_seconds: float, merge_gap: float
                ) -> tuple[list[TrackStats], dict[int, int], list[TrackStats]]:
    """Apply :data:`TRACK_RULE`: (kept tracks, raw id -> kept id for merged tracks, dropped tracks).
    ``step`` is the seconds one processed frame stands for (stride / fps)."""
    final: list[TrackStats] = []
    recent: list[TrackStats] = []  # tracks that may still be continued: seen within merge_gap of the current start
    merged: dict[int, int] = {}
    for b in sorted(tracks, key=lambda s: (s.first, s.id)):
        recent = [a for a in recent if b.first - a.last <= merge_gap + 1e-9]
        best = None
        for a in recent:
            gap = b.first - a.last
            if gap > 0 and continues(a, b) and (best is None or gap < best[0]):
                best = (gap, a)
        if best is None:
            s = replace(b, sums=b.sums.copy(), peaks=b.peaks.copy(), merged_from=[])
            final.append(s)
            recent.append(s)
        else:
            best[1].absorb(b)
            merged[b.id] = best[1].id
    kept = [s for s in final if s.frames * step >= min_seconds - 1e-9]
    dropped = [s for s in final if s.frames * step < min_seconds - 1e-9]
    return kept, merged, dropped


def continues(a: TrackStats, b: TrackStats) -> bool:
    """Whether track ``b``, which starts after ``a`` ended, may be the same face: near where ``a``
    ended, of a similar size, looking alike."""
    return _near(a.last_box, b.first_box) and same_face(a.last_box, a.last_look, b.first_box, b.first_look)


def _near(a: tuple, b: tuple) -> bool:
    ca = np.array([a[0] + a[2] / 2, a[1] + a[3] / 2])
    cb = np.array([b[0] + b[2] / 2, b[1] + b[3] / 2])
    return float(np.linalg.norm(ca - cb)) <= max(a[2], b[2])
