"""Benchmark: scoring slide tiles through the decoded-pixel signature against PNG bytes.

In ONE process, over the same tiles of one synthetic pyramidal slide (the tissue
tiles the tiling rule and the tissue mask keep) and the same SavedModel (the
original custom CNN at 48 px, untrained: weights do not change the speed):

(a) pixels: the tiles as uint8 ``[B, 50, 50, 3]`` into ``serving_pixels``;
(b) bytes: each tile PNG-encoded, then ``serving_default`` (what a caller must do
    without the pixel signature); (b') the same signature on pre-encoded bytes,
    to show where the time goes;
(c) the same pair for Grad-CAM (``explain_pixels`` vs PNG + ``explain``);
(d) the single-process loop a Beam job will be measured against: OpenSlide
    ``read_region`` per tile + batched ``serving_pixels``, tiles/s end to end.

Each timed phase runs ``--repeats`` times, alternating, and the best is kept (the
machine may be shared). Prints a table and writes ``bench/results/tiles.json``:

    .venv/bin/python bench/bench_tiles.py --width 4096 --height 3072
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("NO_GCE_CHECK", "true")
os.environ.setdefault("GCE_METADATA_HOST", "127.0.0.1:9")
os.environ.setdefault("GCE_METADATA_IP", "127.0.0.1:9")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

IMAGE_SIZE = 48
TILE = 50
BATCH = 256


def prepare(workdir: Path, width: int, height: int):
    """Write the slide, export the untrained CNN, plan and mask the tiles."""
    from benchkit import export_untrained_cnn

    from histo_common.samples import generate_slide
    from histo_common.slides import open_slide
    from histo_common.tiling import plan_tiles
    from histo_common.tissue import TissueMasker, keep_tissue_tiles
    from model_export.loader import load_model

    t = time.perf_counter()
    sample = generate_slide(str(workdir / "slide.tif"), width, height, seed=0, mpp=None)
    print(f"wrote a {width}x{height} synthetic slide in {time.perf_counter() - t:.1f} s")
    export_untrained_cnn(str(workdir / "models"), IMAGE_SIZE, native_size=(TILE, TILE))
    model = load_model(f"{workdir}/models/histo-cnn")
    with open_slide(sample.uri) as slide:
        plan = plan_tiles(slide.geometry, model.metadata.training_scale())
        thumb, _ = slide.thumbnail()
        plan_kept = keep_tissue_tiles(plan, TissueMasker().fit_transform(thumb))
    print(f"{len(plan.tiles)} tiles in the grid, {len(plan_kept.tiles)} with tissue")
    return sample.uri, model, plan_kept


def batches(n: int):
    """Slices of ``BATCH``."""
    return [slice(i, i + BATCH) for i in range(0, n, BATCH)]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write bench/results/tiles.json."""
    import numpy as np

    from histo_common.samples import encode_png
    from histo_common.slides import open_slide
    from histo_common.tiling import read_tiles
    from model_export import contract

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--height", type=int, default=3072)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--explain-tiles", type=int, default=512)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-tiles-") as tmp:
        uri, model, plan = prepare(Path(tmp), args.width, args.height)
        with open_slide(uri) as slide:
            tiles = read_tiles(slide, plan.tiles)
        n = len(tiles)
        encoded = [encode_png(t) for t in tiles]
        sub = tiles[: args.explain_tiles]

        def pixels() -> None:
            for s in batches(n):
                model.run_pixels(contract.PREDICT_SIGNATURE, tiles[s])

        def png_then_bytes() -> None:
            for s in batches(n):
                model.run(contract.PREDICT_SIGNATURE, [encode_png(t) for t in tiles[s]])

        def bytes_only() -> None:
            for s in batches(n):
                model.run(contract.PREDICT_SIGNATURE, encoded[s])

        def explain_pixels() -> None:
            for s in batches(len(sub)):
                model.run_pixels(contract.EXPLAIN_SIGNATURE, sub[s])

        def explain_bytes() -> None:
            for s in batches(len(sub)):
                model.run(contract.EXPLAIN_SIGNATURE, [encode_png(t) for t in sub[s]])

        def read_and_score() -> None:
            with open_slide(uri) as slide:
                for i in range(0, n, BATCH):
                    batch = read_tiles(slide, plan.tiles[i : i + BATCH])
                    model.run_pixels(contract.PREDICT_SIGNATURE, batch)

        phases = {
            "pixels": pixels,
            "png_then_bytes": png_then_bytes,
            "bytes_preencoded": bytes_only,
            "explain_pixels": explain_pixels,
            "explain_png_then_bytes": explain_bytes,
            "read_and_score_loop": read_and_score,
        }
        for fn in phases.values():  # warm-up: trace and allocate once
            fn()
        best = {name: float("inf") for name in phases}
        for _ in range(args.repeats):
            for name, fn in phases.items():
                t = time.perf_counter()
                fn()
                best[name] = min(best[name], time.perf_counter() - t)

    count = {name: n for name in phases}
    count["explain_pixels"] = count["explain_png_then_bytes"] = len(sub)
    rate = {name: count[name] / best[name] for name in phases}
    result = {
        "slide": f"{args.width}x{args.height} synthetic pyramidal TIFF",
        "tiles": n,
        "tile_size": TILE,
        "model_input": IMAGE_SIZE,
        "batch": BATCH,
        "repeats": args.repeats,
        "tiles_per_s": {k: round(v, 1) for k, v in rate.items()},
        "pixels_speedup_over_png_bytes": round(rate["pixels"] / rate["png_then_bytes"], 2),
        "explain_pixels_speedup_over_png_bytes": round(
            rate["explain_pixels"] / rate["explain_png_then_bytes"], 2
        ),
        "png_encoding_share_of_bytes_path": round(
            1 - best["bytes_preencoded"] / best["png_then_bytes"], 2
        ),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
    }
    for name, value in rate.items():
        print(f"{name:>24}: {value:9.1f} tiles/s")
    print(json.dumps(result, indent=2))
    out = REPO / "bench" / "results" / "tiles.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0 if np.isfinite(list(rate.values())).all() else 1


if __name__ == "__main__":
    sys.exit(main())
