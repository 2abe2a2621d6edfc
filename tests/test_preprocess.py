import cv2
import numpy as np
import pytest

from emo.edge_runtime.degrade import face_height
from emo.edge_runtime.preprocess import DEFAULT_MARGIN, InputSpec, crop_face, faces_to_tensor, normalize, square_box, to_gray


def test_square_box_grows_by_margin_and_keeps_centre():
    x0, y0, s = square_box((100, 50, 40, 60), 0.25)
    assert s == 90  # max(40, 60) * (1 + 2 * 0.25)
    assert (x0 + s / 2, y0 + s / 2) == (120, 80)


def test_crop_face_pads_at_frame_edges_and_resizes():
    img = np.arange(100 * 100, dtype=np.uint32).reshape(100, 100) % 251
    img = img.astype(np.uint8)
    crop = crop_face(img, (-10, -10, 40, 40), InputSpec(size=48, margin=0.0))
    assert crop.shape == (48, 48) and crop.dtype == np.uint8
    inside = crop_face(img, (0, 0, 48, 48), InputSpec(size=48, margin=0.0))
    assert np.array_equal(inside, img[:48, :48])  # exact crop at the model size is untouched


def test_normalize_matches_spec():
    spec = InputSpec(mean=0.5, std=0.25)
    x = normalize(np.array([[0, 255]], np.uint8).reshape(1, 1, 2).repeat(2, 1), spec)
    assert x.shape == (1, 1, 2, 2) and x.dtype == np.float32
    assert np.allclose(x[0, 0, 0], [-2.0, 2.0])


def test_to_gray_drops_alpha_and_handles_gray():
    bgra = np.zeros((4, 4, 4), np.uint8)
    bgra[..., 3] = 255
    assert to_gray(bgra).shape == (4, 4)
    assert to_gray(np.zeros((4, 4), np.uint8)).shape == (4, 4)


def test_faces_to_tensor_batches_all_faces():
    img = np.random.default_rng(0).integers(0, 255, (200, 300, 3), dtype=np.uint8)
    x = faces_to_tensor(img, [(10, 10, 50, 50), (100, 20, 80, 80), (250, 150, 60, 60)], InputSpec())
    assert x.shape == (3, 1, 48, 48)
    assert faces_to_tensor(img, [], InputSpec()).shape == (0, 1, 48, 48)


def test_default_margin_matches_fer_framing(fer_root):
    """FER2013 images are framed like a Haar box: the runtime's default margin must agree."""
    cas = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    ratios = []
    for f in sorted((fer_root / "val" / "happy").glob("*.jpg"))[:150]:
        big = cv2.resize(cv2.imread(str(f), 0), (192, 192), interpolation=cv2.INTER_CUBIC)
        big = cv2.copyMakeBorder(big, 48, 48, 48, 48, cv2.BORDER_REPLICATE)
        r = cas.detectMultiScale(big, 1.05, 4, minSize=(60, 60))
        if len(r) == 1:
            ratios.append(192 / r[0][2])
    assert len(ratios) > 50
    measured = (np.median(ratios) - 1) / 2
    assert abs(measured - DEFAULT_MARGIN) < 0.05, f"FER framing margin {measured:.3f} vs default {DEFAULT_MARGIN}"


def test_a_small_face_in_a_frame_is_cropped_as_training_degrades_it():
    """A face N px high in the camera frame reaches the model exactly as the trainer's distance
    degradation (and the benchmark's faceN) shows it: INTER_AREA down to N, INTER_LINEAR back up."""
    rng = np.random.default_rng(1)
    face = cv2.GaussianBlur(rng.integers(0, 256, (48, 48), dtype=np.uint8), (0, 0), 2)
    for px in (12, 16, 24, 36):
        frame = np.full((240, 320), 90, np.uint8)
        frame[100 : 100 + px, 150 : 150 + px] = cv2.resize(face, (px, px), interpolation=cv2.INTER_AREA)
        got = crop_face(frame, (150, 100, px, px), InputSpec())
        assert np.array_equal(got, face_height(face, px)), px
