"""emo-export: checkpoint -> fp32 ONNX + static int8 (QDQ) ONNX, verified before it is called done.

Three steps, each a function, after :func:`prepare` has checked the request and loaded the faces:
:func:`build` exports fp32 with a dynamic batch axis (BN folded into the convs, constants
folded, ORT basic optimisations applied) and quantises it to int8 (QDQ, per-channel weights,
calibrated on real training faces); :func:`verify` runs PyTorch, fp32 and int8 on labelled
validation faces (never the calibration faces) and checks the gates (fp32 vs PyTorch max |diff|,
int8 vs fp32 top-1 agreement and accuracy drop); :func:`publish` stamps the metadata contract,
loads each file as the edge runtime will, and only when every gate passed moves the files into
place. A failed gate keeps the files as ``*.FAILED.onnx`` and never overwrites a good export.

The pieces: the ONNX steps in :mod:`.convert`, the gates and figures in :mod:`.verification`,
the faces in :mod:`.splits`.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import onnxruntime as ort
import torch

from emo.edge_runtime import __version__
from emo.edge_runtime.classifier import Classifier
from emo.edge_runtime.dataset import Split
from emo.edge_runtime.degrade import spoiled_copies
from emo.edge_runtime.errors import EmoError
from emo.edge_runtime.files import atomic_write_text
from emo.edge_runtime.metadata import ModelMetadata
from emo.edge_runtime.preprocess import InputSpec, normalize
from emo.train.checkpoint import file_sha256, load_checkpoint, model_from_checkpoint
from emo.train.models import count_macs, count_params

from .convert import METHODS, latency_pair, quantize, run_onnx, torch_to_onnx, write_ort
from .equalize import equalize_separable
from .splits import load_faces, own_faces, resolve_data, with_spoiled
from .onnxfile import stamp_metadata
from .options import ExportOptions, Gates  # noqa: F401 (Gates: imported from here too)
from .verification import calibrate_confidence, check_gates, confidence_line, format_report, robustness  # noqa: F401 (format_report: the CLI's)


@dataclass
class ExportJob:
    """A checked export request: the checkpoint and its model, the faces, where the files go."""

    checkpoint: Path
    ck: dict
    model: torch.nn.Module
    spec: InputSpec
    out_dir: Path
    name: str
    calib: Split  # calibration faces: from a train split
    val: Split  # verification faces: labelled, never the calibration faces
    opts: ExportOptions

    def files(self, failed: bool = False) -> dict[str, Path]:
        tag = ".FAILED" if failed else ""
        return {"fp32": self.out_dir / f"{self.name}{tag}.onnx", "int8": self.out_dir / f"{self.name}.int8{tag}.onnx"}

    @property
    def report_path(self) -> Path:
        return self.out_dir / (f"{self.name}.export-report.json" if self.opts.name else "export-report.json")


def export(checkpoint: str | os.PathLike, opts: ExportOptions, log: Callable[[str], None] = print) -> dict:
    """Build, verify and publish; returns the report, also written beside the files.

    A failed gate does not raise: the report says ``passed: False``, the files are kept as
    ``*.FAILED.onnx`` and an earlier good export is left untouched (``emo-export`` then exits 1).
    Bad input (checkpoint, data, options, an unwritable folder) raises :class:`EmoError`.
    """
    job = prepare(Path(checkpoint), opts, log)
    with tempfile.TemporaryDirectory(dir=job.out_dir, prefix=".emo-export-") as tmp:
        fp32, int8_candidates = build(job, Path(tmp), log)
        results = verify(job, fp32, int8_candidates, log)
        int8 = int8_candidates[results["calibration"]["method"]]
        return publish(job, fp32, int8, results)


def prepare(ckpt: Path, opts: ExportOptions, log: Callable[[str], None]) -> ExportJob:
    """Load and check the checkpoint and the options, and load the calibration and verification faces."""
    ck = load_checkpoint(ckpt)
    model = model_from_checkpoint(ck)
    bad = [k for k, v in ck["state_dict"].items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise EmoError(f"{ckpt} has NaN or infinite weights ({', '.join(bad[:3])}); the training run diverged or the file is corrupt")
    if opts.calib_method not in (*METHODS, "auto"):
        raise EmoError(f"unknown calibration method '{opts.calib_method}'; use minmax, entropy, percentile or auto")
    spec = InputSpec.from_dict(ck["input"])
    if opts.crop_margin is not None:
        spec = replace(spec, margin=opts.crop_margin)
    out_dir = Path(opts.out_dir) if opts.out_dir else ckpt.parent
    _writable_dir(out_dir)
    if not opts.calib_data and not opts.val_data and (ck.get("config") or {}).get("val_by_group"):
        calib, val = own_faces(ck, ckpt, opts, log)
    else:
        calib_src = resolve_data(opts.calib_data, ck, "calibration", "--calib-data")
        val_src = resolve_data(opts.val_data or opts.calib_data, ck, "verification", "--val-data")
        calib, val = load_faces(calib_src, val_src, spec.size, opts, log)
    members = (ck.get("arch_args") or {}).get("members") or [] if ck["arch"] == "ensemble" else [ck]
    if any(m.get("arch") == "dual-stem" for m in members):  # emo-train harden: a twin stem reads spoiled faces
        calib = with_spoiled(calib, opts.seed, log)
    return ExportJob(ckpt, ck, model, spec, out_dir, opts.name or ckpt.stem, calib, val, opts)


def build(job: ExportJob, tmp: Path, log: Callable[[str], None]) -> tuple[Path, dict[str, Path]]:
    """The fp32 ONNX file, and one int8 file per calibration method to try."""
    fp32 = tmp / "fp32.onnx"
    x_cal = normalize(job.calib.images, job.spec)
    model = job.model
    if job.opts.equalize:
        model, n = equalize_separable(job.model, torch.from_numpy(x_cal))
        if n:
            log(f"equalised the activation ranges of {n} depthwise convs on the calibration faces (same function; --no-equalize skips)")
    log(f"exporting {job.ck['arch']} to ONNX (opset {job.opts.opset}, dynamic batch)")
    torch_to_onnx(model, job.spec, fp32, job.opts.opset)
    candidates = {}
    for m in list(METHODS) if job.opts.calib_method == "auto" else [job.opts.calib_method]:
        log(f"quantising to int8 (QDQ, {'per-channel' if job.opts.per_channel else 'per-tensor'} weights, {m} calibration on {len(x_cal)} faces)")
        candidates[m] = tmp / f"int8-{m}.onnx"
        quantize(fp32, candidates[m], x_cal, m, job.opts.per_channel)
    return fp32, candidates


def verify(job: ExportJob, fp32: Path, int8_candidates: dict[str, Path], log: Callable[[str], None]) -> dict:
    """Run PyTorch, fp32 and each int8 candidate on the verification faces; keep the most
    accurate int8 (when there are several) and check the gates on it."""
    x_val, labels = normalize(job.val.images, job.spec), job.val.labels
    with torch.no_grad():
        ref = torch.cat([job.model(torch.from_numpy(x_val[i : i + 512])) for i in range(0, len(x_val), 512)]).numpy()
    out32 = run_onnx(fp32, x_val)
    outs = {m: run_onnx(p, x_val) for m, p in int8_candidates.items()}
    accs = {m: float((o.argmax(1) == labels).mean()) for m, o in outs.items()}
    if len(accs) > 1:
        log("auto calibration: int8 accuracy " + ", ".join(f"{m} {a * 100:.2f}%" for m, a in accs.items()))
    method = max(accs, key=accs.get)
    res = check_gates(ref, out32, outs[method], labels, job.opts.gates)
    res["calibration"] = {"method": method, "faces": int(len(job.calib.labels)), "data": job.calib.report.source,
                          "per_channel": job.opts.per_channel, "equalize": job.opts.equalize}
    res["verification_data"] = job.val.report.source
    spoiled = run_onnx(int8_candidates[method], normalize(spoiled_copies(job.val.images, [job.opts.seed, 2]), job.spec))
    res["confidence"] = calibrate_confidence(outs[method], labels, job.opts.temperature, spoiled)
    log(f"confidence: {confidence_line(res['confidence'])}")
    if job.opts.robustness:
        res["robustness_int8"] = robustness(int8_candidates[method], job.val, job.spec)
        log(f"int8 under the ten degraded conditions: mean {res['robustness_int8']['mean'] * 100:.2f}%, "
            f"worst {res['robustness_int8']['worst'] * 100:.2f}% ({res['robustness_int8']['worst_condition']})")
    lat = latency_pair({"fp32": fp32, "int8": int8_candidates[method]}, job.spec)
    res["latency_ms_1thread"] = {**lat, "int8_over_fp32": lat["int8"] / lat["fp32"]}
    return res


def publish(job: ExportJob, fp32: Path, int8: Path, results: dict) -> dict:
    """Stamp the metadata, load both files as the edge runtime does, move them into place (or
    aside as ``*.FAILED.onnx``), and write the report."""
    sha = file_sha256(job.checkpoint)
    metrics = {"val_accuracy_fp32": round(results["accuracy_fp32"], 4), "val_accuracy_int8": round(results["accuracy_int8"], 4),
               "val_n": results["n"], "val_data": results["verification_data"],
               "val_ece_int8": results["confidence"]["ece_after"],
               "train_best": (job.ck.get("metrics") or {}).get("best", {})}
    if "robustness_int8" in results:
        r = results["robustness_int8"]
        metrics.update(val_degraded_mean_int8=r["mean"], val_degraded_worst_int8=r["worst"])
    # an ensemble's own checkpoint is rebuilt from its members (emo-train ensemble), so name them
    members = {"members": json.dumps(job.ck["ensemble"])} if job.ck.get("ensemble") else {}
    # a model fine-tuned on a user's faces (emo-train finetune) names its base, its data and the classes it saw
    members.update({"finetune": json.dumps(job.ck["finetune"], sort_keys=True)} if job.ck.get("finetune") else {})
    for path, precision in ((fp32, "fp32"), (int8, "int8")):
        stamp_metadata(path, ModelMetadata(
            arch=job.ck["arch"], precision=precision, input=job.spec, labels=tuple(job.ck.get("labels") or ()) or ModelMetadata.labels,
            output="logits", temperature=results["confidence"]["temperature"], metrics=metrics, checkpoint_sha256=sha, emo_version=__version__,
            extra={"arch_args": json.dumps(job.ck["arch_args"]), "opset": job.opts.opset, "calibration": results["calibration"]["method"],
                   "params": count_params(job.model), "macs": count_macs(job.model, job.spec.size), **members}))
        Classifier(path)  # the edge runtime's own checks: metadata, input shape, dynamic batch
    passed = all(g["passed"] for g in results["gates"].values())
    dest = job.files(failed=not passed)
    report = {"checkpoint": str(job.checkpoint), "checkpoint_sha256": sha, "arch": job.ck["arch"], "emo_version": __version__,
              "files": {k: str(v) for k, v in dest.items()},
              "bytes": {"checkpoint": job.checkpoint.stat().st_size, "fp32": fp32.stat().st_size, "int8": int8.stat().st_size},
              **results, "onnxruntime": ort.__version__, "opset": job.opts.opset, "passed": passed}
    os.replace(fp32, dest["fp32"])
    os.replace(int8, dest["int8"])
    if passed and job.opts.ort_format:
        report["files"].update(write_ort(dest))
    atomic_write_text(job.report_path, json.dumps(report, indent=2))
    report["report_path"] = str(job.report_path)
    return report


def _writable_dir(d: Path) -> None:
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EmoError(f"cannot create output folder {d}: {e.strerror}; pass --out-dir to a writable folder") from None
    if not os.access(d, os.W_OK):
        raise EmoError(f"output folder {d} is not writable; pass --out-dir to a writable folder")
