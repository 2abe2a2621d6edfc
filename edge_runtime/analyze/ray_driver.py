"""The driver's loop of `emo-edge analyze --ray` (:class:`ClusterRun`): the actors, one per worker,
started and replaced when lost; each idle one given the next chunk, video by video; what comes
back stitched (:mod:`.stitch`); one line per video and one progress bar over all chunks
(:class:`ChunkBar`). It is handed the ``ray`` module by :mod:`.ray_runner`, which alone imports it.
"""
from __future__ import annotations

import sys
import time
from collections import deque
from typing import Optional

from ..errors import EmoError
from ..files import shown
from .batch import result_line
from .chunks import auto_chunk_seconds
from .options import VideoResult
from .stitch import ChunkedVideo, Task

MAX_ATTEMPTS = 3  # runs of one chunk lost with their worker before its video fails


class ClusterRun:
    """One batch on the cluster: the actors, the queue of chunks, what is in flight. ``ray`` is the
    module, handed in by :mod:`.ray_runner` (which alone imports it)."""

    def __init__(self, ray, actor_class, jobs, o, params, rec, force, workers, chunk_seconds, progress, where, stop, results):
        self.ray, self.jobs, self.o, self.params, self.rec = ray, jobs, o, params, rec
        self.force, self.workers, self.chunk_seconds, self.where = force, workers, chunk_seconds, where
        self.stop, self.results = stop, results
        self.bars = sys.stderr.isatty() if progress is None else progress
        self.actor_class = actor_class  # ray.remote(ChunkWorker), made where ray is imported
        self.starting: dict = {}  # ready ref -> actor, until it says where it runs
        self.idle: list = []
        self.busy: dict = {}  # ref -> (actor, task)
        self.nodes: dict = {}  # actor -> node id
        self.made = 0
        self.problems: list[str] = []
        self.queue: deque = deque()
        self.show: Optional[ChunkBar] = None

    def go(self) -> None:
        ray = self.ray
        cpus = int(ray.cluster_resources().get("CPU", 0))
        per = max(1, self.o.threads)
        now = cpus // per
        n = self.workers or max(1, now)
        if n > now:
            say(f"{n} worker(s) of {per} CPU(s) asked for, and the cluster has {cpus} CPU(s) now: the others start as "
                "it grows (an autoscaling cluster adds nodes for them)")
        self.n = n
        videos = self._videos()
        todo = [v for v in videos.values() if v.status == "todo"]
        secs = self.chunk_seconds or auto_chunk_seconds(sum(v.video_seconds for v in todo), n)
        for i, v in list(videos.items()):
            try:
                v.plan(secs)
            except EmoError as e:
                v.status = "failed"
                self._finished(i, VideoResult(v.label, shown(v.out), "failed", str(e)))
        todo = [v for v in todo if v.status == "todo"]
        for v in todo:
            self.queue.extend(v.tasks())
        n = self.n = max(1, min(n, len(self.queue)))  # no more workers than chunks to run
        chunks = sum(len(v.specs) for v in todo)
        self.chunks = chunks
        cached = sum(v.cached for v in todo)
        say(f"{self.where}: {len(ray.nodes())} node(s), {cpus} CPU(s); {len(todo)} video(s) in {chunks} chunk(s) of about "
            f"{secs:g} s, by {n} worker(s)" + (f"; {cached} chunk(s) done by an earlier run" if cached else ""))
        self.show = ChunkBar(f"{len(todo)} video(s)", chunks, cached, self.bars)
        try:
            for v in todo:  # chunks found on disk: stitched now, perhaps all of a video
                self._more(v.advance())
                self._check(v)
            if self.queue:
                for _ in range(n):
                    self._new_actor()
            self._loop(videos)
        finally:
            self.show.close()
            for v in videos.values():
                if v.status == "todo":
                    v.close()
            for a in [*self.idle, *self.starting.values(), *(a for a, _ in self.busy.values())]:
                ray.kill(a)
        for i, v in videos.items():
            if i not in self.results:
                if self.stop.reason:
                    kept = len(v.results) + len(v.seeded) + v.stitcher.next
                    why = f"kept {kept} finished chunk(s)" if kept else "not started"
                    self._finished(i, VideoResult(v.label, shown(v.out), "stopped", why))
                else:
                    why = self.problems[0] if self.problems else "no worker could run it"
                    self._finished(i, VideoResult(v.label, shown(v.out), "failed", why))

    def _videos(self) -> dict:
        videos = {}
        for i, job in enumerate(self.jobs):
            try:
                v = ChunkedVideo(job, self.o, self.params, self.rec, self.force, i)
            except EmoError as e:
                self._finished(i, VideoResult(shown(job.video), shown(job.out), "failed", str(e)))
                continue
            if v.status == "skipped":
                self._finished(i, v.result)
            else:
                videos[i] = v
        return videos

    def _loop(self, videos: dict) -> None:
        ray = self.ray
        quiet_since = time.monotonic()
        while not self.stop.reason and any(v.status == "todo" for v in videos.values()):
            while self.queue and self.idle:
                t = self.queue.popleft()
                if t.video.status != "todo":
                    continue
                a = self.idle.pop()
                t.video.begin()
                self.busy[a.run.remote(t.spec, t.seed, t.seek)] = (a, t)
            if not self.queue and not self.busy:  # every chunk asked for is in, yet a video is not done
                for v in videos.values():
                    if v.status == "todo":
                        v.fail("its chunks are all in but do not stitch (an emo bug; please report it)")
                        self._check(v)
                return
            if not self.busy and not self.starting and not self.idle:
                if self.problems or self.made >= self._most_actors():
                    for v in videos.values():
                        if v.status == "todo":
                            v.fail(self.problems[0] if self.problems else "no worker could be started on the cluster")
                            self._check(v)
                    return
                self._new_actor()
            refs = [*self.busy, *self.starting]
            ready, _ = ray.wait(refs, num_returns=1, timeout=0.2) if refs else ([], [])
            if self.stop.reason:
                return
            if not self.busy and self.queue and time.monotonic() - quiet_since > 30:
                say(f"waiting for the cluster to start a worker ({len(self.starting)} asked for; is there a free CPU?)")
                quiet_since = time.monotonic()
            for ref in ready:
                if ref in self.starting:
                    self._started(ref)
                else:
                    quiet_since = time.monotonic()
                    self._done(ref)
            self.show.workers(len(set(self.nodes.values())), len(self.nodes) * max(1, self.o.threads))

    def _most_actors(self) -> int:
        return self.n + MAX_ATTEMPTS * self.chunks  # and replacements for the workers lost

    def _new_actor(self) -> None:
        a = self.actor_class.options(num_cpus=max(1, self.o.threads), max_restarts=0).remote(self.o, self.params)
        self.starting[a.where.remote()] = a
        self.made += 1

    def _started(self, ref) -> None:
        a = self.starting.pop(ref)
        try:
            node, problem = self.ray.get(ref)
        except self.ray.exceptions.RayError as e:
            problem, node = f"a worker could not start: {first_line(e)}", None
        if problem:
            if problem not in self.problems:
                self.problems.append(problem)
                say(f"a worker cannot run: {problem}")
            self.ray.kill(a)
            return
        self.nodes[a] = node
        self.idle.append(a)

    def _done(self, ref) -> None:
        ray = self.ray
        a, t = self.busy.pop(ref)
        try:
            r = ray.get(ref)
        except ray.exceptions.RayTaskError as e:  # raised inside the worker (ChunkWorker.run returns its errors)
            r = f"{t.spec.name}: {first_line(e)}"
        except ray.exceptions.RayError as e:  # the worker process or its node is gone
            self.nodes.pop(a, None)
            ray.kill(a)
            t.attempts += 1
            if t.attempts >= MAX_ATTEMPTS:
                t.video.fail(f"{t.spec.name}: its worker died {t.attempts} times ({first_line(e)[:120]})")
                self._check(t.video)
            else:
                say(f"{t.spec.name} of {t.video.label}: its worker was lost ({type(e).__name__}); it runs again")
                self.queue.appendleft(t)
            self._new_actor()
            return
        self.idle.append(a)
        v = t.video
        if not isinstance(r, str):
            self.show.chunk(v.chunk_seconds(t.spec))
        self._more(v.take(t, r))
        self._check(v)

    def _more(self, tasks: list[Task]) -> None:
        self.queue.extendleft(reversed(tasks))  # seeded reruns first: their video waits for them
        if tasks and self.show is not None:
            self.show.more(len(tasks))

    def _check(self, v: ChunkedVideo) -> None:
        if v.status in ("done", "failed") and v.index not in self.results:
            self._finished(v.index, v.result)

    def _finished(self, i: int, r: VideoResult) -> None:
        self.results[i] = r
        line = f"emo-edge: {result_line(r)}"
        if self.show is not None:
            self.show.say(line)
        else:
            print(line, file=sys.stderr, flush=True)


class ChunkBar:
    """One progress bar over all chunks (rich, on a terminal): video seconds per second, nodes and CPUs in use."""

    def __init__(self, label: str, total: int, done: int, bars: bool):
        self.t0, self.video_seconds, self.n_nodes, self.n_cpus = time.monotonic(), 0.0, 0, 0
        self.progress = None
        if not bars:
            return
        try:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
        except ImportError:
            return
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("chunks"),
                                 TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"),
                                 TimeRemainingColumn(), console=Console(stderr=True), transient=True)
        self.task = self.progress.add_task(label, total=total or None, completed=done, rate="")
        self.progress.start()

    def more(self, n: int) -> None:
        """Chunks that run again (seeded): more to do."""
        if self.progress is not None:
            self.progress.update(self.task, total=(self.progress.tasks[0].total or 0) + n)

    def chunk(self, video_seconds: float) -> None:
        self.video_seconds += video_seconds
        self._update(advance=1)

    def workers(self, nodes: int, cpus: int) -> None:
        if (nodes, cpus) != (self.n_nodes, self.n_cpus):
            self.n_nodes, self.n_cpus = nodes, cpus
            self._update()

    def _update(self, advance: int = 0) -> None:
        if self.progress is None:
            return
        rate = self.video_seconds / max(1e-6, time.monotonic() - self.t0)
        self.progress.update(self.task, advance=advance,
                             rate=f"{rate:.1f} video s/s, {self.n_nodes} node(s), {self.n_cpus} CPU(s)")

    def say(self, line: str) -> None:
        if self.progress is not None:
            self.progress.console.print(line, markup=False, highlight=False, soft_wrap=True)
        else:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def say(msg: str) -> None:
    print(f"emo-edge: {msg}", file=sys.stderr, flush=True)


def first_line(e: BaseException) -> str:
    lines = [l for l in str(e).splitlines() if l.strip()]
    return lines[-1][:300] if lines else type(e).__name__
