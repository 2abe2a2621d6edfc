"""Every file emo reads or writes goes through here.

Reading: :func:`check_file` turns a path into an existing regular file or an :class:`EmoError`
(missing, a name too long for the file system, a FIFO or device where a file was expected), and
:func:`read_image` decodes from bytes that Python read, so no file name ever reaches OpenCV's own
path handling (which crashes on names that are not valid UTF-8). :func:`opencv_name` gives the few
callers that must hand OpenCV a name (video capture) one it can take.

Writing: :func:`atomic_output` yields a temporary file beside the target with a plain ASCII name;
only when the block ends without an error is it renamed over the target. A crash, a full disk or
a failed check leaves the target as it was, never half-written.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Callable, Iterator, Optional, Union

import cv2
import numpy as np

from .errors import EmoError

PathLike = Union[str, os.PathLike]

IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".pgm", ".ppm", ".jp2"})
VIDEO_EXTS = frozenset({".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".gif",
                        ".3gp", ".ts"})
MAX_IMAGE_BYTES = 512 * 1024 * 1024  # a still image larger than this is refused before it is read

# OpenCV's and FFmpeg's own log lines are silenced by the CLIs (cliopts.quiet_opencv), not at import.


def shown(path: PathLike) -> str:
    """A path as it can be printed: bytes that are not UTF-8 appear as ``\\xNN``."""
    return os.fsdecode(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def opencv_safe(path: PathLike) -> bool:
    """Whether OpenCV can take this name (it crashes on names that are not valid UTF-8)."""
    try:
        os.fsdecode(path).encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _os_error(path: PathLike, what: str, e: OSError) -> EmoError:
    if e.errno == errno.ENAMETOOLONG:
        return EmoError(f"{what} name is too long for the file system: {shown(path)[:80]}...; use a shorter name")
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return EmoError(f"cannot write {shown(path)}: {e.strerror}; free some space or write elsewhere")
    return EmoError(f"{what} {shown(path)}: {e.strerror or e}")


def check_file(path: PathLike, what: str = "file") -> Path:
    """An existing regular file, or an EmoError that names the problem."""
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise EmoError(f"{what} {shown(p)} does not exist") from None
    except OSError as e:
        raise _os_error(p, what, e) from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode) else "not a regular file"
        raise EmoError(f"{what} {shown(p)} is {kind}; give a regular file")
    return p


def exists(path: PathLike) -> bool:
    """``Path.exists`` that is False, not an exception, for names too long for the file system."""
    try:
        os.stat(path)
        return True
    except (OSError, ValueError):
        return False


def is_dir(path: PathLike) -> bool:
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def _jpeg_truncated(data: bytes) -> bool:
    """A JPEG whose last scan has no end-of-image marker after it was cut off mid-file."""
    return data[:2] == b"\xff\xd8" and data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda")


def decode_image(data: bytes, name: str, flags: int = cv2.IMREAD_COLOR) -> np.ndarray:
    """Image bytes -> array (EXIF orientation applied), or an EmoError: corrupt, truncated, too large."""
    if _jpeg_truncated(data):
        raise EmoError(f"{name} is a truncated JPEG (the file was cut off); re-copy or re-export it")
    try:
        with quiet_stderr():
            img = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except (cv2.error, MemoryError):
        raise EmoError(f"{name} is too large to decode in memory; downscale it first") from None
    if img is None or img.size == 0:
        raise EmoError(f"{name} is not an image OpenCV can decode (corrupt or unsupported format)")
    return img


def read_image(path: PathLike, flags: int = cv2.IMREAD_COLOR) -> np.ndarray:
    """Read an image file (BGR by default, alpha dropped, EXIF orientation applied), or raise EmoError."""
    p = check_file(path, "image")
    size = os.stat(p).st_size
    if size > MAX_IMAGE_BYTES:
        raise EmoError(f"{shown(p)} is {size / 2**20:.0f} MiB, more than an image emo reads ({MAX_IMAGE_BYTES // 2**20} MiB)")
    try:
        with open(p, "rb") as fh:
            data = fh.read()
    except OSError as e:
        raise _os_error(p, "image", e) from None
    return decode_image(data, shown(p), flags)


@contextlib.contextmanager
def opencv_name(path: PathLike) -> Iterator[str]:
    """A name OpenCV can open for ``path``: the path itself, or a symlink with a plain name."""
    if opencv_safe(os.path.abspath(path)):
        yield os.fsdecode(path)
        return
    d = tempfile.mkdtemp(prefix="emo-")
    link = os.path.join(d, "input" + "".join(c for c in Path(path).suffix if c.isascii()))
    try:
        os.symlink(os.path.abspath(path), link)
        yield link
    finally:
        shutil.rmtree(d, ignore_errors=True)


@contextlib.contextmanager
def opencv_dir(folder: PathLike) -> Iterator[Path]:
    """A folder path OpenCV can take for ``folder`` (to write files with plain names into it):
    the folder itself, or a symlink to it with a plain name."""
    if opencv_safe(os.path.abspath(folder)):
        yield Path(folder)
        return
    d = tempfile.mkdtemp(prefix="emo-")
    try:
        os.symlink(os.path.abspath(folder), os.path.join(d, "out"))
        yield Path(d) / "out"
    finally:
        shutil.rmtree(d, ignore_errors=True)


@contextlib.contextmanager
def quiet_stderr():
    """Silence C libraries (libjpeg, libpng) that print straight to fd 2 on corrupt files."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


def same_file(a: PathLike, b: PathLike) -> bool:
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return os.path.abspath(a) == os.path.abspath(b)


def check_writable_dir(folder: PathLike, what: str) -> Path:
    """Create ``folder`` if needed and check that files can be made in it, or raise EmoError."""
    d = Path(folder)
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EmoError(f"cannot create {shown(d)} for {what}: {e.strerror}") from None
    if not os.access(d, os.W_OK | os.X_OK):
        raise EmoError(f"{what}: {shown(d)} is not writable")
    return d



def discard(path: PathLike) -> None:
    """Remove a file if it is there, ignoring any error (what is left is removed by the next run)."""
    try:
        os.unlink(path)
    except OSError:
        pass

@contextlib.contextmanager
def atomic_output(path: PathLike, verify: Optional[Callable[[Path], None]] = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (plain ASCII name, same suffix); on a clean exit,
    run ``verify(tmp)`` (it raises to refuse the file) and rename the file over ``path``.
    On any error the temporary file is removed and ``path`` is left as it was."""
    p = Path(path)
    suffix = "".join(c for c in p.suffix if c.isascii())
    tmp = p.parent / f".emo-tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}"
    try:
        yield tmp
        if verify is not None:
            verify(tmp)
        os.replace(tmp, p)
    except OSError as e:
        raise _os_error(p, "output", e) from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, rename), or raise EmoError."""
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())


def atomic_write_text(path: PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m
