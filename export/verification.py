"""What an export is judged by, on labelled verification faces: the gates (:func:`check_gates`:
fp32 against PyTorch, int8 against fp32), the confidence temperature and its calibration error
(:func:`calibrate_confidence`), accuracy under degraded faces (:func:`robustness`), and the
report's table (:func:`format_report`). Pure functions of the figures, except robustness, which
runs the int8 file."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from emo.edge_runtime.dataset import Split
from emo.edge_runtime.degrade import CONDITIONS, degrade_images, summarize
from emo.edge_runtime.metrics import expected_calibration_error, fit_temperature, softmax
from emo.edge_runtime.preprocess import InputSpec, normalize

from .convert import run_onnx
from .options import Gates


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


MIN_TEMPERATURE_FACES = 50  # fewer verification faces than this give a temperature by chance


def calibrate_confidence(logits: np.ndarray, labels: np.ndarray, temperature: Optional[float],
                         spoiled: Optional[np.ndarray] = None) -> dict:
    """The temperature the runtime divides the logits by (``temperature``, or fitted on these
    labelled faces), with the expected calibration error before (T = 1) and after.

    ``spoiled``: the logits of a spoiled copy of each face (same labels). A camera's faces are
    seldom clean, so the temperature is then fitted on both; the ECE is reported on each.
    A fit that the faces cannot support (too few, or every one right, where sharpening without
    end always looks better) keeps T = 1 and says why."""
    given = spoiled is not None and len(spoiled) > 0
    both = np.concatenate([logits, spoiled]) if given else logits
    both_labels = np.concatenate([labels, labels]) if given else labels
    t, why = (float(temperature), "") if temperature is not None else (1.0, unfit_reason(both, both_labels, len(labels)))
    if temperature is None and not why:
        t = fit_temperature(both, both_labels)
    ece = lambda z, tt: round(expected_calibration_error(softmax(z, tt), labels), 4)  # noqa: E731
    out = {"temperature": round(t, 4), "fitted": temperature is None and not why, "ece_before": ece(logits, 1.0),
           "ece_after": ece(logits, t)}
    if given:
        out.update(spoiled_faces=True, ece_spoiled_before=ece(spoiled, 1.0), ece_spoiled_after=ece(spoiled, t))
    if why:
        out["not_fitted"] = why
    return out


def unfit_reason(logits: np.ndarray, labels: np.ndarray, faces: Optional[int] = None) -> str:
    """Why no temperature should be fitted on these faces ('' when one can be); ``faces``: how
    many distinct faces they are (spoiled copies add none)."""
    faces = len(labels) if faces is None else faces
    if faces < MIN_TEMPERATURE_FACES:
        return f"only {faces} verification faces (a temperature needs {MIN_TEMPERATURE_FACES})"
    if bool((np.asarray(logits).argmax(1) == np.asarray(labels)).all()):
        return "every verification face is right, so a sharper softmax always fits better: no temperature is best"
    return ""


def robustness(int8: Path, val: Split, spec: InputSpec) -> dict:
    """int8 accuracy on the verification faces under each of the benchmark's ten conditions."""
    acc = {name: float((run_onnx(int8, normalize(degrade_images(val.images, name), spec)).argmax(1) == val.labels).mean())
           for name in CONDITIONS}
    return {"accuracy": {k: round(v, 4) for k, v in acc.items()}, **{k: (round(v, 4) if isinstance(v, float) else v)
                                                                    for k, v in summarize(acc, CONDITIONS).items()}}


def confidence_line(c: dict) -> str:
    """One line on the temperature: how it was chosen, and the ECE before and after."""
    spoiled = c.get("spoiled_faces")
    how = (f"fitted on the verification faces{' and a spoiled copy of each' if spoiled else ''}" if c["fitted"] else
           f"not fitted: {c['not_fitted']}" if "not_fitted" in c else "given")
    ece = f"{'clean ' if spoiled else ''}{c['ece_before']:.4f} -> {c['ece_after']:.4f}"
    if spoiled:
        ece += f", spoiled {c['ece_spoiled_before']:.4f} -> {c['ece_spoiled_after']:.4f}"
    return f"temperature {c['temperature']:g} ({how}); ECE (15 bins) {ece}"


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
    lines.append(f"confidence: {confidence_line(r['confidence'])}")
    if "robustness_int8" in r:
        rb = r["robustness_int8"]
        lines.append(f"int8 under degraded faces: mean {rb['mean'] * 100:.2f}%, worst {rb['worst'] * 100:.2f}% ({rb['worst_condition']})")
    for gname, g in r["gates"].items():
        lines.append(f"gate {gname:<24} {'PASS' if g['passed'] else 'FAIL'}  value {g['value']:.6g}  threshold {g['threshold']:.6g}")
    return "\n".join(lines)
