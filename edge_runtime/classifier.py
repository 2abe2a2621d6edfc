"""The emotion classifier: an emo ONNX model in onnxruntime, with its metadata checked."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .errors import EmoError
from .files import check_file, exists, opencv_safe, shown
from .metadata import ModelMetadata, from_props
from .preprocess import normalize

PACKAGE_MODELS = Path(__file__).parent / "models"
DEFAULT_MODEL = PACKAGE_MODELS / "emo_default.int8.onnx"


MODEL_NAMES = ("tiny", "default", "large")  # the ladder: bundled as models/emo_<name>.int8.onnx


def default_model_path() -> Path:
    """The bundled default model (int8), or EMO_MODEL when that is set."""
    env = os.environ.get("EMO_MODEL")
    return resolve_model(env) if env else DEFAULT_MODEL


def bundled_models() -> dict[str, Path]:
    """Name -> file of the models this install carries."""
    return {n: PACKAGE_MODELS / f"emo_{n}.int8.onnx" for n in MODEL_NAMES if (PACKAGE_MODELS / f"emo_{n}.int8.onnx").is_file()}


def resolve_model(model: str | os.PathLike | None) -> Path:
    """``--model``: a name of the ladder (tiny, default, large), a path, or None for the default."""
    if model is None or str(model) == "":
        return default_model_path()
    name = str(model)
    if name in MODEL_NAMES and not exists(name):
        have = bundled_models()
        if name not in have:
            raise EmoError(f"the model '{name}' is not bundled with this emo; bundled: {', '.join(have)} (or give a path)")
        return have[name]
    if not exists(name) and os.sep not in name and "/" not in name and not Path(name).suffix:
        raise EmoError(f"the model '{name}' is neither a bundled name ({', '.join(MODEL_NAMES)}) nor a file; "
                       "see `emo-edge models`, or give the path of an .onnx written by emo-export")
    return Path(model)


def session_options(threads: int = 1, spin: bool = True) -> ort.SessionOptions:
    """Session options for small CPUs: a fixed thread count, optional no-spin for low power."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, int(threads))
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if not spin:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


def load_session(path: str | os.PathLike, threads: int = 1, spin: bool = True) -> ort.InferenceSession:
    p = Path(path)
    if not exists(p):
        raise EmoError(f"model file {shown(p)} does not exist; pass an .onnx written by emo-export (or omit --model for the default)")
    check_file(p, "model file")
    try:  # a name that is not UTF-8 cannot be passed to onnxruntime; its bytes can
        model = str(p) if opencv_safe(p) else p.read_bytes()
        return ort.InferenceSession(model, session_options(threads, spin), providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
        msg = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise EmoError(f"{shown(p)} is not a loadable ONNX model ({msg}); pass an .onnx written by emo-export") from None


def read_metadata(session: ort.InferenceSession, source: str) -> ModelMetadata:
    return from_props(dict(session.get_modelmeta().custom_metadata_map), source)


class Classifier:
    """Emotion scores for face crops.

    ``Classifier(path).predict(batch)`` takes a float32 ``(N, 1, S, S)`` batch made by
    :mod:`emo.edge_runtime.preprocess` and returns probabilities ``(N, 7)``, softened by the
    temperature the model's metadata carries. With ``tta`` each face and its mirror image are
    classified in the same call and their probabilities averaged.
    """

    def __init__(self, model: str | os.PathLike | None = None, threads: int = 1, spin: bool = True, tta: bool = False):
        self.tta = tta
        self.path = resolve_model(model)
        self.session = load_session(self.path, threads, spin)
        self.meta = read_metadata(self.session, shown(self.path))
        self.spec = self.meta.input
        self.labels = self.meta.labels
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        shape = list(inp.shape)
        want = [self.spec.channels, self.spec.size, self.spec.size]
        if len(shape) != 4 or [d if isinstance(d, int) else None for d in shape[1:]] != want:
            raise EmoError(
                f"{shown(self.path)}: input shape {shape} does not match its metadata "
                f"(N x {want[0]} x {want[1]} x {want[2]}); re-export the model with emo-export"
            )
        if isinstance(shape[0], int):
            raise EmoError(f"{shown(self.path)}: batch axis is fixed at {shape[0]}; emo needs a dynamic batch axis, re-export with emo-export")
        out = self.logits(np.zeros((1, want[0], want[1], want[2]), np.float32))  # warm-up: first run allocates
        if out.shape != (1, len(self.labels)):
            raise EmoError(f"{shown(self.path)}: the model outputs {out.shape[-1] if out.ndim else 0} scores per face but its metadata names "
                           f"{len(self.labels)} labels; re-export the model with emo-export")

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Raw model output for a normalised batch (logits or probabilities per the metadata)."""
        s = self.spec
        if not (isinstance(x, np.ndarray) and x.ndim == 4 and x.shape[1:] == (s.channels, s.size, s.size)):
            raise ValueError(f"the classifier takes a float32 batch (N, {s.channels}, {s.size}, {s.size}) made by "
                             f"preprocess.faces_to_tensor; got {getattr(x, 'shape', type(x).__name__)}")
        if len(x) == 0:
            return np.zeros((0, len(self.labels)), np.float32)
        return self.session.run(None, {self.input_name: np.ascontiguousarray(x, np.float32)})[0]

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Probabilities ``(N, 7)`` for a normalised batch (mirror-averaged with ``tta``)."""
        if not self.tta or len(x) == 0:
            return self._probabilities(self.logits(x))
        both = self._probabilities(self.logits(np.concatenate([x, x[:, :, :, ::-1]])))
        return (both[: len(x)] + both[len(x) :]) * np.float32(0.5)

    def _probabilities(self, out: np.ndarray) -> np.ndarray:
        out = out.astype(np.float32)
        if self.meta.output == "logits":
            out = out / np.float32(self.meta.temperature)
            out = out - out.max(axis=1, keepdims=True)
            np.exp(out, out=out)
            out /= out.sum(axis=1, keepdims=True)
        return out

    def predict_crops(self, crops: np.ndarray) -> np.ndarray:
        """Probabilities for uint8 gray crops ``(N, S, S)`` already at the model's size."""
        if not (isinstance(crops, np.ndarray) and crops.dtype == np.uint8):
            raise TypeError(f"predict_crops takes uint8 gray crops (N, {self.spec.size}, {self.spec.size})")
        return self.predict(normalize(crops, self.spec))

    def top_labels(self, crops: np.ndarray, batch: int = 256) -> np.ndarray:
        """The index of the top emotion for each uint8 crop ``(N, S, S)``, ``batch`` crops per call."""
        return np.concatenate([self.predict_crops(crops[i : i + batch]).argmax(1) for i in range(0, len(crops), batch)]
                              or [np.zeros(0, np.int64)])
