"""Golden outputs of the bundled models: any machine (a Raspberry Pi included) checks with plain
pytest that it detects and scores faces as the machine that recorded them did.

``tests/golden/emo_<name>.json`` holds, for each bundled int8 model (by sha256): the Haar boxes
on ``examples/astronaut.png``, and the raw model outputs (logits) for crops of that photo, for
cartoon faces drawn here without random numbers, and, when EMO_SHARED_DATA is set, for the first
FER2013 val image of each class. Rewrite it (after a deliberate change of the model or the
preprocessing) with ``EMO_UPDATE_GOLDEN=1 python -m pytest tests/test_golden.py``.

Tolerances: int8 kernels and image resizing may round differently on other CPUs and library
versions, so logits may move by a couple of the model's output quantisation steps (about 0.03);
boxes by a few pixels. The top emotion must not change where it was clear (margin over 0.2).
"""
from __future__ import annotations

import hashlib
import json
import os

import cv2
import numpy as np
import pytest

from emo.edge_runtime.classifier import Classifier, bundled_models
from emo.edge_runtime.faces import HaarDetector
from emo.edge_runtime.files import atomic_write_text, read_image
from emo.edge_runtime.labels import LABELS
from emo.edge_runtime.preprocess import InputSpec, crop_face, normalize, to_gray

from conftest import FER, REPO, synthetic_face

MODELS = bundled_models()  # name -> file
PHOTO = REPO / "examples" / "astronaut.png"
LOGIT_TOL = 0.08
BOX_TOL = 4  # pixels
CLEAR_MARGIN = 0.2
UPDATE = os.environ.get("EMO_UPDATE_GOLDEN") == "1"


def photo_crops(gray: np.ndarray, box: tuple, spec: InputSpec) -> dict[str, np.ndarray]:
    """The detected face and variants of it: shifted, zoomed out, mirrored, darker."""
    x, y, w, h = box
    crops = {
        "astronaut": crop_face(gray, box, spec),
        "astronaut-shifted": crop_face(gray, (x + w // 10, y - h // 10, w, h), spec),
        "astronaut-wide": crop_face(gray, box, InputSpec(**{**spec.to_dict(), "margin": 0.25})),
    }
    crops["astronaut-mirrored"] = crops["astronaut"][:, ::-1].copy()
    crops["astronaut-dark"] = (crops["astronaut"] // 2).astype(np.uint8)
    return crops


def fer_crops() -> dict[str, np.ndarray]:
    if FER is None or not (FER / "val").is_dir():
        return {}
    return {f"fer-val-{c}": read_image(sorted((FER / "val" / c).glob("*.jpg"))[0], cv2.IMREAD_GRAYSCALE) for c in LABELS}


def measure(model) -> dict:
    clf = Classifier(model)
    gray = to_gray(read_image(PHOTO))
    boxes = HaarDetector(max_side=320).detect(gray)  # the box the goldens were made with
    crops = photo_crops(gray, boxes[0], clf.spec) if boxes else {}
    crops.update({f"cartoon-{c}": synthetic_face(i) for i, c in enumerate(LABELS)})
    crops.update(fer_crops())
    logits = clf.logits(normalize(np.stack(list(crops.values())), clf.spec))
    return {"boxes": [list(b) for b in boxes], "logits": {k: [round(float(v), 6) for v in row] for k, row in zip(crops, logits)}}


@pytest.fixture(scope="module", params=sorted(MODELS))
def name(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def golden(name) -> dict:
    path, model = REPO / "tests" / "golden" / f"emo_{name}.json", MODELS[name]
    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    if UPDATE:
        old = json.loads(path.read_text()) if path.is_file() else {}
        new = {"model": model.name, "model_sha256": sha, **measure(model)}
        new["logits"] = {**{k: v for k, v in old.get("logits", {}).items() if k.startswith("fer-")}, **new["logits"]}
        atomic_write_text(path, _dump(new))
    assert path.is_file(), f"no golden file for the bundled model {name}: write it with EMO_UPDATE_GOLDEN=1 (see the docstring)"
    g = json.loads(path.read_text())
    assert g["model_sha256"] == sha, f"the bundled model {name} changed: rewrite its golden file with EMO_UPDATE_GOLDEN=1 (see the docstring)"
    return g


@pytest.fixture(scope="module")
def measured(name) -> dict:
    return measure(MODELS[name])


def test_golden_boxes(golden, measured):
    assert len(measured["boxes"]) == len(golden["boxes"]) == 1
    assert np.abs(np.array(measured["boxes"]) - np.array(golden["boxes"])).max() <= BOX_TOL


def test_golden_outputs(golden, measured):
    want = {k: v for k, v in golden["logits"].items() if not k.startswith("fer-")}
    assert set(measured["logits"]) >= set(want)
    for name, g in want.items():
        _check(name, np.array(g), np.array(measured["logits"][name]))


def test_golden_outputs_on_fer_faces(golden, measured):
    want = {k: v for k, v in golden["logits"].items() if k.startswith("fer-")}
    if not fer_crops():
        pytest.skip("real data not found: set EMO_SHARED_DATA to check the FER2013 faces too")
    assert len(want) == len(LABELS)
    for name, g in want.items():
        _check(name, np.array(g), np.array(measured["logits"][name]))


def _dump(g: dict) -> str:
    """JSON with one line per face, so a diff of the file reads as a table."""
    rows = [f'  {json.dumps(k)}: {json.dumps(v)}' for k, v in g["logits"].items()]
    head = {k: v for k, v in g.items() if k != "logits"}
    return json.dumps(head)[:-1] + ', "logits": {\n' + ",\n".join(rows) + "\n}}\n"


def _check(name: str, want: np.ndarray, got: np.ndarray) -> None:
    diff = np.abs(want - got).max()
    assert diff <= LOGIT_TOL, f"{name}: logits differ by {diff:.4f} (> {LOGIT_TOL}): {got.round(3)} vs golden {want.round(3)}"
    top2 = np.sort(want)[-2:]
    if top2[1] - top2[0] > CLEAR_MARGIN:
        assert got.argmax() == want.argmax(), f"{name}: top emotion {LABELS[got.argmax()]}, golden {LABELS[want.argmax()]}"
