#!/usr/bin/env python3
"""Make docs/analyze-timeline.png: `emo-edge analyze` on a 12 s clip built from the bundled
astronaut photo alone (no other photo may appear in the repository). The face enters on the
left at 1 s and leaves at 8 s; a mirrored, smaller copy enters on the right at 4 s and leaves at
11 s, half hidden behind a grey bar from 6 s to 7.5 s.

    python docs/analyze_example.py
"""
from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

from emo.edge_runtime.analyze import AnalyzeOptions, analyze_video

REPO = Path(__file__).resolve().parents[1]
FPS = 15


def face(scale: float, mirror: bool) -> np.ndarray:
    img = cv2.imread(str(REPO / "examples" / "astronaut.png"))[0:268, 70:378]
    img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    return img[:, ::-1] if mirror else img


def main() -> int:
    a, b = face(1.25, False), face(1.2, True)
    with tempfile.TemporaryDirectory() as td:
        video = Path(td) / "two astronauts.avi"
        vw = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (960, 540))
        for i in range(12 * FPS):
            t, c = i / FPS, np.full((540, 960, 3), 95, np.uint8)
            if 1 <= t < 8:
                x = 40 + int(30 * np.sin(t))
                c[40:40 + a.shape[0], x:x + a.shape[1]] = a
            if 4 <= t < 11:
                x = 920 - b.shape[1] - int(20 * np.sin(t))
                c[190:190 + b.shape[0], x:x + b.shape[1]] = b
                if 6 <= t < 7.5:
                    c[190 + b.shape[0] // 3:190 + b.shape[0] // 2 + 30, x:x + b.shape[1]] = 140
            vw.write(c)
        vw.release()
        res = analyze_video(video, Path(td) / "out", AnalyzeOptions(detector="haar", detect_size=960))
        print(res, file=sys.stderr)
        shutil.copy(Path(td) / "out" / "timeline.png", REPO / "docs" / "analyze-timeline.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
