"""Each page of the Streamlit app, driven with Streamlit's AppTest (no browser).

The app runs in this process against the session's tiny model, the synthetic
sample set and hand-written runs (see ``tests/app/conftest.py``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from histo_common import DISCLAIMER

APP_FILE = str(Path(__file__).resolve().parents[2] / "app" / "streamlit_app.py")
PAGES = ("Analyse images", "Scoring runs", "Evaluation", "Model & training")


@pytest.fixture
def app_env(monkeypatch: pytest.MonkeyPatch, tiny_model, tmp_path: Path) -> Path:
    """Point the app at the tiny model and samples; return the (empty) results folder."""
    results = tmp_path / "results"
    monkeypatch.setenv("HISTO_MODEL_URI", tiny_model.root_uri)
    monkeypatch.setenv("HISTO_SAMPLES_URI", str(tiny_model.sample_dir))
    monkeypatch.setenv("HISTO_RESULTS_URI", str(results))
    return results


def open_app(page: str = PAGES[0]) -> AppTest:
    """Run the app once and switch to ``page``."""
    at = AppTest.from_file(APP_FILE, default_timeout=60)
    at.run()
    if page != PAGES[0]:
        at.sidebar.radio(key="page").set_value(page).run()
    return at


def assert_clean(at: AppTest) -> None:
    """No uncaught exception, and the research-use disclaimer shown."""
    assert not at.exception, [e.value for e in at.exception]
    assert DISCLAIMER in [w.value for w in at.warning]


def texts(elements) -> list[str]:
    return [e.value for e in elements]


def image_captions(at: AppTest) -> list[str]:
    return [caption for image in at.image for caption in image.captions]


# ---------------------------------------------------------------- analyse


def test_random_sample_shows_prediction_and_overlay(app_env: Path, sample_dir: Path) -> None:
    at = open_app()
    assert_clean(at)
    assert "version **1**" in texts(at.caption)[0]

    at.button(key="random_sample").click().run()

    assert_clean(at)
    [prediction] = [t for t in texts(at.info) if t.startswith("Prediction:")]
    assert "threshold 0.500" in prediction
    captions = image_captions(at)
    assert "Original: 48x48 PNG" in captions
    assert "Grad-CAM overlay for the malignant class" in captions
    sample = at.session_state["sample_uri"]
    assert sample.startswith(f"{sample_dir}/")  # picked from the configured sample set
    assert f"its folder says: {Path(sample).parent.name}" in " ".join(texts(at.caption))

    at.slider(key="opacity_analyse").set_value(0.9).run()
    assert_clean(at)
    assert at.session_state["sample_uri"] == sample  # the sample stays while tuning the overlay
    assert "Grad-CAM overlay for the malignant class" in image_captions(at)


def test_uploads_are_scored_and_a_bad_one_gets_a_clear_message(
    app_env: Path, sample_dir: Path
) -> None:
    good = sorted((sample_dir / "malignant").glob("*.png"))[0]
    at = open_app()

    at.file_uploader(key="uploads").set_value(
        [
            (good.name, good.read_bytes(), "image/png"),
            ("scan.png", b"this is not a picture", "image/png"),
            ("empty.jpg", b"", "image/jpeg"),
            (good.name, good.read_bytes(), "image/png"),  # the same name twice is fine
        ]
    ).run()

    assert_clean(at)
    errors = texts(at.error)
    assert errors == [
        "scan.png: not an image: content starts with b'this is '",
        "empty.jpg: empty file (0 bytes)",
    ]
    assert len([t for t in texts(at.info) if t.startswith("Prediction:")]) == 2
    assert "Grad-CAM overlay for the malignant class" in image_captions(at)


def test_a_missing_model_is_a_message_not_a_traceback(
    app_env: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HISTO_MODEL_URI", str(tmp_path / "no-models" / "histo-cnn"))

    for page in ("Analyse images", "Model & training"):
        at = open_app(page)
        assert_clean(at)
        assert any("no model versions found under" in e for e in texts(at.error))


def test_an_empty_sample_folder_is_a_warning(app_env: Path, tmp_path: Path) -> None:
    at = open_app()
    at.text_input(key="sample_folder").set_value(str(tmp_path / "empty")).run()

    at.button(key="random_sample").click().run()

    assert_clean(at)
    assert f"No images found under {tmp_path / 'empty'}." in texts(at.warning)


def test_random_sample_from_a_bucket_folder(
    app_env: Path, gcs_bucket: str, sample_dir: Path
) -> None:
    from histo_common import storage

    chosen = sorted((sample_dir / "benign").glob("*.png"))[:2]
    for path in chosen:
        storage.write_bytes(f"{gcs_bucket}/patches/benign/{path.name}", path.read_bytes())
    at = open_app()
    at.text_input(key="sample_folder").set_value(f"{gcs_bucket}/patches").run()

    at.button(key="random_sample").click().run()

    assert_clean(at)
    assert at.session_state["sample_uri"] in {
        f"{gcs_bucket}/patches/benign/{p.name}" for p in chosen
    }
    assert any(t.startswith("Prediction:") for t in texts(at.info))
    assert "Grad-CAM overlay for the malignant class" in image_captions(at)


# ----------------------------------------------------------- scoring runs


def test_scoring_run_table_filters_and_opens_an_image(
    app_env: Path, monkeypatch: pytest.MonkeyPatch, scoring_run
) -> None:
    monkeypatch.setenv("HISTO_RESULTS_URI", str(scoring_run.root))
    run_uri = str(scoring_run.run)
    at = open_app("Scoring runs")
    assert_clean(at)

    table = at.dataframe(key="results_table").value
    assert table["probability"].tolist() == sorted(scoring_run.probabilities, reverse=True)
    metrics = {m.label: m.value for m in at.metric}
    assert (metrics["Images scored"], metrics["Errors"]) == ("6", "2")
    assert any("1 line(s)" in w for w in texts(at.warning))
    [errors] = [d.value for d in at.dataframe if "reason" in d.value.columns]
    assert errors["stage"].tolist() == ["check", "check"]

    at.multiselect(key=f"filter_labels:{run_uri}").set_value(["benign"]).run()
    at.toggle(key=f"sort_descending:{run_uri}").set_value(False).run()
    benign = at.dataframe(key="results_table").value
    assert benign["probability"].tolist() == [0.05, 0.31]

    # The lowest benign row has no saved overlay: the model computes it.
    at.session_state["results_table"] = {"selection": {"rows": [0], "columns": []}}
    at.run()
    assert_clean(at)
    assert "Grad-CAM overlay for the malignant class" in image_captions(at)
    assert any(t.startswith("Prediction: benign (p(malignant) = 0.050") for t in texts(at.info))


def test_a_saved_overlay_is_shown_for_its_row(
    app_env: Path, monkeypatch: pytest.MonkeyPatch, scoring_run
) -> None:
    monkeypatch.setenv("HISTO_RESULTS_URI", str(scoring_run.root))
    at = open_app("Scoring runs")

    at.session_state["results_table"] = {"selection": {"rows": [0], "columns": []}}
    at.run()

    assert_clean(at)
    captions = image_captions(at)
    assert "Original" in captions
    assert any(c.startswith("Grad-CAM saved by the run: ") for c in captions)
    assert Path(scoring_run.saved_gradcam_for).name in " ".join(texts(at.markdown))


def test_no_runs_says_where_it_looked(app_env: Path) -> None:
    for page in ("Scoring runs", "Evaluation"):
        at = open_app(page)
        assert_clean(at)
        assert any(str(app_env) in t for t in texts(at.info))


# ------------------------------------------------------------- evaluation


def test_evaluation_page_shows_metrics_intervals_and_plots(
    app_env: Path, monkeypatch: pytest.MonkeyPatch, evaluation_run: Path
) -> None:
    monkeypatch.setenv("HISTO_RESULTS_URI", str(evaluation_run.parent))
    at = open_app("Evaluation")

    assert_clean(at)
    tables = [d.value for d in at.dataframe]
    metrics = next(t for t in tables if "ci_low" in t.columns).set_index("metric")
    document = json.loads((evaluation_run / "metrics.json").read_text())
    expected = document["image_level"]["roc_auc"]["ci_high"]
    assert metrics.loc["roc_auc", "ci_high"] == pytest.approx(expected)
    assert any("predicted benign" in t.columns for t in tables)
    assert sorted(image_captions(at)) == ["confusion matrix", "roc"]
    assert any("histogram" in c and "does not exist" in c for c in texts(at.caption))
    assert "Download the full report (report.html)" in [b.label for b in at.get("download_button")]


# -------------------------------------------------------- model & training


def test_model_page_shows_metadata_history_and_architecture(
    app_env: Path, history_csv: Path
) -> None:
    at = open_app("Model & training")
    assert_clean(at)
    metrics = {m.label: m.value for m in at.metric}
    assert (metrics["Model"], metrics["Version"], metrics["Threshold"]) == (
        "histo-cnn",
        "1",
        "0.500",
    )
    assert any("names no training run" in t for t in texts(at.info))

    at.text_input(key="history_uri").set_value(str(history_csv)).run()
    assert_clean(at)
    titles = texts(at.markdown)
    assert {"**loss**", "**auc**", "**learning_rate**"} <= set(titles)
    assert len(at.get("vega_lite_chart")) == 3

    at.toggle(key="show_summary").set_value(True).run()
    assert_clean(at)
    assert "Total params" in at.code[0].value


def test_a_missing_history_file_is_reported(app_env: Path, tmp_path: Path) -> None:
    at = open_app("Model & training")

    at.text_input(key="history_uri").set_value(str(tmp_path / "nope" / "history.csv")).run()

    assert_clean(at)
    assert f"No training history at {tmp_path / 'nope' / 'history.csv'}." in texts(at.info)


# ------------------------------------------------------------------ frame


def test_disclaimer_on_every_page(app_env: Path) -> None:
    at = open_app()
    for page in PAGES:
        at.sidebar.radio(key="page").set_value(page).run()
        assert_clean(at)


def test_an_invalid_location_in_the_sidebar_falls_back_with_a_message(app_env: Path) -> None:
    at = open_app("Scoring runs")

    at.sidebar.text_input(key="setting_results_uri").set_value("gs://Not A Bucket/x").run()

    assert_clean(at)
    assert any("results URI 'gs://Not A Bucket/x' is not a valid URI" in e for e in texts(at.error))
    assert any(str(app_env) in t for t in texts(at.info))  # still looking in the default


def _page_that_fails() -> None:
    from app.config import AppConfig
    from app.views import guarded

    def broken(config: AppConfig) -> None:
        raise RuntimeError("the disk caught fire\nTraceback (most recent call last): ...")

    guarded(broken, AppConfig())


def test_an_unexpected_error_is_one_sentence_not_a_traceback() -> None:
    at = AppTest.from_function(_page_that_fails, default_timeout=30).run()

    assert not at.exception
    assert texts(at.error) == [
        "This page could not be shown: RuntimeError: the disk caught fire. "
        "The server log has the details."
    ]
