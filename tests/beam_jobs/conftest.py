"""Fixtures of the Beam job tests: a corpus of bad files and small labelled sets.

``bad_corpus`` holds files that must end up in ``errors/`` (empty, text named
.png, truncated PNG, a decompression-bomb header, a folder named .png) beside
odd but valid images that must be scored (TIFF, grayscale, RGBA, JPEG, a GIF
named .png). ``scored_run`` runs the scoring job once on local folders for the
tests that only read its output.
"""

from __future__ import annotations

import io
import shutil
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# name -> "error" or "scored"
CORPUS = {
    "empty.png": "error",
    "notes.png": "error",
    "truncated.png": "error",
    "bomb.png": "error",
    "folder.png": "error",
    "scan.tif": "scored",
    "gray.png": "scored",
    "rgba.png": "scored",
    "photo.jpg": "scored",
    "animation.png": "scored",
}


def _encode(image: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A PNG whose valid IHDR (correct CRC) claims a huge size, with no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IEND", b"")


def make_bad_corpus(root: Path) -> Path:
    """Write the corpus into ``root``; return it."""
    rng = np.random.default_rng(7)
    rgb = Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8), "RGB")
    good_png = _encode(rgb, "PNG")
    root.mkdir(parents=True, exist_ok=True)
    (root / "empty.png").write_bytes(b"")
    (root / "notes.png").write_text("these are notes, not pixels\n")
    (root / "truncated.png").write_bytes(good_png[: len(good_png) // 2])
    (root / "bomb.png").write_bytes(bomb_png())
    (root / "folder.png").mkdir()
    (root / "scan.tif").write_bytes(_encode(rgb, "TIFF"))
    (root / "gray.png").write_bytes(_encode(rgb.convert("L"), "PNG"))
    (root / "rgba.png").write_bytes(_encode(rgb.convert("RGBA"), "PNG"))
    (root / "photo.jpg").write_bytes(_encode(rgb, "JPEG"))
    (root / "animation.png").write_bytes(_encode(rgb.convert("P"), "GIF"))
    return root


@dataclass(frozen=True)
class Corpus:
    """The bad-file corpus on disk and what must become of each file."""

    root: Path
    expected: dict[str, str]  # name -> "error" or "scored"

    @property
    def inputs(self) -> list[str]:
        """``--input`` flags covering the corpus: a glob, and the folder named .png by
        path (Beam's glob lists files only, so a folder is matched when named exactly)."""
        return ["--input", f"{self.root}/*", "--input", str(self.root / "folder.png")]

    def uri(self, name: str) -> str:
        """The URI Beam reports for a corpus file."""
        return str(self.root / name)


@pytest.fixture(scope="session")
def bad_corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    """The bad-file corpus (see :data:`CORPUS`)."""
    return Corpus(make_bad_corpus(tmp_path_factory.mktemp("corpus")), dict(CORPUS))


@pytest.fixture(scope="session")
def small_set(tmp_path_factory: pytest.TempPathFactory, sample_dir: Path) -> Path:
    """12 benign + 12 malignant sample images under benign/ and malignant/."""
    root = tmp_path_factory.mktemp("small")
    for label in ("benign", "malignant"):
        (root / label).mkdir()
        for path in sorted((sample_dir / label).glob("*.png"))[:12]:
            shutil.copy(path, root / label / path.name)
    return root


@dataclass(frozen=True)
class ScoredRun:
    """A scoring job run once for the session on ``small_set`` + ``bad_corpus``."""

    output: Path
    small_set: Path
    corpus: Corpus
    matched: int


@pytest.fixture(scope="session")
def scored_run(
    tmp_path_factory: pytest.TempPathFactory, small_set: Path, bad_corpus: Corpus, tiny_model
) -> ScoredRun:
    """Score the small set and the bad corpus with Grad-CAM for the top 3."""
    from beam_jobs import score

    output = tmp_path_factory.mktemp("scored") / "run"
    score.run(
        [
            "--input",
            f"{small_set}/**.png",
            *bad_corpus.inputs,
            "--model",
            tiny_model.root_uri,
            "--output",
            str(output),
            "--gradcam-top",
            "3",
        ]
    )
    return ScoredRun(
        output=output, small_set=small_set, corpus=bad_corpus, matched=24 + len(CORPUS)
    )


@dataclass(frozen=True)
class EvaluatedRun:
    """An evaluation job run once for the session (scoring mode, labels CSV, gate)."""

    output: Path
    images: Path  # flat folder: labels come from the CSV only
    labels_csv: Path
    model_version: Path  # a private copy of the tiny model, so the gate can write into it
    labels: dict[str, tuple[str, str]]  # file name -> (label, patient id)
    unlabelled: str
    bad: str


@pytest.fixture(scope="session")
def evaluated_run(
    tmp_path_factory: pytest.TempPathFactory, small_set: Path, bad_corpus: Corpus, tiny_model
) -> EvaluatedRun:
    """Evaluate 24 labelled images (6 patients, two labels flipped), one unlabelled image
    and one bad file; the gate (AUC >= 0) blesses the model copy."""
    from beam_jobs import evaluate

    root = tmp_path_factory.mktemp("evaluated")
    images = root / "images"
    images.mkdir()
    labels = {}
    for i, path in enumerate(sorted(small_set.rglob("*.png"))):
        name = f"img_{i:03d}.png"
        shutil.copy(path, images / name)
        label = path.parent.name
        if i in (0, 12):  # one label flipped in each class, so the gallery has errors to show
            label = "malignant" if label == "benign" else "benign"
        labels[name] = (label, f"P{i % 6}")
    shutil.copy(bad_corpus.root / "photo.jpg", images / "unlabelled.png")
    shutil.copy(bad_corpus.root / "truncated.png", images / "broken.png")
    labels_csv = root / "labels.csv"
    lines = ["path,label,patient_id"] + [
        f"images/{n},{lab},{pid}" for n, (lab, pid) in labels.items()
    ]
    labels_csv.write_text("\n".join(lines) + "\n")
    models = root / "models" / "histo-cnn"
    shutil.copytree(tiny_model.version_uri, models / "1")
    output = root / "eval"
    evaluate.run(
        [
            "--input",
            f"{images}/*.png",
            "--labels",
            str(labels_csv),
            "--model",
            str(models),
            "--output",
            str(output),
            "--bootstrap",
            "200",
            "--gallery-size",
            "4",
            "--min-auc",
            "0.0",
        ]
    )
    return EvaluatedRun(
        output=output,
        images=images,
        labels_csv=labels_csv,
        model_version=models / "1",
        labels=labels,
        unlabelled=str(images / "unlabelled.png"),
        bad=str(images / "broken.png"),
    )
