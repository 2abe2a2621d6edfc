"""``--save PATH``: annotated frames as one image, a folder of images, or a video.

Everything is checked before the first frame (the path is not an input, the folder is writable,
the container can be written here) and every file is written atomically and verified: a video
becomes visible under its name only once it has been closed and read back with every frame, so
a full disk or a crash never leaves a file that is reported as written but cannot be played.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Optional, Sequence

import cv2
import numpy as np

from ..errors import EmoError
from ..files import IMAGE_EXTS, VIDEO_EXTS, atomic_write_bytes, check_writable_dir, exists, opencv_dir, same_file, shown

VIDEO_CODECS = {".avi": "MJPG", ".mp4": "mp4v", ".mkv": "MJPG"}  # containers OpenCV's FFmpeg writes everywhere


def _video_frames(path: Path) -> tuple[int, bool]:
    """Frame count and whether the first frame decodes, as a player would see the file."""
    cap = cv2.VideoCapture(str(path))
    try:
        return int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0), bool(cap.isOpened() and cap.read()[0])
    finally:
        cap.release()


class AnnotatedSaver:
    """Writes each frame's annotated image; ``count`` is the number of frames safely written."""

    def __init__(self, path: str, single_image: bool, fps: float, inputs: Sequence[os.PathLike] = ()):
        self.path = Path(path)
        ext = self.path.suffix.lower()
        self.mode = "video" if ext in VIDEO_EXTS else "image" if ext in IMAGE_EXTS else "folder"
        if self.mode == "image" and not single_image:
            raise EmoError(f"--save {shown(path)} is one image but the source has many frames; give a folder or a .mp4/.avi path")
        if len(os.fsencode(self.path.name)) > 255:
            raise EmoError(f"--save: the name {shown(self.path.name)[:60]}... is too long for the file system; use a shorter name")
        self._refuse_inputs(inputs)
        self.folder = check_writable_dir(self.path if self.mode == "folder" else self.path.parent, "--save")
        if self.mode == "video" and ext not in VIDEO_CODECS:
            raise EmoError(f"--save {shown(path)}: emo cannot write {ext} video; use .avi (MJPG) or .mp4")
        if self.mode == "image" and not cv2.haveImageWriter("x" + ext):
            raise EmoError(f"--save {shown(path)}: OpenCV cannot write {ext} images; use .jpg or .png")
        self.fps = fps if fps and fps > 0 else 15.0
        self.count = 0
        self._names: set[str] = set()
        self._writer: Optional[cv2.VideoWriter] = None
        self._tmp: Optional[Path] = None
        self._resources = contextlib.ExitStack()
        if self.mode == "video":
            with self._resources.pop_all() as stack:  # kept only if the probe passes
                self.cv_folder = stack.enter_context(opencv_dir(self.folder))  # a name OpenCV can write through
                self._probe_video()
                self._resources = stack.pop_all()

    def _refuse_inputs(self, inputs: Sequence[os.PathLike]) -> None:
        for src in inputs:
            if self.mode == "folder" and same_file(Path(src).parent, self.path):
                raise EmoError(f"--save {shown(self.path)} is the folder the input images are in; "
                               "annotated copies would overwrite them. Save to another folder")
            if self.mode != "folder" and exists(self.path) and same_file(src, self.path):
                raise EmoError(f"--save {shown(self.path)} is the input itself; it would be overwritten. Save to another path")

    def _probe_video(self) -> None:
        """Write and read back a two-frame clip here, so a container or codec that does not work
        fails now, not after the first frame."""
        tmp = self.cv_folder / f".emo-probe-{os.getpid()}{self.path.suffix.lower()}"
        try:
            vw = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*VIDEO_CODECS[self.path.suffix.lower()]), 10, (64, 64))
            for _ in range(2):
                vw.write(np.zeros((64, 64, 3), np.uint8))
            vw.release()
            ok = _video_frames(tmp) == (2, True)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if not ok:
            raise EmoError(f"--save {shown(self.path)}: this OpenCV cannot write {self.path.suffix} video here; "
                           "check the disk, or try an .avi path")

    def write(self, result) -> None:
        image = result.annotated
        if self.mode == "image":
            self._write_image(self.path, image)
        elif self.mode == "folder":
            self._write_image(self.folder / self._name_for(result.frame.name, result.frame.index), image)
        else:
            self._write_video_frame(image)
        self.count += 1

    def _name_for(self, name: str, index: int) -> str:
        """The output name for a frame: the input's name (its format, if OpenCV writes it, else
        .jpg), made unique when two inputs share one (a.jpg and a.png both save as a.jpg)."""
        p = Path(name or f"frame_{index:06d}.jpg")
        ext = p.suffix.lower() if cv2.haveImageWriter("x" + p.suffix.lower()) else ".jpg"
        out, k = p.stem + ext, 1
        while out in self._names:
            k += 1
            out = f"{p.stem}-{k}{ext}"
        self._names.add(out)
        return out

    @staticmethod
    def _write_image(path: Path, image: np.ndarray) -> None:
        ok, buf = cv2.imencode(path.suffix.lower(), image)
        if not ok:
            raise EmoError(f"OpenCV could not encode {shown(path)}; use .jpg or .png")
        atomic_write_bytes(path, buf.tobytes())

    def _write_video_frame(self, image: np.ndarray) -> None:
        if self._writer is None:
            self._tmp = self.cv_folder / f".emo-tmp-{os.getpid()}{self.path.suffix.lower()}"
            self.size = (image.shape[1], image.shape[0])
            fourcc = cv2.VideoWriter_fourcc(*VIDEO_CODECS[self.path.suffix.lower()])
            self._writer = cv2.VideoWriter(str(self._tmp), fourcc, self.fps, self.size)
            if not self._writer.isOpened():
                raise EmoError(f"could not open {shown(self.path)} for writing video; check the disk, or try an .avi path")
        if (image.shape[1], image.shape[0]) != self.size:
            image = cv2.resize(image, self.size)
        self._writer.write(image)

    def close(self) -> None:
        """Finish the video: close it, read it back, and only then give it its name."""
        try:
            if self._writer is not None:
                self._finish_video()
        finally:
            self._resources.close()

    def _finish_video(self) -> None:
        self._writer.release()
        self._writer, tmp = None, self._tmp
        try:
            frames, first_ok = _video_frames(tmp)
            if frames != self.count or not first_ok:
                raise EmoError(f"could not write {shown(self.path)}: the video read back has {frames} of {self.count} "
                               "frames (disk full?); nothing was saved")
            os.replace(tmp, self.path)
        except OSError as e:
            raise EmoError(f"could not write {shown(self.path)}: {e.strerror}") from None
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
