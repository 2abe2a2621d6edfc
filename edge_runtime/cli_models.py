"""`emo-edge fetch`, `models`, `evaluate` and `info`: the commands about models (which exist, what
one says about itself, how well it scores, the one download), all torch-free so they run on the device.

They are plain functions here; :mod:`emo.edge_runtime.cli` registers them on the one ``emo-edge``
app, in the place ``--help`` lists them. ``MODEL`` is the ``--model`` option the commands share.
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Literal, Optional

import typer

from .errors import EmoError

MODEL = typer.Option(None, "--model", "-m", help="tiny, default or large (bundled; see `emo-edge models`), or an emo ONNX file.")
Split = Literal["train", "val", "test"]


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
