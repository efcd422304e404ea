"""The app's pages: Streamlit drawing on top of ``app.data`` and ``app.scoring``.

Each page is a function of the session's :class:`~app.config.AppConfig`; the
entry point (``app/streamlit_app.py``) calls :func:`main`, which draws the
sidebar (page choice and data locations), the research-use disclaimer and the
chosen page inside :func:`guarded`, so an error becomes a clear message on the
page and never a traceback. The model is loaded once per version and cached
(``st.cache_resource``); listings and files are cached for a short time.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import pandas as pd
import streamlit as st

from app import data, scoring
from app.config import AppConfig, ConfigError, config_from_env
from histo_common import DISCLAIMER, overlay, storage
from histo_common.errors import one_line
from histo_common.labels import label_from_folder
from histo_common.results import Prediction
from model_export import contract
from model_export.loader import LoadedModel, ModelLoadError

logger = logging.getLogger(__name__)

LISTING_TTL_S = 30  # runs appear while the app is open; look again this often
MODEL_TTL_S = 60  # how soon a newly exported version replaces the one in use
DEFAULT_OPACITY = 0.45
# Colours a run's rows without loading a model; the contract's positive class.
RUN_POSITIVE_CLASS = contract.DEFAULT_POSITIVE_CLASS
SLIDE_FIELDS_SHOWN = (
    "label",
    "probability",
    "threshold",
    "top_k",
    "top_k_mean",
    "max_probability",
    "positive_fraction",
    "tiles_scored",
    "tissue_tiles",
    "grid_tiles",
    "image_width",
    "image_height",
    "scale",
    "scale_assumed",
)
TILES_SHOWN = 50  # tile rows listed for one slide, most suspicious first

Page = Callable[[AppConfig], None]


# ------------------------------------------------------------------- caching


@st.cache_data(ttl=MODEL_TTL_S, show_spinner=False)
def _resolve_version(model_uri: str) -> str:
    from model_export.identity import resolve_version

    return resolve_version(model_uri)[0]


@st.cache_resource(show_spinner="Loading the model…", max_entries=4)
def _load_version(version_uri: str) -> LoadedModel:
    from model_export.loader import load_model

    return load_model(version_uri)


def get_model(model_uri: str) -> LoadedModel:
    """The model at ``model_uri`` (a root: its latest version), loaded once per version."""
    return _load_version(_resolve_version(model_uri))


@st.cache_data(max_entries=256, show_spinner="Scoring…")
def _score(version_uri: str, items: tuple[tuple[str, bytes], ...]) -> list[scoring.Outcome]:
    return scoring.score_images(_load_version(version_uri), items)


@st.cache_data(ttl=LISTING_TTL_S, show_spinner=False)
def _list_runs(root: str) -> dict[str, list[str]]:
    return data.list_runs(root)


@st.cache_data(ttl=LISTING_TTL_S, show_spinner=False)
def _list_images(folder: str) -> list[str]:
    return data.list_images(folder)


@st.cache_data(ttl=LISTING_TTL_S, show_spinner="Reading the run…")
def _load_scoring_run(run_uri: str) -> data.ScoringRun:
    return data.load_scoring_run(run_uri)


@st.cache_data(ttl=LISTING_TTL_S, show_spinner="Reading the tile rows…")
def _load_tiles(run_uri: str, input_uri: str) -> pd.DataFrame:
    return data.load_tiles(run_uri, input_uri)


@st.cache_data(ttl=LISTING_TTL_S, show_spinner=False)
def _load_evaluation(run_uri: str) -> data.EvaluationReport:
    return data.load_evaluation(run_uri)


@st.cache_data(ttl=LISTING_TTL_S, show_spinner=False)
def _load_history(uri: str) -> pd.DataFrame:
    return data.load_history(uri)


@st.cache_data(show_spinner="Loading the Keras model…")
def _architecture_summary(version_uri: str) -> str:
    lines: list[str] = []
    _load_version(version_uri).keras_model().summary(
        expand_nested=True, print_fn=lambda text, **_kwargs: lines.append(text)
    )
    return "\n".join(lines)


# ------------------------------------------------------------- shared pieces


def guarded(page: Page, config: AppConfig) -> None:
    """Draw ``page``; turn any error into a clear message instead of a traceback."""
    try:
        page(config)
    except (ModelLoadError, ConfigError, data.DataError, storage.StorageError) as exc:
        st.error(str(exc))
    except Exception as exc:  # the last line of defence: never a traceback on the page
        logger.exception("Page %s failed", getattr(page, "__name__", page))
        st.error(f"This page could not be shown: {one_line(exc)}. The server log has the details.")


def _synced_text_input(label: str, *, key: str, default: str, help_text: str = "") -> str:
    """A text input that starts at ``default`` and follows it when the default changes."""
    marker = f"_{key}_default"
    if st.session_state.get(marker) != default:
        st.session_state[marker] = default
        st.session_state[key] = default
    return st.text_input(label, key=key, help=help_text or None).strip()


def _model_caption(model: LoadedModel) -> str:
    meta = model.metadata
    return (
        f"Model **{model.name}** version **{model.version}** ({meta.architecture}), "
        f"threshold {model.threshold:.3f} ({meta.threshold_method}), from `{model.uri}`"
    )


def _show_prediction(prediction: Prediction, positive_class: str) -> None:
    # st.info for both labels: red "error" boxes are kept for things that went wrong.
    st.info(scoring.prediction_text(prediction, positive_class))


def show_outcomes(
    outcomes: list[scoring.Outcome],
    opacity: float,
    positive_class: str,
    class_names: list[str],
    *,
    section: str,
) -> None:
    """Draw each scored image (original beside overlay, prediction) or its error.

    ``section`` keeps widget keys apart when two places on a page show images.
    """
    for index, outcome in enumerate(outcomes):
        if isinstance(outcome, scoring.FailedImage):
            st.error(f"{storage.basename(outcome.name)}: {outcome.reason}")
            continue
        if isinstance(outcome, scoring.ScoredSlide):
            show_scored_slide(outcome, opacity, section=f"{section}:{index}")
            continue
        st.markdown(f"#### {storage.basename(outcome.name)}")
        truth = label_from_folder(outcome.name, class_names)
        if truth:
            st.caption(f"`{outcome.name}` (its folder says: {truth})")
        _show_prediction(outcome.prediction, positive_class)
        info = outcome.info
        png = scoring.overlay_png(outcome, opacity)
        left, right = st.columns(2)
        left.image(
            overlay.upscale_for_display(outcome.image),
            caption=f"Original: {info.width}x{info.height} {info.format}",
        )
        right.image(png, caption=f"Grad-CAM overlay for the {positive_class} class")
        stem = storage.basename(outcome.name).rsplit(".", 1)[0]
        st.download_button(
            "Download the overlay",
            png,
            file_name=f"{stem}.gradcam.png",
            mime="image/png",
            key=f"download:{section}:{index}",
            on_click="ignore",
        )


def slide_fields_table(row: dict[str, Any]) -> pd.DataFrame:
    """A tiled input's slide fields as a two-column table (field, value)."""
    return pd.DataFrame(
        {
            "field": list(SLIDE_FIELDS_SHOWN),
            "value": [_field_text(row.get(name)) for name in SLIDE_FIELDS_SHOWN],
        }
    )


def _field_text(value: object) -> str:
    """A field as a person reads it: counts read back from a table as floats show as counts."""
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return ""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return str(value)


def show_scored_slide(slide: scoring.ScoredSlide, opacity: float, *, section: str) -> None:
    """A tiled upload: verdict, heatmap over its thumbnail, slide fields, top tiles' Grad-CAM."""
    name = storage.basename(slide.name)
    st.markdown(f"#### {name}")
    st.info(scoring.slide_text(slide.row, slide.positive_class))
    for warning in slide.warnings:
        st.warning(warning)
    left, right = st.columns([3, 2])
    left.image(
        slide.heatmap_png,
        caption=f"Tile probabilities over the thumbnail ({slide.vendor}); scale: {slide.row.scale}",
    )
    right.dataframe(
        slide_fields_table(slide.row.to_dict()), hide_index=True, key=f"slide_fields:{section}"
    )
    stem = name.rsplit(".", 1)[0]
    right.download_button(
        "Download the heatmap",
        slide.heatmap_png,
        file_name=f"{stem}.heatmap.png",
        mime="image/png",
        key=f"download_heatmap:{section}",
        on_click="ignore",
    )
    if not slide.top_tiles:
        st.caption("No tissue tiles were scored, so there is no Grad-CAM to show.")
        return
    st.markdown(f"**The {len(slide.top_tiles)} most suspicious tiles, with Grad-CAM**")
    for column, explained in zip(st.columns(len(slide.top_tiles)), slide.top_tiles, strict=True):
        tile = explained.tile
        column.image(
            overlay.overlay_png(
                explained.pixels,
                explained.prediction,
                explained.heatmap,
                positive_class=slide.positive_class,
                opacity=opacity,
            ),
            caption=(
                f"tile at x={tile.x}, y={tile.y} ({tile.width}x{tile.height} level-0 px), "
                f"p={tile.probability:.3f}"
            ),
        )


# ------------------------------------------------------------------- pages


def page_analyse(config: AppConfig) -> None:
    """Upload images or try a sample; see prediction, probability, threshold and overlay."""
    st.title("Analyse images")
    model = get_model(config.model_uri)
    meta = model.metadata
    st.caption(_model_caption(model))
    opacity = st.slider(
        "Grad-CAM overlay opacity", 0.0, 1.0, DEFAULT_OPACITY, 0.05, key="opacity_analyse"
    )
    upload_tab, sample_tab = st.tabs(["Upload images", "Try a sample"])
    with upload_tab:
        files = st.file_uploader(
            "Histopathology patches, fields of view or whole slides (PNG, JPEG, BMP, GIF, "
            "TIFF, WebP; SVS, NDPI, SCN and pyramidal TIFF slides are tiled)",
            accept_multiple_files=True,
            key="uploads",
        )
        if files:
            items = tuple((f.name, f.getvalue()) for f in files)
            show_outcomes(
                _score(model.uri, items), opacity, meta.positive_class, [], section="upload"
            )
        else:
            st.info("Upload one or several images to see the model's prediction and Grad-CAM.")
    with sample_tab:
        folder = _synced_text_input(
            "Folder to pick from",
            key="sample_folder",
            default=config.samples_uri,
            help_text="The sample set, or any local folder or gs:// prefix holding images.",
        )
        if st.button("Try a random image", key="random_sample"):
            candidates = _list_images(folder) if folder else []
            if candidates:
                st.session_state["sample_uri"] = data.pick_random_image(candidates)
            else:
                st.session_state.pop("sample_uri", None)
                st.warning(f"No images found under {folder or '(empty folder)'}.")
        sample_uri = st.session_state.get("sample_uri")
        if sample_uri:
            items = ((sample_uri, storage.read_bytes(sample_uri)),)
            outcomes = _score(model.uri, items)
            show_outcomes(
                outcomes, opacity, meta.positive_class, meta.class_names, section="sample"
            )


def _result_filter(results: pd.DataFrame, run_uri: str) -> data.ResultFilter:
    """Filter and sort widgets for a run's rows (keyed per run, as their options differ)."""
    labels = sorted(results["label"].dropna().astype(str).unique())
    columns = list(results.columns)
    first, second, third = st.columns(3)
    chosen = first.multiselect("Label", labels, key=f"filter_labels:{run_uri}")
    low, high = second.slider(
        "p(malignant) between", 0.0, 1.0, (0.0, 1.0), 0.01, key=f"filter_probability:{run_uri}"
    )
    text = third.text_input("URI contains", key=f"filter_uri:{run_uri}")
    fourth, fifth = st.columns(2)
    sort_by = fourth.selectbox(
        "Sort by",
        columns,
        index=columns.index("probability") if "probability" in columns else 0,
        key=f"sort_by:{run_uri}",
    )
    descending = fifth.toggle("Descending", value=True, key=f"sort_descending:{run_uri}")
    return data.ResultFilter(
        labels=tuple(chosen),
        min_probability=low,
        max_probability=high,
        uri_contains=text.strip(),
        sort_by=sort_by,
        descending=descending,
    )


def _show_run_slide(run: data.ScoringRun, row: pd.Series, *, section: str) -> None:
    """A tiled input of a run: its slide fields, saved heatmap and tile rows (never its pixels)."""
    uri = str(row["uri"])
    st.markdown(f"#### {storage.basename(uri)}")
    st.caption(f"`{uri}`, scored by {row.get('model_name')} v{row.get('model_version')}")
    fields = {name: row.get(name) for name in SLIDE_FIELDS_SHOWN}
    left, right = st.columns([3, 2])
    saved = run.saved_heatmap(uri)
    if saved:
        left.image(storage.read_bytes(saved), caption=f"Heatmap saved by the run: {saved}")
    else:
        left.caption("The run saved no heatmap for this input.")
    right.dataframe(slide_fields_table(fields), hide_index=True, key=f"run_slide_fields:{section}")
    overlay_uri = run.saved_gradcam(uri)
    if overlay_uri:
        right.image(
            storage.read_bytes(overlay_uri), caption=f"Grad-CAM saved by the run: {overlay_uri}"
        )
    tiles = _load_tiles(run.uri, uri)
    if tiles.empty:
        st.caption("The run wrote no tile rows for this input.")
        return
    st.markdown(f"**Tile rows** ({len(tiles)}; the {min(len(tiles), TILES_SHOWN)} most suspicious)")
    st.dataframe(
        tiles.head(TILES_SHOWN),
        hide_index=True,
        key=f"run_slide_tiles:{section}",
        column_config={
            "probability": st.column_config.ProgressColumn(
                "p(malignant)", min_value=0.0, max_value=1.0, format="%.3f"
            )
        },
    )


def _show_run_image(run: data.ScoringRun, row: pd.Series, config: AppConfig) -> None:
    """The selected row's image beside its overlay (saved by the run, or computed now)."""
    if data.is_tiled_row(row):
        _show_run_slide(run, row, section="results")
        return
    uri = str(row["uri"])
    st.markdown(f"#### {storage.basename(uri)}")
    st.caption(f"`{uri}`, scored by {row.get('model_name')} v{row.get('model_version')}")
    try:
        prediction = Prediction(
            probability=float(row["probability"]),
            label=str(row["label"]),
            threshold=float(row["threshold"]),
        )
        _show_prediction(prediction, RUN_POSITIVE_CLASS)
    except (TypeError, ValueError):
        st.caption("This row has no usable probability.")
    try:
        raw = storage.read_bytes(uri)
    except storage.StorageError as exc:
        st.warning(f"The image cannot be read: {exc}")
        return
    saved = run.saved_gradcam(uri)
    if saved:
        left, right = st.columns(2)
        try:
            left.image(overlay.upscale_for_display(overlay.load_rgb(raw)), caption="Original")
        except Exception as exc:
            left.warning(f"{uri} cannot be shown: {one_line(exc)}")
        right.image(storage.read_bytes(saved), caption=f"Grad-CAM saved by the run: {saved}")
        return
    opacity = st.slider(
        "Grad-CAM overlay opacity", 0.0, 1.0, DEFAULT_OPACITY, 0.05, key="opacity_runs"
    )
    model = get_model(config.model_uri)
    if str(row.get("model_version")) != str(model.version):
        st.caption(
            f"No saved overlay: computing it with model version {model.version} "
            f"(the row was scored by version {row.get('model_version')})."
        )
    positive = model.metadata.positive_class
    outcomes = _score(model.uri, ((uri, raw),))
    show_outcomes(outcomes, opacity, positive, model.metadata.class_names, section="run")


def page_scoring_runs(config: AppConfig) -> None:
    """Browse a scoring run: filterable, sortable rows, errors, any image with its overlay."""
    st.title("Scoring runs")
    runs = _list_runs(config.results_uri)["scoring"]
    if not runs:
        st.info(
            f"No scoring runs under {config.results_uri}: a run is a folder with "
            "results/*.jsonl or errors/*.jsonl (the bulk scoring job writes them; `make demo` "
            "makes one). Change the results location in the sidebar."
        )
        return
    run_uri = st.selectbox("Run", runs, index=len(runs) - 1, key="scoring_run")
    run = _load_scoring_run(run_uri)
    results = run.results
    slides = data.slide_rows(results)
    counts = st.columns(5)
    counts[0].metric("Images scored", len(results))
    counts[1].metric("Errors", len(run.errors))
    counts[2].metric("Slides (tiled)", len(slides))
    for column, label in zip(counts[3:], sorted(results["label"].dropna().unique()), strict=False):
        column.metric(str(label), int((results["label"] == label).sum()))
    if run.skipped_lines:
        st.warning(f"{run.skipped_lines} line(s) in the row files were not JSON and were skipped.")
    if run.summary_problem:
        st.warning(f"The run's summary cannot be read: {run.summary_problem}")
    if run.summary is not None:
        if run.summary.scored != len(results) or run.summary.failed != len(run.errors):
            st.warning(
                f"summary.json says {run.summary.scored} scored and {run.summary.failed} "
                f"failed, but the rows say {len(results)} and {len(run.errors)}."
            )
        with st.expander("Run summary (summary.json)"):
            st.json(run.summary.to_dict())

    st.subheader("Results")
    table = data.filter_results(results, _result_filter(results, run.uri))
    st.caption(
        f"{len(table)} of {len(results)} rows. Select a row to see its image and overlay; "
        "click a column header to sort."
    )
    event = st.dataframe(
        table,
        key="results_table",
        on_select="rerun",
        selection_mode="single-row",
        hide_index=True,
        width="stretch",
        column_config={
            "probability": st.column_config.ProgressColumn(
                "p(malignant)", min_value=0.0, max_value=1.0, format="%.3f"
            )
        },
    )
    st.download_button(
        "Download these rows (CSV)",
        table.to_csv(index=False),
        file_name=f"{storage.basename(run.uri)}-results.csv",
        mime="text/csv",
    )
    selected = [i for i in event.selection.rows if i < len(table)]
    if selected:
        _show_run_image(run, table.iloc[selected[0]], config)

    if not slides.empty:
        st.subheader("Slides")
        st.caption(
            "Inputs larger than the model's training scale, scored tile by tile: the slide "
            "fields, the heatmap the run saved, and the tile rows."
        )
        st.dataframe(
            slides[["uri", *[c for c in SLIDE_FIELDS_SHOWN if c in slides.columns]]],
            hide_index=True,
            width="stretch",
            key="slides_table",
        )
        chosen = st.selectbox("Slide", list(slides["uri"]), key=f"slide:{run.uri}")
        if chosen:
            _show_run_slide(run, slides[slides["uri"] == chosen].iloc[0], section="slides")

    st.subheader("Errors")
    if run.errors.empty:
        st.caption("No errors in this run.")
    else:
        st.dataframe(run.errors, hide_index=True, width="stretch", key="errors_table")


def _show_metric_section(section: dict[str, Any]) -> None:
    table = data.metric_table(section)
    if not table.empty:
        st.dataframe(
            table,
            hide_index=True,
            column_config={
                c: st.column_config.NumberColumn(format="%.3f")
                for c in ("value", "ci_low", "ci_high")
            },
        )
        st.caption("ci_low and ci_high: the bounds of the 95% bootstrap confidence interval.")
    matrix = data.confusion_frame(section)
    report = data.classification_report_frame(section)
    left, right = st.columns(2)
    if matrix is not None:
        left.markdown("**Confusion matrix**")
        left.dataframe(matrix)
    if report is not None:
        right.markdown("**Classification report**")
        right.dataframe(report)


def page_evaluation(config: AppConfig) -> None:
    """An evaluation run's metrics with confidence intervals, its plots and report."""
    st.title("Evaluation")
    runs = _list_runs(config.results_uri)["evaluation"]
    if not runs:
        st.info(
            f"No evaluation runs under {config.results_uri}: a run is a folder with "
            "metrics.json (the evaluation job writes it). Change the results location in "
            "the sidebar."
        )
        return
    run_uri = st.selectbox("Evaluation run", runs, index=len(runs) - 1, key="evaluation_run")
    report = _load_evaluation(run_uri)
    metrics = report.metrics
    model = metrics.model
    st.caption(
        f"Model **{model.name}** version **{model.version}**, threshold {model.threshold}, "
        f"from `{model.version_uri or 'an unknown location'}`"
    )
    if metrics.blessing is not None:
        verdict = metrics.blessing.verdict
        reasons = "; ".join(metrics.blessing.reasons) or "every limit met"
        (st.success if metrics.blessing.blessed else st.error)(f"Gate: {verdict} ({reasons})")
    counts = asdict(metrics.counts)
    st.dataframe(
        pd.DataFrame(
            {"count": [json.dumps(v) if isinstance(v, dict) else v for v in counts.values()]},
            index=pd.Index(list(counts), name="what"),
        ).astype(str),
        key="counts_table",
    )
    st.subheader("Image level")
    _show_metric_section(metrics.image_level)
    patient = metrics.patient_level
    st.subheader("Patient level")
    if patient:
        _show_metric_section(patient)
    else:
        st.caption("No patient-level metrics in this run (the data named no patients).")

    st.subheader("Plots")
    if not report.plots:
        st.caption("This run lists no plots.")
    columns = st.columns(2)
    for index, (name, uri) in enumerate(report.plots.items()):
        with columns[index % 2]:
            try:
                st.image(storage.read_bytes(uri), caption=name.replace("_", " "))
            except storage.StorageError as exc:
                st.caption(f"{name}: {exc}")
    if report.report_uri:
        st.download_button(
            "Download the full report (report.html)",
            storage.read_bytes(report.report_uri),
            file_name="report.html",
            mime="text/html",
        )


def page_model(config: AppConfig) -> None:
    """The model version's metadata, training history curves and architecture summary."""
    st.title("Model & training")
    model = get_model(config.model_uri)
    meta = model.metadata
    top = st.columns(4)
    top[0].metric("Model", meta.model_name)
    top[1].metric("Version", meta.version)
    top[2].metric("Threshold", f"{meta.threshold:.3f}")
    top[3].metric("Architecture", meta.architecture)
    st.dataframe(data.model_facts(meta, model.uri), hide_index=True, key="model_facts")
    for title, value in (
        ("Training data", meta.training_data),
        ("Validation metrics", meta.validation_metrics),
        ("Training configuration", meta.training_config),
    ):
        with st.expander(title, expanded=title == "Validation metrics"):
            if value:
                st.json(value)
            else:
                st.caption("Not recorded in metadata.json.")

    st.subheader("Training history")
    default_history = data.history_uri_for(meta.run_uri) or ""
    history_uri = _synced_text_input(
        "history.csv",
        key="history_uri",
        default=default_history,
        help_text="The training run's Keras CSVLogger file.",
    )
    if not history_uri:
        st.info(
            "This model's metadata names no training run (run_uri), so there is no history "
            "to show; enter the URI of a history.csv above."
        )
    else:
        try:
            history = _load_history(history_uri)
        except storage.ObjectNotFound:
            st.info(f"No training history at {history_uri}.")
        else:
            charts = list(data.history_charts(history).items())
            for start in range(0, len(charts), 2):
                row = st.columns(2)
                for column, (title, frame) in zip(row, charts[start : start + 2], strict=False):
                    column.markdown(f"**{title}**")
                    column.line_chart(frame)
            with st.expander("History table"):
                st.dataframe(history)

    st.subheader("Architecture")
    if st.toggle("Show the layer summary", key="show_summary"):
        st.code(_architecture_summary(model.uri), language=None)


PAGES: dict[str, Page] = {
    "Analyse images": page_analyse,
    "Scoring runs": page_scoring_runs,
    "Evaluation": page_evaluation,
    "Model & training": page_model,
}


# -------------------------------------------------------------- the frame


def session_config(defaults: AppConfig) -> AppConfig:
    """Sidebar inputs for the data locations, validated; ``defaults`` when invalid."""
    with st.sidebar.expander("Data locations", expanded=False):
        values = {
            field: _synced_text_input(label, key=f"setting_{field}", default=default)
            for field, label, default in (
                ("model_uri", "Model (root or version)", defaults.model_uri),
                ("samples_uri", "Sample images", defaults.samples_uri),
                ("results_uri", "Scoring and evaluation runs", defaults.results_uri),
            )
        }
        try:
            return AppConfig(**values)
        except ConfigError as exc:
            st.error(f"{exc}. Using the defaults instead.")
            return defaults


def main() -> None:
    """Draw the whole app: sidebar, disclaimer, the chosen page."""
    st.set_page_config(page_title="histoscreen", page_icon="🔬", layout="wide")
    try:
        defaults = config_from_env(os.environ, sys.argv[1:])
    except ConfigError as exc:
        st.error(f"{exc}. Using the built-in defaults.")
        defaults = AppConfig()
    st.sidebar.title("histoscreen")
    choice = st.sidebar.radio("Page", list(PAGES), key="page")
    config = session_config(defaults)
    st.sidebar.caption(DISCLAIMER)
    st.warning(DISCLAIMER, icon="⚠️")
    guarded(PAGES[choice], config)
