"""`emo-edge`: emotion recognition on images, videos and cameras (onnxruntime + OpenCV, no torch)."""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import typer

from .bench_cli import bench_app
from .cli_models import MODEL, evaluate, fetch, info, models
from .cliopts import root_callback
from .errors import EmoError, cli_main

app = typer.Typer(add_completion=False, rich_markup_mode=None, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Find faces and score their emotions with an emo ONNX model. Runs on a Raspberry Pi.")
root_callback(app, "emo-edge")
app.add_typer(bench_app, name="bench")

SOURCE_HELP = ("camera0 (V4L2 index) | /dev/video0 | picam0 (picamera2) | video file | rtsp:// or http(s):// URL | "
               "image | folder of images | glob such as 'shots/*.jpg'")


# The options the commands that run the loop share (one definition; see runner.JobOptions); MODEL
# (--model) is cli_models', where the commands about models are.
Detector = Literal["auto", "haar", "yunet"]
DETECTOR = typer.Option("auto", help="Face detector: auto (yunet when `emo-edge fetch yunet` has run, else haar), haar or yunet.")
DETECTOR_MODEL = typer.Option(None, help="A YuNet .onnx file to use instead of the one `emo-edge fetch yunet` saves.")
ALIGN = typer.Option(True, "--align/--no-align", help="Turn each face upright by its eye line before classifying (YuNet; Haar sees no eyes).")
DETECT_EVERY = typer.Option(1, min=1, help="Run detection every N frames; track boxes in between.")
DETECT_SIZE = typer.Option(None, help="Longest side of the frame the detector sees (haar: 480, yunet: 640; chosen in benchmarks/results/detectors-*.md).")
SMOOTH = typer.Option(0.0, min=0.0, max=0.99, help="Score smoothing per track, 0 (off) to 0.99; 0.6 suits live video.")
TTA = typer.Option(False, "--tta", help="Classify each face and its mirror image in one call and average the scores (a little more accurate on poor faces, about 1.9x the classifier's time).")
THREADS = typer.Option(1, min=1, help="onnxruntime threads for the classifier (at most the CPU cores).")
SPIN = typer.Option(True, "--spin/--no-spin", help="--no-spin stops idle threads busy-waiting (saves power).")
WIDTH = typer.Option(0, min=0, help="Camera: requested frame width.")
HEIGHT = typer.Option(0, min=0, help="Camera: requested frame height.")
FPS = typer.Option(0, min=0, help="Camera: requested frame rate.")
RECONNECT = typer.Option(10, min=0, help="Camera/stream: reopen attempts, with backoff, after a drop-out.")
TIMEOUT = typer.Option(10.0, min=0.5, help="Stream: seconds to wait for it to open or deliver a frame.")
SAVE = typer.Option(None, help="Write annotated output: an image file, a video (.mp4/.avi/.mkv) or a folder.")
MAX_FRAMES = typer.Option(0, min=0, help="Stop after N frames (0: no limit).")
DURATION = typer.Option(0, min=0, help="Stop after N seconds (0: no limit).")
MQTT = typer.Option(None, help="Publish to an MQTT broker: mqtt://[user@]host[:port][/prefix] or mqtts:// "
                               "(password in EMO_MQTT_PASSWORD; needs pip install \"emo-fer[mqtt]\").")
MQTT_INTERVAL = typer.Option(1.0, min=0.05, help="MQTT: at most one state message per this many seconds.")
HA_DISCOVERY = typer.Option(True, "--ha-discovery/--no-ha-discovery", help="MQTT: announce sensors to Home Assistant.")


@app.command()
def infer(
    source: str = typer.Argument(..., help=SOURCE_HELP),
    model: Optional[Path] = MODEL, detector: Detector = DETECTOR, detector_model: Optional[Path] = DETECTOR_MODEL,
    align: bool = ALIGN, detect_every: int = DETECT_EVERY, detect_size: Optional[int] = DETECT_SIZE, smooth: float = SMOOTH, tta: bool = TTA,
    threads: int = THREADS, spin: bool = SPIN, width: int = WIDTH, height: int = HEIGHT, fps: float = FPS,
    reconnect: int = RECONNECT, timeout: float = TIMEOUT, save: Optional[str] = SAVE, max_frames: int = MAX_FRAMES,
    duration: float = DURATION, mqtt: Optional[str] = MQTT, mqtt_interval: float = MQTT_INTERVAL,
    ha_discovery: bool = HA_DISCOVERY,
    output: Literal["auto", "json", "table", "none"] = typer.Option("auto", "--format", help="auto (table on a terminal, JSON Lines otherwise), json, table or none."),
) -> None:
    """Detect faces, classify them and print the emotions per face, one record per frame."""
    params = dict(locals())
    from .runner import JobOptions, run_job

    code = run_job(JobOptions(**params))
    if code:
        raise typer.Exit(code)


@app.command()
def serve(
    source: str = typer.Argument(..., help=SOURCE_HELP),
    host: str = typer.Option("127.0.0.1", help="Address to listen on; 0.0.0.0 makes the page reachable from the network."),
    port: int = typer.Option(8000, min=0, max=65535, help="TCP port (0: any free port)."),
    token: Optional[str] = typer.Option(None, envvar="EMO_TOKEN", help="Require this token (?token= or 'Authorization: Bearer') on every endpoint but /healthz."),
    stream_fps: float = typer.Option(10.0, min=0.5, max=60, help="MJPEG frames per second for viewers."),
    stream_width: int = typer.Option(640, min=0, help="Width of the MJPEG frames (0: the frame's own)."),
    jpeg_quality: int = typer.Option(75, min=10, max=100, help="JPEG quality of the stream and snapshot."),
    health_timeout: float = typer.Option(5.0, min=0.5, help="/healthz answers 503 after this many seconds without a frame."),
    realtime: bool = typer.Option(True, "--realtime/--fast", help="A video file plays at its own frame rate, skipping "
                                  "frames if processing falls behind; --fast: every frame, as fast as possible."),
    model: Optional[Path] = MODEL, detector: Detector = DETECTOR, detector_model: Optional[Path] = DETECTOR_MODEL,
    align: bool = ALIGN, detect_every: int = DETECT_EVERY, detect_size: Optional[int] = DETECT_SIZE, smooth: float = SMOOTH, tta: bool = TTA,
    threads: int = THREADS, spin: bool = SPIN, width: int = WIDTH, height: int = HEIGHT, fps: float = FPS,
    reconnect: int = typer.Option(1_000_000, min=0, help="Camera/stream: attempts to open it, at start (while the page says it is not found) and after a drop-out; a service keeps trying. 0: fail at once."),
    timeout: float = TIMEOUT, save: Optional[str] = SAVE, max_frames: int = MAX_FRAMES, duration: float = DURATION,
    mqtt: Optional[str] = MQTT, mqtt_interval: float = MQTT_INTERVAL, ha_discovery: bool = HA_DISCOVERY,
    output: Literal["none", "json", "table"] = typer.Option("none", "--format", help="Also print records on stdout: none, json or table."),
) -> None:
    """Run infer and serve a live page, an MJPEG stream and an HTTP API (see README: emo-edge serve).

    A file source that ends (an image, a video) stays on the page until Ctrl-C or SIGTERM. A camera
    or stream that is not there yet is retried with backoff while the page says so."""
    params = dict(locals())
    from .runner import JobOptions
    from .serve import ServeOptions, run_serve

    so = ServeOptions(**{k: params.pop(k) for k in ("host", "port", "token", "stream_fps", "stream_width", "jpeg_quality",
                                                    "health_timeout")})
    code = run_serve(JobOptions(**params), so)
    if code:
        raise typer.Exit(code)


@app.command()
def analyze(
    inputs: list[str] = typer.Argument(..., help="Video files, http(s) URLs of video files, or folders of videos (not searched recursively)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: one subfolder per video (frames.csv, tracks.csv, timeline.png, summary.json)."),
    stride: int = typer.Option(1, min=1, help="Process every N-th frame; timestamps stay those of the video."),
    workers: Optional[int] = typer.Option(None, min=1, help="Videos analysed in parallel, one process each (about one per core; default 1). With --ray: workers on the cluster (default: one per CPU)."),
    force: bool = typer.Option(False, "--force", help="Redo videos whose outputs are complete (otherwise they are skipped)."),
    parquet: bool = typer.Option(False, "--parquet", help="Also write frames.parquet (needs pyarrow)."),
    min_track_seconds: float = typer.Option(0.5, min=0, help="Tracks on screen for less than this are dropped from tracks.csv and the plot."),
    merge_gap: float = typer.Option(1.0, min=0, help="A track that starts this many seconds or less after one ended, where it ended, at a similar size and look, continues it (0: off)."),
    timeline_tracks: int = typer.Option(4, min=1, help="timeline.png shows this many tracks, the longest on screen."),
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help="Progress bars (default: on a terminal)."),
    ray: bool = typer.Option(False, "--ray", help="Run on a Ray cluster (pip install \"emo-fer[ray]\"): --ray [ADDRESS], ADDRESS auto (a running cluster, else a local Ray; the default), local, HOST:PORT or ray://HOST:10001. Every node must read the inputs: the same path, or URLs (docs/analyze-ray.md)."),
    chunk_seconds: float = typer.Option(0.0, min=0, help="With --ray: videos are cut into chunks of about this many seconds (0: 60, shorter where CPUs would wait, at least 10)."),
    model: Optional[Path] = MODEL, detector: str = DETECTOR, detector_model: Optional[Path] = DETECTOR_MODEL,
    align: bool = ALIGN, detect_every: int = DETECT_EVERY, detect_size: Optional[int] = DETECT_SIZE, smooth: float = SMOOTH, tta: bool = TTA,
    threads: int = THREADS, spin: bool = SPIN,
) -> None:
    """Analyse recordings: per video a table per frame and per track, a timeline plot and a summary.

    Exit status: 0 every video analysed (or already complete), 1 some failed, 3 all failed,
    2 a usage error (nothing done), 130/143 stopped by Ctrl-C/SIGTERM (rerun to resume)."""
    params = dict(locals())
    from .analyze import AnalyzeOptions, analyze_batch

    run = {k: params.pop(k) for k in ("inputs", "out", "workers", "force", "progress", "ray", "chunk_seconds")}
    if run["ray"]:
        from .analyze.ray_runner import analyze_ray, split_address

        address, inputs = split_address(run["inputs"])
        code = analyze_ray(inputs, run["out"], AnalyzeOptions(**params), address, run["workers"], run["force"],
                           run["progress"], run["chunk_seconds"])
    else:
        if run["chunk_seconds"]:
            raise EmoError("--chunk-seconds applies with --ray only (a local run takes each video whole)")
        code = analyze_batch(run["inputs"], run["out"], AnalyzeOptions(**params), run["workers"] or 1, run["force"],
                             run["progress"])
    if code:
        raise typer.Exit(code)


@app.command()
def collect(
    source: str = typer.Argument(..., help=SOURCE_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the crops (DIR/<predicted emotion>/*.png) and DIR/faces.csv; a rerun resumes."),
    size: int = typer.Option(96, min=16, max=1024, help="Side of the saved square grayscale crops, in pixels."),
    margin: Optional[float] = typer.Option(None, min=0.0, max=1.0, help="Crop margin per side, as a fraction of the face box (default: the model's own, so crops are framed as the classifier frames faces)."),
    every: int = typer.Option(10, min=1, help="Per track, at most one crop per N frames."),
    min_sharpness: float = typer.Option(150.0, min=0.0, help="Skip crops less sharp than this (variance of the Laplacian at 48x48; sharp faces score 440-2800, blurred by 3% of their height under 130)."),
    min_change: float = typer.Option(7.0, min=0.0, help="Skip a crop that differs from its track's last saved crop by less than this (mean absolute difference in gray levels of their middles at 16x16, lined up; the same face a few pixels off: 2-5, another expression of one person: over 10 in 95% of pairs)."),
    max_faces: int = typer.Option(0, min=0, help="Stop once N faces of this source are saved (0: no limit)."),
    model: Optional[Path] = MODEL, detector: Detector = DETECTOR, detector_model: Optional[Path] = DETECTOR_MODEL,
    align: bool = ALIGN, detect_every: int = DETECT_EVERY, detect_size: Optional[int] = DETECT_SIZE, smooth: float = SMOOTH, tta: bool = TTA,
    threads: int = THREADS, spin: bool = SPIN, width: int = WIDTH, height: int = HEIGHT, fps: float = FPS,
    reconnect: int = RECONNECT, timeout: float = TIMEOUT, max_frames: int = MAX_FRAMES, duration: float = DURATION,
) -> None:
    """Save aligned face crops for labelling, sorted into DIR/<predicted emotion>/, with DIR/faces.csv (docs/collect.md)."""
    params = dict(locals())
    from .collect import CollectOptions, collect as run_collect

    code = run_collect(CollectOptions(**params))
    if code:
        raise typer.Exit(code)


# The commands about models (cli_models.py), between collect and label in --help.
app.command()(fetch)
app.command()(models)
app.command()(evaluate)
app.command()(info)


@app.command()
def label(
    folder: Path = typer.Argument(..., help="The folder of face crops to sort: <emotion>/*.png, as `emo-edge collect` writes it."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on; 0.0.0.0 makes the page reachable from the network (use --token)."),
    port: int = typer.Option(8001, min=0, max=65535, help="TCP port (0: any free port)."),
    token: Optional[str] = typer.Option(None, envvar="EMO_TOKEN", help="Require this token (?token= or 'Authorization: Bearer') on every endpoint but /healthz."),
) -> None:
    """A page to sort face crops by key: 1-7 an emotion, x discard, u undo; every move logged (docs/label.md)."""
    from .serve.label import run_label

    code = run_label(folder, host, port, token)
    if code:
        raise typer.Exit(code)


def main() -> None:
    cli_main(app, "emo-edge")


if __name__ == "__main__":
    main()
