"""API of covidct serve on a phantom-trained run: model description, slice and volume predictions."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from serve_helpers import THRESHOLD, dicom_bytes, phantom_slice, phantom_volume

pytestmark = pytest.mark.filterwarnings("ignore::covidct.explain.focus.LungFocusWarning")


def test_model_description_labels_every_score(client, serve_run):
    info = client.get("/api/model").json()
    assert info["run"] == serve_run.name and info["model"] == "small_cnn"
    assert info["classes"] == ["COV", "NonCOV"]
    assert info["decision"] == {"threshold": THRESHOLD, "positive_class": "COV",
                                "source": "the evaluation's threshold (metrics_test.json)"}
    kinds = {entry["file"]: entry["kind"] for entry in info["scores"]}
    assert kinds == {"metrics_test.json": "internal test", "metrics_external-phantom-copy.json": "external test",
                     "metrics_val.json": "validation (used to select the checkpoint)"}
    assert [entry["kind"] for entry in info["scores"]][:2] == ["internal test", "external test"]
    assert info["training_images"] == 180 and info["dataset"] == "phantom"
    assert "not a diagnostic device" in info["disclaimer"]
    assert client.get("/healthz").json() == {"status": "ok", "run": serve_run.name, "busy": 0, "capacity": 9}


def _decode(uri: str) -> np.ndarray:
    import base64

    import cv2

    assert uri.startswith("data:image/png;base64,")
    return cv2.imdecode(np.frombuffer(base64.b64decode(uri.split(",", 1)[1]), np.uint8), cv2.IMREAD_COLOR)


def test_slice_prediction_matches_the_model(client, served, cov_png, upload_tmp):
    from covidct.data.io import CTImage
    from covidct.evaluate.metrics import logits_to_probs
    from covidct.explain.focus import lung_focus_score
    from covidct.explain.gradcam import compute_cams
    from covidct.preprocess.stages import get_stage

    response = client.post("/api/predict", files={"file": ("../../etc/passwd.png", cov_png, "image/png")})
    assert response.status_code == 200, response.text
    result = response.json()
    # Independently: the run's stage on the decoded PNG, the model, Grad-CAM of the decided class.
    import cv2

    pixels = cv2.imdecode(np.frombuffer(cov_png, np.uint8), cv2.IMREAD_UNCHANGED).astype(np.float32)
    output = get_stage("original")(CTImage(pixels, "display"), 48)[0]
    sample = output.image[None, ..., None] if output.image.ndim == 2 else output.image[None]
    cams = compute_cams(served.model, sample.astype(np.float32), class_index=None)
    probs = logits_to_probs(cams.logits)[0]
    assert result["probabilities"]["COV"] == pytest.approx(probs[0], abs=1e-5)
    assert sum(result["probabilities"].values()) == pytest.approx(1.0)
    assert result["predicted_class"] == ("COV" if probs[0] >= THRESHOLD else "NonCOV")
    assert result["kind"] == "slice" and result["upload"]["type"] == "png"
    assert result["upload"]["bytes"] == len(cov_png)
    expected_focus = lung_focus_score(cams.heatmaps[0], output.mask)
    if result["gradcam"]["class"] == ["COV", "NonCOV"][int(cams.class_index[0])]:
        assert result["lung_focus"]["score"] == pytest.approx(expected_focus, abs=1e-6)
    assert result["lung_focus"]["warning"] == (result["lung_focus"]["score"] < result["lung_focus"]["threshold"])
    for name in ("input", "gradcam", "lung_mask"):
        assert _decode(result["images"][name]).shape == (48, 48, 3)
    assert result["ood"]["available"] and not result["ood"]["warning"]
    assert "not a diagnostic device" in result["disclaimer"]
    assert response.headers["cache-control"] == "no-store"
    assert list(upload_tmp.iterdir()) == []  # nothing of the upload is left


def test_a_uniform_image_is_flagged_out_of_distribution(client):
    import cv2

    ok, data = cv2.imencode(".png", np.full((64, 64), 255, np.uint8))
    result = client.post("/api/predict", files={"file": ("white.png", data.tobytes())}).json()
    assert result["ood"]["warning"] and result["ood"]["max_abs_z"] > result["ood"]["limit"]


def test_dicom_slice_and_zipped_series(client, upload_tmp):
    slice_hu = phantom_slice("COV", size=64)
    single = client.post("/api/predict", files={"file": ("x.bin", dicom_bytes(slice_hu))})
    assert single.status_code == 200, single.text
    assert single.json()["kind"] == "slice" and single.json()["unit"] == "HU"
    volume = phantom_volume()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        for k, plane in enumerate(volume):
            bundle.writestr(f"../../evil/{k}.dcm", dicom_bytes(plane, position_z=2.0 * k))
        bundle.writestr("/abs/readme.txt", b"not dicom")
    response = client.post("/api/predict", files={"file": ("series.zip", buffer.getvalue())})
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["kind"] == "volume" and result["shape"] == [6, 64, 64]
    assert list(upload_tmp.iterdir()) == []
    assert not (upload_tmp.parent / "evil").exists()


def test_nifti_volume_curve_patient_score_and_top_slices(client, served):
    import gzip
    import io as _io

    import nibabel as nib

    volume = phantom_volume()  # (D, H, W): NIfTI axes are (x, y, z) = (W flipped, H flipped, D)
    data = np.transpose(volume, (2, 1, 0))[::-1, ::-1, :].astype(np.int16)
    image = nib.Nifti1Image(np.ascontiguousarray(data), np.eye(4))
    raw = _io.BytesIO()
    raw.write(image.to_bytes())
    response = client.post("/api/predict", files={"file": ("scan.nii.gz", gzip.compress(raw.getvalue()))})
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["kind"] == "volume" and result["upload"]["type"] == "nifti-gz"
    curve = result["slice_curve"]
    probs = np.stack([curve["probabilities"][c] for c in ("COV", "NonCOV")], axis=1)
    assert len(curve["slice_index"]) == result["slices_scored"] == len(probs) >= 1
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    assert result["patient"]["aggregation"] == served.aggregation == "mean"
    assert result["patient"]["scores"]["COV"] == pytest.approx(probs[:, 0].mean())
    assert result["predicted_class"] == ("COV" if probs[:, 0].mean() >= THRESHOLD else "NonCOV")
    top = result["top_slices"]
    assert 1 <= len(top) <= 3
    ranked = sorted(zip(probs[:, 0], curve["slice_index"]), key=lambda t: -t[0])
    assert top[0]["probabilities"]["COV"] == pytest.approx(ranked[0][0], abs=1e-6)
    assert _decode(top[0]["images"]["gradcam"]).shape == (48, 48, 3)
