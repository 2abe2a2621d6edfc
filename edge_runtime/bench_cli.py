"""`emo-edge bench model|pipeline|memory`: the device benchmarks (benchmarks/bench_*.py) from the edge install."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Optional

import typer

bench_app = typer.Typer(add_completion=False, rich_markup_mode=None, no_args_is_help=True,
                        help="Measure this device: classifier latency, pipeline FPS, memory (the benchmarks/ scripts' functions).")

log = logging.getLogger("emo.bench")
MODEL = typer.Option(None, "--model", "-m", help="tiny, default or large (bundled), or an emo ONNX file (default: default).")
QUICK = typer.Option(False, "--quick", help="A smoke test: a few seconds, numbers not for comparison.")
JSON = typer.Option(None, "--json", help="Also write the result as JSON to this path (and its table beside it, .md).")
PHOTO = typer.Option(Path("examples/astronaut.png"), help="A photo with one face; the test clip is built from it.")


def _model(model: Optional[str]) -> Optional[Path]:
    from .classifier import resolve_model

    return resolve_model(model) if model else None


def _done(result: dict, md: str, json_out: Optional[Path]) -> None:
    if json_out is None:
        print(md)
        return
    from .bench import save_result

    save_result(result, json_out, md, "emo-edge bench")


@bench_app.command("model")
def bench_model(
    model: Optional[str] = MODEL,
    batches: List[int] = typer.Option([1, 4, 16], "--batch", min=1, help="Batch size (repeat for several)."),
    threads: Optional[List[int]] = typer.Option(None, "--threads", min=1, help="onnxruntime threads (repeat; default: 1 up to the core count)."),
    runs: int = typer.Option(500, min=1, help="Timed runs per setting."),
    warmup: int = typer.Option(30, min=0, help="Untimed runs first."),
    quick: bool = QUICK, json_out: Optional[Path] = JSON,
) -> None:
    """Classifier latency (ms) per batch size and thread count."""
    from .bench_runs import run_model_bench

    path = _model(model)
    result, md = run_model_bench([path] if path else [], list(batches), list(threads or []) or None, runs, warmup, quick,
                                 log=log.info)
    _done(result, md, json_out)


@bench_app.command("pipeline")
def bench_pipeline(
    model: Optional[str] = MODEL,
    video: Optional[Path] = typer.Option(None, help="A video to run on (default: a clip built from --photo)."),
    photo: Path = PHOTO,
    frames: int = typer.Option(600, min=1, help="Frames to process."),
    threads: List[int] = typer.Option([1], "--threads", min=1, help="Classifier threads (repeat for several)."),
    detect_every: List[int] = typer.Option([1], "--detect-every", min=1, help="Detect every N frames (repeat for several)."),
    yunet: Optional[str] = typer.Option(None, help="face_detection_yunet.onnx: also measure the YuNet detector."),
    quick: bool = QUICK, json_out: Optional[Path] = JSON,
) -> None:
    """Frames per second of the whole loop: decode, detect, crop, classify."""
    from .bench_runs import run_pipeline_bench

    result, md = run_pipeline_bench(_model(model), video, photo, frames, tuple(threads), tuple(detect_every), yunet,
                                    quick, log=log.info)
    _done(result, md, json_out)


@bench_app.command("memory")
def bench_memory(
    model: Optional[str] = MODEL, photo: Path = PHOTO,
    frames: int = typer.Option(10_000, min=1, help="Frames for the RSS-over-time run."),
    quick: bool = QUICK, json_out: Optional[Path] = JSON,
) -> None:
    """Peak RSS of `emo-edge infer`, model load time, and RSS over many frames (a leak shows as growth)."""
    from .bench_runs import run_memory_bench

    result, md = run_memory_bench(_model(model), photo, frames, quick, log=log.info)
    _done(result, md, json_out)
    if result["cli"]["returncode"] != 0:
        raise typer.Exit(1)


__all__ = ["bench_app"]
