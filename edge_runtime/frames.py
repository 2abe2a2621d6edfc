"""What a frame source gives the loop: :class:`Frame` objects, and the attributes of the
:class:`Source` protocol that the loop, the commands and serve read (every source has them all,
so nothing is probed). The sources themselves are in :mod:`.sources` and :mod:`.capture`."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Protocol

import numpy as np


@dataclass
class Frame:
    image: np.ndarray  # BGR uint8
    index: int
    timestamp: float  # seconds: position in a video, or since the source opened
    name: str = ""  # file name for image sources, printable (see files.shown)


class Source(Protocol):
    """A source of frames: iterate it for :class:`Frame` objects, then ``close()`` it."""

    label: str  # how messages and records name it (the SOURCE as given, printable)
    live: bool  # a camera or a live stream, which runs until stopped; not a file that ends
    stills: bool  # unrelated images (a folder, a glob): no tracking from one frame to the next
    fps: float  # its own frame rate; 0 when unknown
    size: Optional[tuple[int, int]]  # (width, height) when known before the first frame
    files: list[Path]  # the files it reads (so that --save never overwrites one)
    state: str  # "up", "ended", "reconnecting (attempt n/N)" or "not found, retrying" (shown by serve)
    reconnects: int  # times it came back after a drop-out
    error: Optional[str]  # why it is not up, where it knows

    def __iter__(self) -> Iterator[Frame]: ...

    def close(self) -> None: ...


def warn(msg: str) -> None:
    print(f"emo-edge: warning: {msg}", file=sys.stderr, flush=True)
