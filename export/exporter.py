"""emo-export: checkpoint -> fp32 ONNX + static int8 (QDQ) ONNX, verified before it is called done.

Steps, each a function: load the checkpoint; export fp32 with a dynamic batch axis (BN folded
into the convs, constants folded, ORT basic optimisations applied); stamp the metadata contract;
calibrate on real faces and quantise (QDQ, per-channel weights); verify on labelled real faces
(fp32 vs PyTorch max |diff|, int8 vs fp32 top-1 agreement and accuracy drop); and only then move
the files into place. A failed gate keeps the failed file as ``*.FAILED.onnx`` and never
overwrites a good earlier export.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from emo.edge_runtime import __version__
from emo.edge_runtime.classifier import session_options
from emo.edge_runtime.dataset import Split, has_split, load_split
from emo.edge_runtime.errors import EmoError
from emo.edge_runtime.metadata import ModelMetadata, from_props, to_props
from emo.edge_runtime.preprocess import InputSpec, normalize
from emo.train.checkpoint import file_sha256, load_checkpoint, model_from_checkpoint

METHODS = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile}
DEFAULT_OPSET = 17  # onnxruntime >= 1.14 (any current Raspberry Pi wheel) runs opset 17


@dataclass
class Gates:
    max_abs_diff: float = 1e-4  # fp32 ONNX vs PyTorch logits
    min_agreement: float = 0.98  # int8 vs fp32 top-1 agreement
    max_acc_drop: float = 0.01  # int8 accuracy drop vs fp32 (fraction: 0.01 = 1 point)


@dataclass
class ExportOptions:
    out_dir: Optional[Path] = None
    name: Optional[str] = None
    calib_data: Optional[str] = None
    calib_size: int = 500
    calib_method: str = "minmax"  # minmax | entropy | percentile | auto
    per_channel: bool = True
    val_data: Optional[str] = None
    val_size: int = 0  # 0: the whole validation split
    opset: int = DEFAULT_OPSET
    ort_format: bool = False
    seed: int = 0
    crop_margin: Optional[float] = None  # override the checkpoint's crop margin for the runtime
    gates: Gates = field(default_factory=Gates)


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


def _sample(split: Split, n: int, seed: int) -> Split:
    if not n or n >= len(split.labels):
        return split
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(split.labels), n, replace=False))
    return Split(split.images[idx], split.labels[idx], split.report)


def resolve_data(explicit: Optional[str], ck: dict, what: str, flag: str) -> str:
    if explicit:
        return explicit
    src = (ck.get("data") or {}).get("source")
    if not src:
        raise EmoError(f"the checkpoint records no training data, so {what} needs {flag} PATH (a FER2013 folder or CSV)")
    if not Path(src).exists():
        raise EmoError(f"the checkpoint's data {src} is not here; pass {flag} PATH (a FER2013 folder or CSV)")
    return src


def load_real_faces(data: str, split: str, size: int, n: int, seed: int, skip_blank: bool = True) -> Split:
    if split != "train" and not has_split(data, split):
        split = "train"
    try:
        return _sample(load_split(data, split, size, skip_blank=skip_blank), n, seed)
    except EmoError as e:
        raise EmoError(f"cannot use {data} for export: {e}") from None


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


def stamp_metadata(path: Path, meta: ModelMetadata) -> None:
    m = onnx.load(str(path))
    props = {p.key: p.value for p in m.metadata_props}
    props.update(to_props(meta))
    del m.metadata_props[:]
    for k, v in props.items():
        m.metadata_props.add(key=k, value=v)
    m.producer_name, m.producer_version = "emo", __version__
    m.doc_string = f"emo {meta.arch} emotion classifier ({meta.precision}); labels: {', '.join(meta.labels)}"
    onnx.checker.check_model(m)
    onnx.save(m, str(path))


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


def run_onnx(path: Path, x: np.ndarray, threads: int = 1, batch: int = 256) -> np.ndarray:
    s = ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
    return np.concatenate([s.run(None, {"input": x[i : i + batch]})[0] for i in range(0, len(x), batch)])


def latency_pair(paths: dict[str, Path], spec: InputSpec, runs: int = 300) -> dict[str, float]:
    """Median single-face latency (ms), 1 thread, the models interleaved in one loop."""
    sess = {k: ort.InferenceSession(str(p), session_options(1), providers=["CPUExecutionProvider"]) for k, p in paths.items()}
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
    r["gates"] = {
        "fp32_matches_torch": {"value": diff, "threshold": g.max_abs_diff, "passed": bool(np.isfinite(diff) and diff <= g.max_abs_diff)},
        "int8_agrees_with_fp32": {"value": agree, "threshold": g.min_agreement, "passed": agree >= g.min_agreement},
        "int8_accuracy_drop": {"value": r["accuracy_drop_int8"], "threshold": g.max_acc_drop, "passed": r["accuracy_drop_int8"] <= g.max_acc_drop},
    }
    return r


def _writable_dir(d: Path) -> None:
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EmoError(f"cannot create output folder {d}: {e.strerror}; pass --out-dir to a writable folder") from None
    if not os.access(d, os.W_OK):
        raise EmoError(f"output folder {d} is not writable; pass --out-dir to a writable folder")


def export(checkpoint: str | os.PathLike, opts: ExportOptions, log: Callable[[str], None] = print) -> dict:
    """Export and verify; returns the report. Raises EmoError (after writing the report) if a gate fails."""
    ckpt = Path(checkpoint)
    ck = load_checkpoint(ckpt)
    model = model_from_checkpoint(ck)
    bad = [k for k, v in ck["state_dict"].items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise EmoError(f"{ckpt} has NaN or infinite weights ({', '.join(bad[:3])}); the training run diverged or the file is corrupt")
    spec = InputSpec.from_dict(ck["input"])
    if opts.crop_margin is not None:
        spec = replace(spec, margin=opts.crop_margin)
    out_dir = Path(opts.out_dir) if opts.out_dir else ckpt.parent
    name = opts.name or ckpt.stem
    _writable_dir(out_dir)
    if opts.calib_method not in (*METHODS, "auto"):
        raise EmoError(f"unknown calibration method '{opts.calib_method}'; use minmax, entropy, percentile or auto")
    calib_src = resolve_data(opts.calib_data, ck, "calibration", "--calib-data")
    val_src = resolve_data(opts.val_data or opts.calib_data, ck, "verification", "--val-data")
    log(f"loading calibration faces from {calib_src} and validation faces from {val_src}")
    calib = load_real_faces(calib_src, "train", spec.size, opts.calib_size, opts.seed)
    val = load_real_faces(val_src, "val", spec.size, opts.val_size, opts.seed + 1, skip_blank=False)
    x_cal, x_val = normalize(calib.images, spec), normalize(val.images, spec)
    sha = file_sha256(ckpt)
    train_metrics = (ck.get("metrics") or {}).get("best", {})

    final = {"fp32": out_dir / f"{name}.onnx", "int8": out_dir / f"{name}.int8.onnx"}
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".emo-export-") as tmpd:
        tmp = Path(tmpd)
        fp32 = tmp / "fp32.onnx"
        log(f"exporting {ck['arch']} to ONNX (opset {opts.opset}, dynamic batch)")
        torch_to_onnx(model, spec, fp32, opts.opset)
        with torch.no_grad():
            ref = torch.cat([model(torch.from_numpy(x_val[i : i + 512])) for i in range(0, len(x_val), 512)]).numpy()
        out32 = run_onnx(fp32, x_val)

        methods = list(METHODS) if opts.calib_method == "auto" else [opts.calib_method]
        tried = {}
        for m in methods:
            log(f"quantising to int8 (QDQ, {'per-channel' if opts.per_channel else 'per-tensor'} weights, {m} calibration on {len(x_cal)} faces)")
            p = tmp / f"int8-{m}.onnx"
            quantize(fp32, p, x_cal, m, opts.per_channel)
            tried[m] = (p, run_onnx(p, x_val))
        if len(tried) > 1:
            accs = {m: float((o.argmax(1) == val.labels).mean()) for m, (p, o) in tried.items()}
            log("auto calibration: int8 accuracy " + ", ".join(f"{m} {a * 100:.2f}%" for m, a in accs.items()))
            method = max(accs, key=accs.get)
        else:
            method = methods[0]
        int8, out8 = tried[method]
        res = check_gates(ref, out32, out8, val.labels, opts.gates)
        res["calibration"] = {"method": method, "faces": int(len(x_cal)), "data": str(calib_src), "per_channel": opts.per_channel}
        metrics = {"val_accuracy_fp32": round(res["accuracy_fp32"], 4), "val_accuracy_int8": round(res["accuracy_int8"], 4),
                   "val_n": res["n"], "val_data": str(val_src), "train_best": train_metrics}
        base = dict(arch=ck["arch"], input=spec, labels=tuple(ck.get("labels", ())) or None, output="logits", metrics=metrics,
                    checkpoint_sha256=sha, emo_version=__version__,
                    extra={"arch_args": json.dumps(ck["arch_args"]), "opset": opts.opset, "calibration": method})
        base = {k: v for k, v in base.items() if v is not None}
        stamp_metadata(fp32, ModelMetadata(precision="fp32", **base))
        stamp_metadata(int8, ModelMetadata(precision="int8", **base))
        for p in (fp32, int8):  # the metadata must round-trip into the edge runtime
            s = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
            from_props(dict(s.get_modelmeta().custom_metadata_map), str(p))
        lat = latency_pair({"fp32": fp32, "int8": int8}, spec)
        report = {
            "checkpoint": str(ckpt), "checkpoint_sha256": sha, "arch": ck["arch"], "emo_version": __version__,
            "files": {k: str(v) for k, v in final.items()},
            "bytes": {"checkpoint": ckpt.stat().st_size, "fp32": fp32.stat().st_size, "int8": int8.stat().st_size},
            **res,
            "latency_ms_1thread": {**lat, "int8_over_fp32": lat["int8"] / lat["fp32"]},
            "onnxruntime": ort.__version__, "opset": opts.opset,
        }
        passed = all(g["passed"] for g in res["gates"].values())
        report["passed"] = passed
        if passed:
            os.replace(fp32, final["fp32"])
            os.replace(int8, final["int8"])
            if opts.ort_format:
                report["files"].update(write_ort(final))
        else:
            failed = {"fp32": out_dir / f"{name}.FAILED.onnx", "int8": out_dir / f"{name}.int8.FAILED.onnx"}
            os.replace(fp32, failed["fp32"])
            os.replace(int8, failed["int8"])
            report["files"] = {k: str(v) for k, v in failed.items()}
    rp = out_dir / f"{name}.export-report.json" if opts.name else out_dir / "export-report.json"
    tmp_report = rp.with_suffix(".json.tmp")
    tmp_report.write_text(json.dumps(report, indent=2))
    os.replace(tmp_report, rp)
    report["report_path"] = str(rp)
    return report


def write_ort(final: dict[str, Path]) -> dict[str, str]:
    """Also save ``.ort`` files for onnxruntime minimal builds."""
    out = {}
    for k, p in final.items():
        dst = p.with_suffix(".ort")
        so = ort.SessionOptions()
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
    for gname, g in r["gates"].items():
        lines.append(f"gate {gname:<24} {'PASS' if g['passed'] else 'FAIL'}  value {g['value']:.6g}  threshold {g['threshold']:.6g}")
    return "\n".join(lines)
