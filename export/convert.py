"""The ONNX steps of an export: PyTorch to fp32 ONNX (:func:`torch_to_onnx`), static int8 QDQ
quantisation calibrated on real faces (:func:`quantize`, fed by :class:`CalibReader`), running a
file on faces (:func:`run_onnx`), timing two files side by side (:func:`latency_pair`), and the
``.ort`` files of minimal builds (:func:`write_ort`)."""
from __future__ import annotations

import contextlib
import io
import os
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from emo.edge_runtime.classifier import load_session, session_options
from emo.edge_runtime.errors import EmoError
from emo.edge_runtime.preprocess import InputSpec

from .options import CALIB_METHODS

METHODS = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile}
assert tuple(METHODS) == CALIB_METHODS
FLOAT_SCOPE = "/gate/"  # a gated pair's gate (emo.train.gated) stays in float: it routes faces on small differences


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
    """Static QDQ quantisation, but for nodes under ``FLOAT_SCOPE``. Calibration batches all have
    one size (the histogram-based calibrators cannot stack a smaller last batch)."""
    batch = min(batch, len(calib))
    calib = calib[: len(calib) // batch * batch]
    floating = [n.name for n in onnx.load(str(fp32)).graph.node if n.name.startswith(FLOAT_SCOPE)]
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # its calibrators print progress
            warnings.simplefilter("ignore")
            quantize_static(str(fp32), str(out), CalibReader(calib, "input", batch), quant_format=QuantFormat.QDQ,
                            per_channel=per_channel, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=METHODS[method], nodes_to_exclude=floating)
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
