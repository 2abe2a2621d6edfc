"""IoU tracking of face boxes across frames, with exponential smoothing of scores per track.

A box continues a track only where it overlaps the track's last box, is of a similar size and
looks alike (:func:`same_face`), so a video that cuts to another person in the same place starts
a new track. The analysis's merge of split tracks (analyze.tracks) asks the same question."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from .appearance import alike
from .boxes import iou, scale_ratio

MAX_SCALE = 1.5  # a face's size changes by less than this factor between two sightings of one person


def same_face(a: tuple, look_a: Optional[np.ndarray], b: tuple, look_b: Optional[np.ndarray]) -> bool:
    """Whether box ``b`` may show the face of box ``a``, seen a little earlier: sizes within
    MAX_SCALE of each other and looks alike (see appearance.py). Where it is, is the caller's rule."""
    return scale_ratio(a, b) <= MAX_SCALE and alike(look_a, look_b)


@dataclass
class Track:
    id: int
    box: tuple
    scores: np.ndarray
    missed: int = 0
    angle: float = 0.0  # the face's tilt at its last detection (reused between detections)
    look: Optional[np.ndarray] = None  # appearance.look at its last detection


class IouTracker:
    """Greedy IoU matching of new boxes to live tracks (pairs that pass :func:`same_face` only).

    ``smooth`` in [0, 1) is the weight of a track's previous scores: 0 turns smoothing off, 0.6
    keeps labels steady at camera frame rates. A track survives ``max_missed`` frames unseen.
    ``first_id`` and ``tracks`` restore a tracker that was saved (analyze --ray keeps them on disk).
    """

    def __init__(self, iou_threshold: float = 0.3, smooth: float = 0.0, max_missed: int = 10, first_id: int = 1,
                 tracks: Optional[list[Track]] = None):
        if not 0 <= smooth < 1:
            raise ValueError("smooth must be in [0, 1)")
        self.iou_threshold, self.smooth, self.max_missed = iou_threshold, smooth, max_missed
        self.tracks: list[Track] = list(tracks or [])
        self._next = first_id

    def update(self, boxes: list, scores: np.ndarray, angles: Optional[Sequence[float]] = None,
               looks: Optional[Sequence[Optional[np.ndarray]]] = None) -> list[Track]:
        """Match ``boxes`` (with their ``scores``, tilt ``angles`` and ``looks``, see appearance.py)
        to tracks; returns the track of each box, in order. Without looks, boxes match by place and size."""
        angles = angles if angles is not None else [0.0] * len(boxes)
        looks = looks if looks is not None else [None] * len(boxes)
        pairs = sorted(
            ((iou(t.box, b), ti, bi) for ti, t in enumerate(self.tracks) for bi, b in enumerate(boxes)),
            reverse=True,
        )
        assigned: dict[int, Track] = {}
        used = set()
        for v, ti, bi in pairs:
            if v < self.iou_threshold:
                break
            t = self.tracks[ti]
            if ti in used or bi in assigned or not same_face(t.box, t.look, boxes[bi], looks[bi]):
                continue
            t.box, t.missed, t.angle = tuple(boxes[bi]), 0, angles[bi]
            t.look = looks[bi] if looks[bi] is not None else t.look
            t.scores = self.smooth * t.scores + (1 - self.smooth) * scores[bi]
            assigned[bi] = t
            used.add(ti)
        for ti, t in enumerate(self.tracks):
            if ti not in used:
                t.missed += 1
        for bi, b in enumerate(boxes):
            if bi not in assigned:
                t = Track(self._next, tuple(b), np.array(scores[bi], np.float32), angle=angles[bi], look=looks[bi])
                self._next += 1
                self.tracks.append(t)
                assigned[bi] = t
        self.tracks = [t for t in self.tracks if t.missed <= self.max_missed]
        return [assigned[i] for i in range(len(boxes))]

    @property
    def next_id(self) -> int:
        """The id the next new track gets (ids are never reused)."""
        return self._next

    def live_boxes(self) -> list[tuple]:
        """Boxes of the tracks seen in the last frame (used between detections)."""
        return [t.box for t in self.tracks if t.missed == 0]

    def live_angles(self) -> list[float]:
        """Tilts of the same tracks, in the same order as :meth:`live_boxes`."""
        return [t.angle for t in self.tracks if t.missed == 0]
