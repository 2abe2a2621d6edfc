"""`emo-edge analyze --ray [ADDRESS]`: the videos of a batch cut into time chunks (:mod:`.chunks`)
and run by Ray actors across a cluster, stitched on the driver (:mod:`.stitch`) into the very
outputs of a local run (docs/analyze-ray.md). This module connects to the cluster and starts the
batch; the driver's loop is :class:`.ray_driver.ClusterRun`.

Ray is an optional extra (``pip install "emo-fer[ray]"``) and is imported here only, inside the
functions that use it: `emo-edge analyze` without ``--ray`` never imports it.

- Each actor (one per CPU of the cluster, or ``--workers``) loads the model and the face detector
  once and runs chunk after chunk; the driver gives a chunk to each idle actor, video by video.
- A worker process or node that dies loses its chunk: the driver starts a new actor and the chunk
  runs again (chunks are pure: a result is kept once, so no row is lost or doubled).
- Ctrl-C or SIGTERM kills the actors and exits 130/143; the chunks that finished are on disk, and
  the same command run again skips them (and the videos already complete).
- A video that cannot be read, here or on a node, fails alone with one line; the others go on.
- One progress bar over all chunks, with video seconds per second and the nodes and CPUs in use.
"""
from __future__ import annotations

import logging
import re
from typing import Optional, Sequence

from ..errors import EmoError
from ..files import check_writable_dir, exists
from ..job import signals
from .batch import report
from .chunks import ChunkWorker
from .jobs import find_videos, plan
from .options import AnalyzeOptions, VideoResult
from .ray_driver import MAX_ATTEMPTS, ClusterRun, say  # noqa: F401 (MAX_ATTEMPTS: imported from here too)

INSTALL = 'pip install "emo-fer[ray]"'
_ADDRESS = re.compile(r"^(auto|local|ray://\S+|[A-Za-z0-9_.-]+:\d{1,5})$")


def split_address(inputs: Sequence[str]) -> tuple[Optional[str], list[str]]:
    """(ADDRESS, the inputs without it): `--ray` is a flag, so an address written after it lands
    among the inputs. An input is taken as the address when it is auto, local, ray://... or
    HOST:PORT and no file or folder of that name exists."""
    found = [a for a in inputs if _ADDRESS.match(a) and not exists(a)]
    if len(found) > 1:
        raise EmoError(f"--ray takes one address, not {len(found)} ({', '.join(found)})")
    return (found[0] if found else None), [a for a in inputs if not found or a != found[0]]


def import_ray():
    try:
        import ray
    except ImportError:
        raise EmoError(f"--ray needs Ray, which is not installed: {INSTALL} (or leave --ray off: --workers N "
                       "runs on this machine)") from None
    return ray


def connect(ray, address: Optional[str]) -> str:
    """Connect to the cluster at ``address``: None or auto, a running one (RAY_ADDRESS, or the one
    `ray start` made on this machine), else a new local Ray; local, always a new local Ray
    (bound to 127.0.0.1, this machine's CPUs); HOST:PORT or ray://HOST:PORT, that cluster.
    Returns what it connected to, in words."""
    quiet = dict(logging_level=logging.ERROR, log_to_driver=False, include_dashboard=False)
    if address in (None, "auto"):
        try:
            ray.init(address="auto", **quiet)
            return "the running Ray cluster"
        except ConnectionError:
            pass
    if address in (None, "auto", "local"):
        ray.init(_node_ip_address="127.0.0.1", **quiet)
        return "a local Ray (this machine)"
    advice = "check the address (HOST:6379 from a node, ray://HOST:10001 from outside) and that the cluster is up"
    _reachable(address, advice)
    try:
        ray.init(address=address, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise EmoError(f"cannot connect to the Ray cluster at {address}: {str(e).splitlines()[0][:200]}; {advice}") from None
    return f"the Ray cluster at {address}"


def _reachable(address: str, advice: str, timeout: float = 5.0) -> None:
    """Fail in seconds, not minutes (Ray retries an address that does not answer for a long time)."""
    import socket

    host, _, port = address.split("://", 1)[-1].rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except (OSError, ValueError) as e:
        raise EmoError(f"cannot connect to the Ray cluster at {address}: {getattr(e, 'strerror', None) or e}; {advice}") from None


def analyze_ray(inputs: Sequence[str], out, options: Optional[AnalyzeOptions] = None, address: Optional[str] = None,
                workers: Optional[int] = None, force: bool = False, progress: Optional[bool] = None,
                chunk_seconds: float = 0.0) -> int:
    """What `emo-edge analyze --ray` does: every video of ``inputs`` into ``out/<name>/``, in chunks
    of about ``chunk_seconds`` (0: :func:`.chunks.auto_chunk_seconds`) on the Ray cluster at
    ``address`` (see :func:`connect`), by ``workers`` actors (None: one per CPU). The same
    outputs and lines as :func:`.batch.analyze_batch`; returns the exit status."""
    o = options or AnalyzeOptions()
    o.check()
    if chunk_seconds and chunk_seconds < 1:
        raise EmoError("--chunk-seconds must be at least 1 (0: chosen for the cluster)")
    ray = import_ray()
    rec = o.recognizer()  # refuses a bad --model or --detector-model before any work; its labels and names
    out = check_writable_dir(out, "--out")
    jobs = plan(find_videos(inputs), out, count_frames=False)
    params = o.parameters()
    if o.smooth > 0:
        say(f"warning: --smooth {o.smooth:g} carries every earlier frame in a track's scores, so where a face is on "
            "screen at a chunk boundary the next chunk runs again after this one (the outputs stay exact, "
            "the speed-up shrinks); --smooth 0 (the default) avoids it")
    where = connect(ray, address)
    results: dict[int, VideoResult] = {}
    try:
        with signals() as stop:  # after ray.init, which has handlers of its own
            ClusterRun(ray, ray.remote(_actor_class()), jobs, o, params, rec, force, workers, chunk_seconds, progress,
                       where, stop, results).go()
    finally:
        ray.shutdown()
    return report(jobs, results, out, stop)


def _actor_class():
    """ChunkWorker, naming its node by Ray's node id (defined here: only this module imports ray)."""
    class RayChunkWorker(ChunkWorker):
        def where(self) -> tuple[str, str]:
            import ray

            return ray.get_runtime_context().get_node_id(), self.problem

    RayChunkWorker.__name__ = RayChunkWorker.__qualname__ = "ChunkWorker"  # the workers' process title
    return RayChunkWorker
