"""`emo-edge`: emotion recognition on images, videos and cameras (onnxruntime + OpenCV, no torch)."""
from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Literal, Optional

import typer

from .bench_cli import bench_app
from .cliopts import root_callback
from .errors import EmoError, cli_main

app = typer.Typer(add_completion=False, rich_markup_mode=None, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Find faces and score their emotions with an emo ONNX model. Runs on a Raspberry Pi.")
root_callback(app, "emo-edge")
app.add_typer(bench_app, name="bench")

SOURCE_HELP = ("camera0 (V4L2 index) | /dev/video0 | picam0 (picamera2) | video file | rtsp:// or http(s):// URL | "
               "image | folder of images | glob such as 'shots/*.jpg'")


# The options infer and serve share (one definition; see runner.JobOptions).
MODEL = typer.Option(None, "--model", "-m", help="tiny, default or large (bundled; see `emo-edge models`), or an emo ONNX file.")
Detector = Literal["auto", "haar", "yunet"]
Split = Literal["train", "val", "test"]
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


@app.command()
def fetch(
    name: str = typer.Argument(..., help="What to download: yunet (the YuNet face detector, 227 KiB)."),
    url: Optional[str] = typer.Option(None, help="Download from this URL instead (a mirror)."),
    sha256: Optional[str] = typer.Option(None, help="Expect this SHA-256 instead of the pinned one (another release)."),
    timeout: float = typer.Option(30.0, min=1, help="Seconds to wait for the server on each read."),
    deadline: Optional[float] = typer.Option(None, min=1, help="Seconds for the whole download (default: 120); a slower mirror is given up."),
) -> None:
    """Download a model emo can use (the only download emo ever does) into the per-user cache."""
    from .assets import Stopped
    from .assets import fetch as fetch_asset
    from .files import shown

    try:
        path = fetch_asset(name, url, sha256, timeout, deadline)
    except Stopped as e:
        print(f"emo-edge: fetch {name} stopped by {e}; nothing was saved", file=sys.stderr)
        raise typer.Exit(e.code) from None
    print(f"emo-edge: saved {name} to {shown(path)} ({path.stat().st_size:,} bytes, SHA-256 checked); "
          "--detector auto uses it from now on")


# Every bundled model was trained on FER2013 and nothing else (MODEL_CARD.md, "Data").
BUNDLED_DATA_TERMS = ("FER2013 only (the Kaggle \"Challenges in Representation Learning\" competition data): "
                      "research use; for commercial use, fine-tune on faces you hold the rights to")


@app.command()
def models(as_json: bool = typer.Option(False, "--json", help="Print the list as JSON on stdout (instead of the table).")) -> None:
    """The bundled emotion models and the downloadable ones (in the cache or not)."""
    from .assets import ASSETS, cache_dir, cached
    from .classifier import bundled_models, load_session, read_metadata

    rows = []
    for name, p in bundled_models().items():
        m = read_metadata(load_session(p), p.name)
        rows.append({"name": name, "kind": "emotion model (bundled; --model " + name + ")", "path": str(p), "bytes": p.stat().st_size,
                     "arch": m.arch, "precision": m.precision, "params": m.extra.get("params"), "macs": m.extra.get("macs"),
                     "val_accuracy": m.metrics.get(f"val_accuracy_{m.precision}", m.metrics.get("val_accuracy")),
                     "val_degraded_mean": m.metrics.get("val_degraded_mean_int8"), "val_ece": m.metrics.get("val_ece_int8"),
                     "temperature": m.temperature,
                     "latency_ms": m.metrics.get("latency_ms_1thread"), "latency_vs_default": m.metrics.get("latency_vs_default"),
                     "latency_device": m.metrics.get("latency_device"), "data_terms": BUNDLED_DATA_TERMS})
    for a in ASSETS.values():
        p = cached(a.name)
        rows.append({"name": a.name, "kind": a.what, "path": str(p or cache_dir() / a.file), "bytes": p.stat().st_size if p else None,
                     "cached": p is not None})
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    for r in rows:
        if "cached" in r:
            state = f"in the cache, {r['bytes']:,} bytes" if r["cached"] else f"not downloaded: emo-edge fetch {r['name']}"
            print(f"{r['name']:<28} {state}\n{'':<28} {r['kind']}; {r['path']}")
        else:
            num = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
            facts = [f"{r['arch']} {r['precision']}", f"{r['bytes'] / 1024:.0f} KiB"]
            if num(r["params"]):
                facts.append(f"{r['params'] / 1e3:.0f}k parameters")
            if num(r["val_accuracy"]):
                facts.append(f"PublicTest {r['val_accuracy']:.2%}")
            if num(r["val_degraded_mean"]):
                facts.append(f"{r['val_degraded_mean']:.2%} on degraded faces (mean of ten)")
            if num(r["val_ece"]):
                facts.append(f"ECE {r['val_ece']:.3f}")
            if num(r["latency_ms"]):
                ratio = f", {r['latency_vs_default']:.2f}x the default" if num(r["latency_vs_default"]) and r["name"] != "default" else ""
                facts.append(f"{r['latency_ms']:.3f} ms per face on 1 thread{ratio}")
            where = f" (measured on {r['latency_device']})" if num(r["latency_ms"]) and r["latency_device"] else ""
            print(f"{r['name']:<28} {', '.join(facts)}\n{'':<28} {r['path']}{where}")
    print("Bundled models: trained on FER2013 only (research use); for commercial use, fine-tune on faces "
          "you hold the rights to (MODEL_CARD.md, Data).")


@app.command()
def evaluate(
    data: str = typer.Argument(..., help="Labelled faces: a folder of <emotion>/*.jpg, a FER2013 root or fer2013.csv."),
    legacy_data: Optional[str] = typer.Argument(None, hidden=True),  # the old form: evaluate MODEL DATA
    model: Optional[Path] = MODEL,
    split: Split = typer.Option("val", help="For a FER2013 root or CSV: train, val (PublicTest) or test (PrivateTest)."),
    degrade: Optional[str] = typer.Option(None, help="Also score spoiled copies: all, or a list such as blur,jpeg,face16 "
                                          "(dark bright blur motion jpeg face24 face16 noise rot+15 rot-15; faceN for any N)."),
    tta: bool = typer.Option(False, "--tta", help="Average each face's scores with its mirror image's (twice the work)."),
    threads: int = typer.Option(1, min=1, help="onnxruntime threads."),
    batch: int = typer.Option(256, min=1, help="Faces per inference call."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the report as JSON to this path."),
) -> None:
    """Accuracy, per-class precision/recall/F1, confusion matrix and calibration (ECE) on
    pre-cropped labelled faces; with --degrade, a robustness table (clean, each condition, mean, worst)."""
    from .classifier import Classifier
    from .dataset import CSV_USAGE, load_split
    from .degrade import parse_conditions
    from .evaluation import evaluate_faces, format_evaluation
    from .files import atomic_write_text, is_dir, same_file, shown
    from .runner import usable_threads

    if legacy_data is not None:
        if model is not None:
            raise EmoError("give the model once: emo-edge evaluate DATA --model MODEL")
        model, data = Path(data), legacy_data
    if split not in CSV_USAGE:
        raise EmoError(f"--split must be one of {', '.join(CSV_USAGE)}, not '{split}'")
    conditions = parse_conditions(degrade) if degrade is not None else []
    if json_out is not None and not is_dir(json_out.parent or "."):
        raise EmoError(f"--json {shown(json_out)}: the folder {shown(json_out.parent)} does not exist; create it first")
    if json_out is not None and ((model is not None and same_file(json_out, model)) or same_file(json_out, data)):
        raise EmoError(f"--json {shown(json_out)} is an input of this run; it would be overwritten. Write elsewhere")
    clf = Classifier(model, threads=usable_threads(threads), tta=tta)
    sp = load_split(data, split, clf.spec.size, skip_blank=False)
    for line in sp.report.lines():
        logging.getLogger("emo").info(f"emo-edge: {line.strip()}")
    result = evaluate_faces(clf, sp, conditions, batch)
    print(format_evaluation(result, f"{shown(clf.path)} on {shown(data)} [{split}]{' (mirror-averaged)' if tta else ''}"))
    if json_out:
        atomic_write_text(json_out, json.dumps({"model": shown(clf.path), "data": shown(data), "split": split, **result,
                                                "data_report": sp.report.to_dict()}, indent=2))


@app.command()
def info(
    legacy_model: Optional[Path] = typer.Argument(None, hidden=True),  # the old form: info MODEL
    model: Optional[Path] = MODEL,
    as_json: bool = typer.Option(False, "--json", help="Print the metadata as JSON on stdout (instead of the table)."),
) -> None:
    """What a model says about itself: labels, input spec, precision, metrics, provenance."""
    from dataclasses import asdict

    from .classifier import Classifier

    from .faces import auto_choice

    if legacy_model is not None:
        if model is not None:
            raise EmoError("give the model once: emo-edge info --model MODEL")
        model = legacy_model
    clf = Classifier(model)
    kind, yunet = auto_choice()
    detector_line = f"auto: yunet ({yunet})" if yunet else "auto: haar (for YuNet run `emo-edge fetch yunet`)"
    meta = asdict(clf.meta)
    meta["labels"] = list(clf.meta.labels)
    size = clf.path.stat().st_size
    if as_json:
        print(json.dumps({"path": str(clf.path), "bytes": size, "detector": {"auto": kind, "yunet_model": str(yunet) if yunet else None},
                          "metadata": meta}, indent=2))
        return
    m = clf.meta
    print(f"model      {clf.path} ({size / 1024:.1f} KiB)")
    print(f"detector   {detector_line}")
    print(f"arch       {m.arch}  precision {m.precision}  output {m.output}")
    print(f"input      {m.input.channels}x{m.input.size}x{m.input.size} gray, (x/255 - {m.input.mean}) / {m.input.std}, crop margin {m.input.margin}")
    print(f"labels     {', '.join(m.labels)}")
    print(f"versions   emo {m.emo_version}, metadata format {m.format_version}")
    if m.checkpoint_sha256:
        print(f"checkpoint sha256 {m.checkpoint_sha256}")
    for k, v in m.metrics.items():
        print(f"metric     {k}: {v}")
    for k, v in m.extra.items():
        print(f"extra      {k}: {v}")


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
