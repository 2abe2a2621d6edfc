"""The videos `emo-edge analyze` reads: a file or the http(s) URL of one, what a rerun compares to
tell the same video (:func:`identity`), and what a recording must say of itself to be analysed
(:func:`check_recording`)."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional

from ..errors import EmoError
from ..files import check_file, shown


def is_url(video) -> bool:
    """An http(s) URL: a recording on a web server or in object storage, which every node of a
    cluster reads as well as a shared path."""
    return isinstance(video, str) and re.match(r"(?i)^https?://", video) is not None


def video_input(video):
    """A video to analyse: an http(s) URL as it is, else a file that must exist (a Path)."""
    return video if is_url(video) else check_file(video, "video")


def video_name(video) -> str:
    """The file name of a video (for a URL, the last part of its path)."""
    if is_url(video):
        from urllib.parse import unquote, urlsplit

        u = urlsplit(video)
        return Path(unquote(u.path)).name or u.hostname or "video"
    return Path(video).name


def identity(video) -> dict:
    """What a rerun compares to tell the same video: its path (or URL), size and time."""
    if is_url(video):
        size, mtime_ns = url_facts(video)
        return {"path": video, "name": video_name(video), "bytes": size, "mtime_ns": mtime_ns}
    st = os.stat(video)
    return {"path": shown(os.path.abspath(video)), "name": shown(video.name), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def url_facts(url: str, timeout: float = 10.0) -> tuple[Optional[int], Optional[int]]:
    """(size, modification time in ns) of the file at ``url``, as its server says (None where it
    does not), from a HEAD request; a server that refuses HEAD (a presigned URL) is asked for the
    first byte. Raises EmoError when the URL cannot be read."""
    import email.utils
    import urllib.error
    import urllib.request

    def ask(method: str, headers: dict):
        with urllib.request.urlopen(urllib.request.Request(url, method=method, headers=headers), timeout=timeout) as r:
            return r.headers

    try:
        try:
            h = ask("HEAD", {})
            size = h.get("Content-Length")
        except urllib.error.HTTPError as e:
            if e.code not in (403, 405, 501):
                raise
            h = ask("GET", {"Range": "bytes=0-0"})
            size = (h.get("Content-Range") or "").rpartition("/")[2]
    except urllib.error.HTTPError as e:
        raise EmoError(f"{url} cannot be read: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise EmoError(f"{url} cannot be read ({getattr(e, 'reason', e)}); check the URL and that its server is up") from None
    mtime = None
    try:
        mtime = int(email.utils.parsedate_to_datetime(h.get("Last-Modified")).timestamp()) * 10**9
    except (TypeError, ValueError):
        pass
    return (int(size) if size and size.isdigit() else None), mtime


def check_recording(src, label: str) -> None:
    """Refuse what analyze cannot time: a live stream, a video without a frame rate."""
    if src.live:
        raise EmoError(f"{label} is a live stream, not a recording: analyze takes video files and URLs of video "
                       "files (emo-edge infer and serve read live streams)")
    if not src.fps:
        raise EmoError(f"{label} does not say its frame rate, so its frames cannot be given timestamps; re-mux it "
                       "(ffmpeg -i IN -c copy OUT.mp4)")
