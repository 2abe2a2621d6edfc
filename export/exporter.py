"""emo-export: checkpoint -> fp32 ONNX + static int8 (QDQ) ONNX, verified before it is called done.

Three steps, each a function, after :func:`prepare` has checked the request and loaded the faces:
:func:`build` exports fp32 with a dynamic batch axis (BN folded into the convs, constants
folded, ORT basic optimisations applied) and quantises it to int8 (QDQ, per-channel weights,
calibrated on real training faces); :func:`verify` runs PyTorch, fp32 and int8 on labelled
validation faces (never the calibration faces) and checks the gates (fp32 vs PyTorch max |diff|,
int8 vs fp32 top-1 agreement and accuracy drop); :func:`publish` stamps the metadata contract,
loads each file as the edge runtime will, and only when every gate passed moves the files into
place. A failed gate keeps the files as ``*.FAILED.onnx`` and never overwrites a good export.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from emo.edge_runtime import __version__
from emo.edge_runtime.classifier import Classifier, load_session, session_options
from emo.edge_runtime.dataset import Split, load_split, locate_split, split_key
from emo.edge_runtime.degrade import CONDITIONS, degrade_images, summarize
from emo.edge_runtime.errors import EmoError
from emo.edge_runtime.files import atomic_write_text
from emo.edge_runtime.metadata import ModelMetadata
from emo.edge_runtime.metrics import expected_calibration_error, fit_temperature
from emo.edge_runtime.preprocess import InputSpec, normalize
from emo.train.checkpoint import file_sha256, load_checkpoint, model_from_checkpoint
from emo.train.data import run_group_faces
from emo.train.models import count_macs, count_params

from .equalize import equalize_separable
from .onnxfile import stamp_metadata
from .options import CALIB_METHODS, ExportOptions, Gates

METHODS = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile}
assert tuple(METHODS) == CALIB_METHODS


class CalibReader(CalibrationDataReader):
    """Feeds normalised real faces to the calibrator in batches."""

    def __init__(self, x: np.ndarray, input_name: str, batch: int = 64):
        self.x, self.name, self.batch = x, input_name, batch
        self.rewind()

    def get_next(self):
        if self.i >= len(self.x):
            return None
        b = self.x[self.i : self.i + self.batch]
        self.i += self.batch
        return {self.name: b}

    def rewind(self):
        self.i = 0


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
    res["confidence"] = calibrate_confidence(outs[method], labels, job.opts.temperature)
    c = res["confidence"]
    why = f" (not fitted: {c['not_fitted']})" if "not_fitted" in c else ""
    log(f"confidence: temperature {c['temperature']:.3f}{why}, ECE (15 bins) {c['ece_before']:.4f} -> {c['ece_after']:.4f}")
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


# ---------------------------------------------------------------- the pieces
MIN_TEMPERATURE_FACES = 50  # fewer verification faces than this give a temperature by chance


def calibrate_confidence(logits: np.ndarray, labels: np.ndarray, temperature: Optional[float]) -> dict:
    """The temperature the runtime divides the logits by (``temperature``, or fitted on these
    labelled faces), with the expected calibration error before (T = 1) and after. A fit that the
    faces cannot support (too few, or every one right, where sharpening without end always looks
    better) keeps T = 1 and says why."""
    t, why = (float(temperature), "") if temperature is not None else (1.0, unfit_reason(logits, labels))
    if temperature is None and not why:
        t = fit_temperature(logits, labels)
    out = {"temperature": round(t, 4), "fitted": temperature is None and not why,
           "ece_before": round(expected_calibration_error(_softmax(logits), labels), 4),
           "ece_after": round(expected_calibration_error(_softmax(logits / t), labels), 4)}
    if why:
        out["not_fitted"] = why
    return out


def unfit_reason(logits: np.ndarray, labels: np.ndarray) -> str:
    """Why no temperature should be fitted on these faces ('' when one can be)."""
    if len(labels) < MIN_TEMPERATURE_FACES:
        return f"only {len(labels)} verification faces (a temperature needs {MIN_TEMPERATURE_FACES})"
    if bool((np.asarray(logits).argmax(1) == np.asarray(labels)).all()):
        return "every verification face is right, so a sharper softmax always fits better: no temperature is best"
    return ""


def _softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def robustness(int8: Path, val: Split, spec: InputSpec) -> dict:
    """int8 accuracy on the verification faces under each of the benchmark's ten conditions."""
    acc = {name: float((run_onnx(int8, normalize(degrade_images(val.images, name), spec)).argmax(1) == val.labels).mean())
           for name in CONDITIONS}
    return {"accuracy": {k: round(v, 4) for k, v in acc.items()}, **{k: (round(v, 4) if isinstance(v, float) else v)
                                                                    for k, v in summarize(acc, CONDITIONS).items()}}


def resolve_data(explicit: Optional[str], ck: dict, what: str, flag: str) -> str:
    if explicit:
        return explicit
    src = (ck.get("data") or {}).get("source")
    if not src:
        raise EmoError(f"the checkpoint records no training data, so {what} needs {flag} PATH (a FER2013 folder or CSV)")
    if not Path(src).exists():
        raise EmoError(f"the checkpoint's data {src} is not here; pass {flag} PATH (a FER2013 folder or CSV)")
    return src


def load_faces(calib_src: str, val_src: str, size: int, opts: ExportOptions, log: Callable[[str], None]) -> tuple[Split, Split]:
    """Calibration faces (``calib_src``'s train split) and verification faces (``val_src``'s val
    split, or all of a folder of class folders), sampled; refused when they are the same faces."""
    try:
        calib_at, val_at = locate_split(calib_src, "train"), locate_split(val_src, "val")
        if split_key(calib_src, "train") == split_key(val_src, "val"):
            raise EmoError(f"calibration and verification would both use {calib_at}; verify on other labelled faces: "
                           "pass --val-data (a FER2013 root with a val folder, or a folder of class folders)")
        log(f"calibration faces: {calib_at}; verification faces: {val_at}")
        calib = _sample(load_split(calib_src, "train", size), opts.calib_size, opts.seed)
        val = _sample(load_split(val_src, "val", size, skip_blank=False), opts.val_size, opts.seed + 1)
    except EmoError as e:
        raise EmoError(f"cannot use this data for export: {e}") from None
    return calib, val


def own_faces(ck: dict, ckpt: Path, opts: ExportOptions, log: Callable[[str], None]) -> tuple[Split, Split]:
    """A run on a user's own faces, split by group (``emo-train finetune``): calibrate on the faces
    it trained on, verify on the groups it held out (sampled as --calib-size and --val-size say)."""
    try:
        calib, val = run_group_faces(ck, str(ckpt))
    except EmoError as e:
        raise EmoError(f"cannot use this data for export: {e}") from None
    log(f"calibration faces: the run's training faces, {calib.report.source}; verification faces: the groups it held out, "
        f"{val.report.source}")
    return _sample(calib, opts.calib_size, opts.seed), _sample(val, opts.val_size, opts.seed + 1)


def _sample(split: Split, n: int, seed: int) -> Split:
    if not n or n >= len(split.labels):
        return split
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(split.labels), n, replace=False))
    return Split(split.images[idx], split.labels[idx], split.report)


def _writable_dir(d: Path) -> None:
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EmoError(f"cannot create output folder {d}: {e.strerror}; pass --out-dir to a writable folder") from None
    if not os.access(d, os.W_OK):
        raise EmoError(f"output folder {d} is not writable; pass --out-dir to a writable folder")


def torch_to_onnx(model: torch.nn.Module, spec: InputSpec, path: Path, opset: int) -> None:
    """fp32 export with a dynamic batch axis; BN folded, constants folded, checked."""
    dummy = torch.zeros(2, spec.channels, spec.size, spec.size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (dummy,), str(path), input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=opset,
                          do_constant_folding=True, dynamo=False)
    raw = path.with_suffix(".raw.onnx")
    os.replace(path, raw)
    quant_pre_process(str(raw), str(path), skip_symbolic_shape=True)  # ORT basic optimisations: folds BN into conv
    raw.unlink()
    onnx.checker.check_model(str(path))


def quantize(fp32: Path, out: Path, calib: np.ndarray, method: str, per_channel: bool, batch: int = 50) -> None:
    """Static QDQ quantisation. Calibration batches all have one size (the histogram-based
    calibrators cannot stack a smaller last batch)."""
    batch = min(batch, len(calib))
    calib = calib[: len(calib) // batch * batch]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_static(str(fp32), str(out), CalibReader(calib, "input", batch), quant_format=QuantFormat.QDQ,
                            per_channel=per_channel, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=METHODS[method])
        onnx.checker.check_model(str(out))
    except Exception as e:  # onnxruntime.quantization raises plain ValueError/RuntimeError
        msg = str(e).strip().splitlines()[-1][:160] if str(e).strip() else type(e).__name__
        hint = "try --calib-method minmax" if method != "minmax" else "check the calibration faces (--calib-data)"
        raise EmoError(f"int8 quantisation with {method} calibration failed ({msg}); {hint}") from None


def run_onnx(path: Path, x: np.ndarray, batch: int = 256) -> np.ndarray:
    """Raw outputs of an ONNX file for ``x``, in batches, one thread (as the runtime makes sessions)."""
    s = load_session(path, threads=1)
    return np.concatenate([s.run(None, {"input": x[i : i + batch]})[0] for i in range(0, len(x), batch)])


def latency_pair(paths: dict[str, Path], spec: InputSpec, runs: int = 300) -> dict[str, float]:
    """Median single-face latency (ms), 1 thread, the models interleaved in one loop."""
    sess = {k: load_session(p, threads=1) for k, p in paths.items()}
    x = np.random.default_rng(0).standard_normal((1, spec.channels, spec.size, spec.size)).astype(np.float32)
    for s in sess.values():
        for _ in range(30):
            s.run(None, {"input": x})
    times = {k: [] for k in sess}
    for _ in range(runs):
        for k, s in sess.items():
            t = time.perf_counter()
            s.run(None, {"input": x})
            times[k].append(time.perf_counter() - t)
    return {k: float(np.median(v) * 1e3) for k, v in times.items()}


def check_gates(ref_logits: np.ndarray, fp32_logits: np.ndarray, int8_logits: np.ndarray, labels: np.ndarray, g: Gates) -> dict:
    """Compare the three models on the same labelled faces; returns figures and pass/fail per gate."""
    diff = float(np.abs(ref_logits - fp32_logits).max()) if len(ref_logits) else 0.0
    p_ref, p32, p8 = ref_logits.argmax(1), fp32_logits.argmax(1), int8_logits.argmax(1)
    acc = lambda p: float((p == labels).mean())  # noqa: E731
    agree = float((p8 == p32).mean())
    r = {"n": int(len(labels)), "accuracy_torch": acc(p_ref), "accuracy_fp32": acc(p32), "accuracy_int8": acc(p8),
         "max_abs_diff_fp32_vs_torch": diff, "top1_agreement_int8_vs_fp32": agree,
         "accuracy_drop_int8": acc(p32) - acc(p8)}
    min_agreement, max_acc_drop = g.min_agreement, g.max_acc_drop
    if g.one_face and len(labels):  # one face of n is 1/n: on 40 faces, 2.5 points
        one = 1.0 / len(labels) + 1e-9
        min_agreement, max_acc_drop = min(min_agreement, 1.0 - one), max(max_acc_drop, one)
    r["gates"] = {
        "fp32_matches_torch": {"value": diff, "threshold": g.max_abs_diff, "passed": bool(np.isfinite(diff) and diff <= g.max_abs_diff)},
        "int8_agrees_with_fp32": {"value": agree, "threshold": min_agreement, "passed": agree >= min_agreement},
        "int8_accuracy_drop": {"value": r["accuracy_drop_int8"], "threshold": max_acc_drop, "passed": r["accuracy_drop_int8"] <= max_acc_drop},
    }
    return r


def write_ort(final: dict[str, Path]) -> dict[str, str]:
    """Also save ``.ort`` files for onnxruntime minimal builds (basic optimisations only, so
    they stay portable across CPUs)."""
    out = {}
    for k, p in final.items():
        dst = p.with_suffix(".ort")
        so = session_options(threads=1)
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.optimized_model_filepath = str(dst)
        so.add_session_config_entry("session.save_model_format", "ORT")
        ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"])
        out[f"{k}_ort"] = str(dst)
    return out


def format_report(r: dict) -> str:
    b = r["bytes"]
    lat = r["latency_ms_1thread"]
    rows = [
        ("", "PyTorch", "ONNX fp32", "ONNX int8"),
        ("size", f"{b['checkpoint'] / 1024:.0f} KiB", f"{b['fp32'] / 1024:.0f} KiB", f"{b['int8'] / 1024:.0f} KiB"),
        (f"accuracy (n={r['n']})", f"{r['accuracy_torch'] * 100:.2f}%", f"{r['accuracy_fp32'] * 100:.2f}%", f"{r['accuracy_int8'] * 100:.2f}%"),
        ("latency, 1 face, 1 thread", "", f"{lat['fp32']:.3f} ms", f"{lat['int8']:.3f} ms"),
    ]
    lines = ["".join(f"{c:<28}" if i == 0 else f"{c:>14}" for i, c in enumerate(row)) for row in rows]
    lines.append(f"int8/fp32 latency ratio {lat['int8_over_fp32']:.2f}; calibration {r['calibration']['method']} on {r['calibration']['faces']} faces")
    c = r["confidence"]
    how = "fitted on the verification faces" if c["fitted"] else f"not fitted: {c['not_fitted']}" if "not_fitted" in c else "given"
    lines.append(f"confidence: temperature {c['temperature']:g} ({how}); "
                 f"ECE (15 bins) {c['ece_before']:.4f} -> {c['ece_after']:.4f}")
    if "robustness_int8" in r:
        rb = r["robustness_int8"]
        lines.append(f"int8 under degraded faces: mean {rb['mean'] * 100:.2f}%, worst {rb['worst'] * 100:.2f}% ({rb['worst_condition']})")
    for gname, g in r["gates"].items():
        lines.append(f"gate {gname:<24} {'PASS' if g['passed'] else 'FAIL'}  value {g['value']:.6g}  threshold {g['threshold']:.6g}")
    return "\n".join(lines)
