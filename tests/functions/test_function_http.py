"""predict_http in process: the upload page, JSON predictions, overlays and bad uploads."""

from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image

from histo_common import DISCLAIMER


@pytest.fixture
def http_client(make_client, tiny_model):
    return make_client(tiny_model.root_uri, target="predict_http")


def test_upload_page_has_a_form_and_the_disclaimer(http_client):
    response = http_client.get("/")

    assert response.status_code == 200
    assert response.mimetype == "text/html"
    page = response.get_data(as_text=True)
    assert '<input type="file"' in page
    assert "predict?gradcam=base64" in page
    assert "Research use only" in page
    assert "http://" not in page and "https://" not in page  # no external assets


def test_multipart_upload_returns_the_prediction_json(
    http_client, malignant_png, loaded_tiny_model
):
    response = http_client.post(
        "/predict",
        data={"file": (io.BytesIO(malignant_png), "patch.png")},
        content_type="multipart/form-data",
    )

    assert response.status_code == 200
    doc = response.get_json()
    expected = loaded_tiny_model.predict([malignant_png])[0]
    assert doc["probability"] == pytest.approx(expected.probability, abs=1e-5)
    assert doc["label"] == expected.label
    assert doc["uri"] == "upload:patch.png"
    assert (doc["model_name"], doc["model_version"], doc["image_format"]) == ("histo-cnn", 1, "PNG")
    assert doc["disclaimer"] == DISCLAIMER
    assert "gradcam_png_base64" not in doc


@pytest.mark.parametrize(("query", "headers"), [("?gradcam=1", {}), ("", {"Accept": "image/png"})])
def test_raw_body_with_gradcam_request_returns_the_overlay_png(
    http_client, benign_png, query, headers
):
    response = http_client.post(f"/predict{query}", data=benign_png, headers=headers)

    assert response.status_code == 200
    assert response.mimetype == "image/png"
    assert response.headers["X-Prediction-Label"] in ("benign", "malignant")
    overlay = Image.open(io.BytesIO(response.data))
    assert overlay.width > 256


def test_base64_overlay_rides_in_the_json(http_client, benign_png):
    response = http_client.post("/?gradcam=base64", data=benign_png)

    assert response.status_code == 200
    png = base64.b64decode(response.get_json()["gradcam_png_base64"])
    assert Image.open(io.BytesIO(png)).format == "PNG"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"", "empty file"),
        (b"GIF89a but not really", "corrupt or truncated GIF"),
        (b"just text", "not an image"),
    ],
)
def test_bad_uploads_are_400_with_a_reason_not_a_traceback(http_client, body, fragment):
    response = http_client.post("/predict?name=scan.png", data=body)

    assert response.status_code == 400
    doc = json.loads(response.data)
    assert doc["error"].startswith("scan.png: ")
    assert fragment in doc["error"]
    assert "Traceback" not in response.get_data(as_text=True)


def test_requests_outside_the_routes_are_refused_in_json(http_client, benign_png):
    assert http_client.get("/predict").status_code == 405
    assert http_client.get("/nowhere").status_code == 404
    bad_mode = http_client.post("/predict?gradcam=svg", data=benign_png)
    assert bad_mode.status_code == 400
    assert "gradcam" in bad_mode.get_json()["error"]
    wrong_field = http_client.post(
        "/predict",
        data={"image": (io.BytesIO(benign_png), "a.png")},
        content_type="multipart/form-data",
    )
    assert wrong_field.status_code == 400
    assert "'file'" in wrong_field.get_json()["error"]


def test_oversized_upload_is_refused_before_it_is_read(make_client, tiny_model, benign_png):
    client = make_client(tiny_model.root_uri, target="predict_http", MAX_IMAGE_BYTES=10)

    response = client.post("/predict", data=benign_png + b"\0" * 70_000)

    assert response.status_code == 400
    assert "over the limit of 10" in response.get_json()["error"]


def test_missing_model_is_a_503_naming_the_uri(make_client, tmp_path, benign_png):
    missing = str(tmp_path / "models" / "histo-cnn")
    client = make_client(missing, target="predict_http")

    response = client.post("/predict", data=benign_png)

    assert response.status_code == 503
    assert missing in response.get_json()["error"]
