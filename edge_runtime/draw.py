"""The annotated image: boxes, the top emotion and a bar per emotion next to each face (shown by
--save, the serve page and its MJPEG stream)."""
from __future__ import annotations

import cv2
import numpy as np

COLORS = [(80, 80, 230), (60, 160, 60), (160, 60, 160), (40, 200, 240), (200, 120, 40), (240, 200, 40), (180, 180, 180)]


def annotate(image: np.ndarray, faces: list, labels) -> np.ndarray:
    """Draw boxes, the top emotion and a bar per emotion next to each face."""
    img = image.copy() if image.ndim == 3 and image.shape[2] == 3 else cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    h, w = img.shape[:2]
    th = max(1, round(min(h, w) / 300))
    fs = max(0.35, min(h, w) / 900)
    for f in faces:
        x, y, bw, bh = f.box
        color = COLORS[labels.index(f.emotion) % len(COLORS)]
        cv2.rectangle(img, (x, y), (x + bw, y + bh), color, th)
        text = f"#{f.track} {f.emotion} {f.confidence:.0f}%"
        cv2.putText(img, text, (x, max(12, y - 6)), cv2.FONT_HERSHEY_SIMPLEX, fs, color, th, cv2.LINE_AA)
        bar_w = max(40, bw // 2)
        row = max(8, int(14 * fs / 0.5))
        bx = x + bw + 6 if x + bw + 6 + bar_w + 60 < w else max(0, x - bar_w - 66)
        for i, name in enumerate(labels):
            yy = y + i * row
            v = f.scores[name] / 100
            cv2.rectangle(img, (bx, yy), (bx + int(bar_w * v), yy + row - 3), COLORS[i % len(COLORS)], -1)
            cv2.putText(img, f"{name[:3]} {f.scores[name]:.0f}", (bx + bar_w + 4, yy + row - 4), cv2.FONT_HERSHEY_SIMPLEX, fs * 0.8, (255, 255, 255), 1, cv2.LINE_AA)
    return img


