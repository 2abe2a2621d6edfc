"""``timeline.png``: each track's emotion scores over time, drawn with OpenCV (no matplotlib on a Pi).

One panel per track, stacked on a shared time axis in seconds; in each panel one line per
emotion (0-100%), in the legend's colours. Curves are binned into pixel columns, so memory and
drawing time depend on the picture's width, never on the video's length. A gap in a curve is
time the track was not on screen.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

WIDTH = 1200  # pixels; the height is HEADER + PANEL * panels + FOOTER (see picture_size)
HEADER, PANEL, FOOTER = 64, 170, 40
LEFT, RIGHT = 64, 24
BG, INK, GRID = (255, 255, 255), (40, 40, 40), (225, 225, 225)
FONT = cv2.FONT_HERSHEY_SIMPLEX
# BGR, one per FER2013 label: angry, disgust, fear, happy, sad, surprise, neutral
EMOTION_COLORS = [(40, 40, 215), (30, 140, 30), (150, 50, 150), (0, 165, 255), (190, 100, 20), (170, 170, 0), (120, 120, 120)]


def picture_size(panels: int) -> tuple[int, int]:
    """(width, height) of a timeline with ``panels`` tracks (an empty timeline has one panel)."""
    return WIDTH, HEADER + PANEL * max(1, panels) + FOOTER


@dataclass
class Panel:
    """One track's curves: ``means[column, emotion]`` in percent, NaN where the track is absent.
    Seen columns at most ``join`` apart are connected (frames further apart than a column)."""

    title: str
    means: np.ndarray
    join: int = 1


class Binner:
    """Accumulates (track, time, scores) rows into per-track column means; memory is
    tracks x columns x emotions, whatever the number of rows."""

    def __init__(self, tracks: Sequence[int], duration: float, n_labels: int, step: float,
                 columns: int = (WIDTH - LEFT - RIGHT) // 2):
        self.index = {t: i for i, t in enumerate(tracks)}
        self.duration, self.columns = max(duration, 1e-9), columns
        # a track seen on consecutive processed frames (``step`` seconds apart) is drawn unbroken
        self.join = max(1, math.ceil(step / (self.duration / columns) + 1e-9))
        self.sums = np.zeros((len(self.index), columns, n_labels))
        self.counts = np.zeros((len(self.index), columns))

    def add(self, track: int, t: float, scores: Sequence[float]) -> None:
        i = self.index.get(track)
        if i is None:
            return
        c = min(self.columns - 1, max(0, int(t / self.duration * self.columns)))
        self.sums[i, c] += scores
        self.counts[i, c] += 1

    def means(self, track: int) -> np.ndarray:
        i = self.index[track]
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.sums[i] / self.counts[i][:, None]


def nice_step(duration: float, most: int = 10) -> float:
    """A tick spacing in seconds (1, 2, 5 x 10^k, or whole minutes) giving at most ``most`` ticks."""
    for step in (0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200):
        if duration / step <= most:
            return step
    return 10 ** math.ceil(math.log10(duration / most))


def tick_label(t: float, step: float) -> str:
    if step >= 60:
        return f"{int(t // 3600)}:{int(t % 3600 // 60):02d}:00" if t >= 3600 else f"{int(t // 60)}:{int(t % 60):02d}"
    return f"{t:g} s" if t == 0 else (f"{t:.1f}" if step < 1 else f"{t:g}")


def render(panels: list[Panel], labels: Sequence[str], duration: float, title: str) -> np.ndarray:
    """The timeline picture (BGR, ``picture_size(len(panels))``)."""
    w, h = picture_size(len(panels))
    img = np.full((h, w, 3), BG, np.uint8)
    cv2.putText(img, title[:110], (LEFT, 24), FONT, 0.6, INK, 1, cv2.LINE_AA)
    x = LEFT
    for name, color in zip(labels, EMOTION_COLORS):  # legend
        cv2.line(img, (x, 46), (x + 26, 46), color, 3, cv2.LINE_AA)
        cv2.putText(img, name, (x + 32, 51), FONT, 0.5, INK, 1, cv2.LINE_AA)
        x += 40 + cv2.getTextSize(name, FONT, 0.5, 1)[0][0] + 18
    plot_w = w - LEFT - RIGHT
    duration = max(duration, 1e-3)
    step = nice_step(duration)
    ticks = [i * step for i in range(int(duration / step + 1e-9) + 1)]
    for k, panel in enumerate(panels or [Panel("no faces found", np.empty((0, len(labels))))]):
        top = HEADER + k * PANEL + 22
        bottom = HEADER + (k + 1) * PANEL - 6
        for frac in (0.0, 0.5, 1.0):
            y = int(round(bottom - frac * (bottom - top)))
            cv2.line(img, (LEFT, y), (LEFT + plot_w, y), GRID, 1)
            cv2.putText(img, f"{int(frac * 100)}%", (LEFT - 46, y + 5), FONT, 0.45, INK, 1, cv2.LINE_AA)
        for t in ticks:
            xt = LEFT + int(round(t / duration * plot_w))
            cv2.line(img, (xt, top), (xt, bottom), GRID, 1)
        cv2.rectangle(img, (LEFT, top), (LEFT + plot_w, bottom), (160, 160, 160), 1)
        cv2.putText(img, panel.title[:120], (LEFT, top - 7), FONT, 0.5, INK, 1, cv2.LINE_AA)
        _curves(img, panel.means, panel.join, LEFT, top, plot_w, bottom - top)
    base = HEADER + len(panels or [None]) * PANEL
    for t in ticks:
        xt = LEFT + int(round(t / duration * plot_w))
        cv2.line(img, (xt, base - 6), (xt, base), INK, 1)
        label = tick_label(t, step)
        tw = cv2.getTextSize(label, FONT, 0.45, 1)[0][0]
        cv2.putText(img, label, (min(max(0, xt - tw // 2), w - tw - 2), base + 16), FONT, 0.45, INK, 1, cv2.LINE_AA)
    cv2.putText(img, "time in the video (s)" if step < 60 else "time in the video (min:s)", (LEFT + plot_w // 2 - 80, base + 34),
                FONT, 0.45, INK, 1, cv2.LINE_AA)
    return img


def _curves(img: np.ndarray, means: np.ndarray, join: int, left: int, top: int, width: int, height: int) -> None:
    """One polyline per emotion through the columns where the track was seen; gaps longer
    than ``join`` columns (time off screen) stay gaps."""
    if not len(means):
        return
    cols = means.shape[0]
    xs = left + (np.arange(cols) + 0.5) * width / cols
    seen = np.flatnonzero(~np.isnan(means[:, 0]))
    if not len(seen):
        return
    breaks = np.flatnonzero(np.diff(seen) > join) + 1
    runs = np.split(seen, breaks)
    for e in range(means.shape[1]):
        ys = top + height - np.clip(means[:, e], 0, 100) / 100 * height
        for run in runs:
            pts = np.stack([xs[run], ys[run]], 1)
            if len(run) == 1:  # a single column: a short dash, so it is visible
                pts = np.array([[pts[0, 0] - 2, pts[0, 1]], [pts[0, 0] + 2, pts[0, 1]]])
            cv2.polylines(img, [np.round(pts * 4).astype(np.int32)], False, EMOTION_COLORS[e % len(EMOTION_COLORS)], 2,
                          cv2.LINE_AA, shift=2)
