import json

import pytest

from emo.edge_runtime.errors import EmoError
from emo.edge_runtime.metadata import KEY, ModelMetadata, from_props, to_props
from emo.edge_runtime.preprocess import InputSpec


def test_round_trip():
    m = ModelMetadata(arch="emonet", precision="int8", input=InputSpec(size=48, mean=0.5, std=0.25, margin=0.0),
                      metrics={"val_accuracy_int8": 0.7}, checkpoint_sha256="ab" * 32, emo_version="0.1.0")
    back = from_props(to_props(m))
    assert back == m


def test_missing_metadata_is_a_clear_error():
    with pytest.raises(EmoError, match="no emo metadata"):
        from_props({"other": "x"}, "x.onnx")


@pytest.mark.parametrize("patch,msg", [
    ({"labels": ["a", "b"]}, "labels"),
    ({"output": "softmaxish"}, "output"),
    ({"precision": "fp16"}, "precision"),
    ({"format_version": 99}, "format_version"),
])
def test_inconsistent_metadata_is_refused(patch, msg):
    d = json.loads(to_props(ModelMetadata(arch="seed", precision="fp32"))[KEY])
    d.update(patch)
    with pytest.raises(EmoError, match=msg):
        from_props({KEY: json.dumps(d)}, "m.onnx")


def test_garbage_metadata_is_refused():
    with pytest.raises(EmoError, match="unreadable"):
        from_props({KEY: "{not json"}, "m.onnx")
