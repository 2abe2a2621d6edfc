"""Face boxes ``(x, y, w, h)`` in pixels, and how much two of them overlap."""
from __future__ import annotations

import math
from typing import Tuple

Box = Tuple[int, int, int, int]


def intersection(a: Box, b: Box) -> float:
    """Area shared by two boxes."""
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return ix * iy


def iou(a: Box, b: Box) -> float:
    """Intersection over union, 0 for boxes that do not touch."""
    inter = intersection(a, b)
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def scale_ratio(a: Box, b: Box) -> float:
    """How many times the larger box is the size of the smaller (the square root of their areas'
    ratio): 1 for boxes of one size, infinite when one is empty."""
    sa, sb = a[2] * a[3], b[2] * b[3]
    return math.sqrt(max(sa, sb) / min(sa, sb)) if min(sa, sb) > 0 else math.inf
