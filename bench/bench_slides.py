"""Benchmark: the Beam job on a slide against the single-process slide loop, and its memory.

On the same machine, in the same run, with the same SavedModel (the original
custom CNN at 48 px, untrained, recording a 50 x 50 training scale: weights do
not change the speed) and the same synthetic pyramidal slides:

(a) loop: :func:`model_export.slide_scoring.score_input`, the best single-process
    loop (OpenSlide ``read_region`` per tile + batched ``serving_pixels`` calls),
    model loaded before the clock starts;
(b) beam: ``python -m beam_jobs.score --input slide.tif`` end to end on the
    default local runner (plan on one worker, fan the tiles out, RunInference,
    group back, tile rows, heatmap, summary), model loading included;
(c) predict: one ``serving_default`` call per PNG-encoded tile (the original
    app's way), on the first ``--predict-tiles`` tiles, for reference.

Each runs ``--repeats`` times, alternating, the fastest kept (the machine may be
shared: interference only slows a run), in its own child process, which reports
its tiles, seconds and peak RSS (its own and its children's). Two slides:
``--width x --height`` and one with 4x the pixels (the small one tiled 2 x 2),
for the memory check. The Beam job's fixed cost (start-up, planning, model
loads) is told from its rate once its models are loaded (tiles / time from the
last "Loaded model" log line to the end); the loop is also reported cold (model
load included). Writes
``bench/results/slides.json``::

    .venv/bin/python bench/bench_slides.py --width 4096 --height 3072

The Beam job pays a fixed cost the warm loop does not (launch, planning, the
TensorFlow import and model load: seconds), so its ratio grows with the slide;
slides of whole-slide size (``--width 16384 --height 12288``: 16,012 and 64,023
tissue tiles, about 10 minutes with the slides' writing) give
``bench/results/slides_large.json`` (copied there by hand).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import subprocess
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
sys.path.insert(0, str(REPO / "bench"))

IMAGE_SIZE = 48
TILE = 50


def peak_rss_mb() -> float:
    """Peak RSS of this process (VmHWM) and of its waited-for children, in MB.

    ``getrusage(RUSAGE_SELF)`` would not do: Linux keeps ``ru_maxrss`` across
    ``fork`` + ``exec``, so a child would report its parent's peak (the parent
    holds the generated slide in memory). ``VmHWM`` belongs to the new image.
    """
    own_kb = 0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            own_kb = int(line.split()[1])
    children_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own_kb, children_kb) / 1024.0


def prepare(workdir: Path, width: int, height: int) -> tuple[str, str, str]:
    """Export the untrained CNN; write the slide and the one with 4x its pixels."""
    import numpy as np
    from benchkit import export_untrained_cnn

    from histo_common.samples import synth_slide_image, write_pyramidal_tiff

    model = export_untrained_cnn(str(workdir / "models"), IMAGE_SIZE, native_size=(TILE, TILE))
    t = time.perf_counter()
    image, _ = synth_slide_image(width, height, seed=0)
    small = str(workdir / "slide.tif")
    write_pyramidal_tiff(image, small)
    large = str(workdir / "slide4x.tif")
    write_pyramidal_tiff(np.tile(image, (2, 2, 1)), large)
    print(
        f"wrote {width}x{height} and {2 * width}x{2 * height} slides in "
        f"{time.perf_counter() - t:.1f} s",
        flush=True,
    )
    return model, small, large


class _LoadTimes(logging.Handler):
    """Collects when the loader logged each model load (the Beam job's fixed cost)."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        """Remember the time of a "Loaded model" line."""
        if record.getMessage().startswith("Loaded model"):
            self.times.append(record.created)


def child(mode: str, slide: str, model_root: str, workdir: str, predict_tiles: int) -> dict:
    """Run one measurement in this (child) process; return its figures."""
    from model_export.loader import load_model
    from model_export.slide_scoring import SlideSettings, score_input

    if mode == "beam":
        from beam_jobs import score

        score.configure_logging()  # phases with timestamps on stderr: where the time goes
        loads = _LoadTimes()
        logging.getLogger("model_export.loader").addHandler(loads)
        output = tempfile.mkdtemp(prefix="beam-", dir=workdir)
        t, wall = time.perf_counter(), time.time()
        score.run(["--input", slide, "--model", model_root, "--output", f"{output}/run"])
        seconds = time.perf_counter() - t
        after_load = time.time() - max(loads.times)
        rows = [
            json.loads(line)
            for part in Path(output, "run", "results").glob("*.jsonl")
            for line in part.read_text().splitlines()
        ]
        return {
            "tiles": rows[0]["tiles_scored"],
            "seconds": seconds,
            "until_models_loaded_s": max(loads.times) - wall,
            "after_models_loaded_s": after_load,
            "model_loads": len(loads.times),
            "peak_rss_mb": peak_rss_mb(),
        }
    t = time.perf_counter()
    model = load_model(model_root)
    settings = SlideSettings.from_metadata(model.metadata)
    load_s = time.perf_counter() - t
    if mode == "loop":
        score_input(model, slide, model.identity, settings)  # warm-up: trace, caches
        t = time.perf_counter()
        result = score_input(model, slide, model.identity, settings)
        seconds = time.perf_counter() - t
        return {
            "tiles": len(result.tiles),
            "seconds": seconds,
            "model_load_s": load_s,
            "peak_rss_mb": peak_rss_mb(),
        }
    # predict: the original app's way, one encoded tile per call.
    from histo_common.samples import encode_png
    from histo_common.slides import open_slide
    from histo_common.tiling import read_tile
    from model_export.slide_scoring import plan_input

    with open_slide(slide) as opened:
        regions = plan_input(opened, settings).tiles[:predict_tiles]
        model.predict([encode_png(read_tile(opened, regions[0]))])  # warm-up
        t = time.perf_counter()
        for region in regions:
            model.predict([encode_png(read_tile(opened, region))])
        seconds = time.perf_counter() - t
    return {"tiles": len(regions), "seconds": seconds, "peak_rss_mb": peak_rss_mb()}


def measure(mode: str, slide: str, model: str, workdir: Path, predict_tiles: int) -> dict:
    """Run :func:`child` in a fresh process; return its figures."""
    out = workdir / f"{mode}-{Path(slide).stem}.json"
    cmd = [
        sys.executable,
        __file__,
        "--child",
        mode,
        "--slide",
        slide,
        "--model",
        model,
        "--workdir",
        str(workdir),
        "--predict-tiles",
        str(predict_tiles),
        "--result",
        str(out),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    figures = json.loads(out.read_text())
    figures["tiles_per_s"] = figures["tiles"] / figures["seconds"]
    print(
        f"{mode:>8} {Path(slide).name:>12}: {figures['tiles']:6d} tiles in "
        f"{figures['seconds']:7.2f} s = {figures['tiles_per_s']:7.1f} tiles/s, "
        f"peak RSS {figures['peak_rss_mb']:.0f} MB",
        flush=True,
    )
    return figures


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or one child measurement) and write bench/results/slides.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--height", type=int, default=3072)
    parser.add_argument("--predict-tiles", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each; the best is kept")
    parser.add_argument("--child", choices=("loop", "beam", "predict"))
    parser.add_argument("--slide")
    parser.add_argument("--model")
    parser.add_argument("--workdir")
    parser.add_argument("--result")
    args = parser.parse_args(argv)
    if args.child:
        figures = child(args.child, args.slide, args.model, args.workdir, args.predict_tiles)
        Path(args.result).write_text(json.dumps(figures))
        return 0

    with tempfile.TemporaryDirectory(prefix="bench-slides-") as tmp:
        work = Path(tmp)
        model, small, large = prepare(work, args.width, args.height)
        runs: dict[str, dict] = {}
        for _ in range(args.repeats):  # alternating; the fastest of each is kept
            for size, slide in (("small", small), ("large", large)):
                for mode in ("loop", "beam"):
                    figures = measure(mode, slide, model, work, args.predict_tiles)
                    best = runs.get(f"{mode}_{size}")
                    if best is None or figures["seconds"] < best["seconds"]:
                        runs[f"{mode}_{size}"] = figures
        runs["predict_large"] = measure("predict", large, model, work, args.predict_tiles)

    for run in runs.values():
        if "model_load_s" in run:  # what one cold single-process run pays, model load included
            run["cold_tiles_per_s"] = run["tiles"] / (run["seconds"] + run["model_load_s"])
    loop, beam = runs["loop_large"], runs["beam_large"]
    after_load = beam["tiles"] / beam["after_models_loaded_s"]
    result = {
        "slides": {
            "small": f"{args.width}x{args.height} synthetic pyramidal TIFF",
            "large": f"{2 * args.width}x{2 * args.height} (the small one tiled 2 x 2: 4x pixels)",
        },
        "model": f"untrained custom CNN, {IMAGE_SIZE} px input, {TILE}x{TILE} training scale",
        "runs": {
            k: {kk: round(vv, 3) if isinstance(vv, float) else vv for kk, vv in v.items()}
            for k, v in runs.items()
        },
        "beam_over_loop_tiles_per_s": round(beam["tiles_per_s"] / loop["tiles_per_s"], 3),
        "beam_over_cold_loop_tiles_per_s": round(beam["tiles_per_s"] / loop["cold_tiles_per_s"], 3),
        "beam_after_models_loaded_tiles_per_s": round(after_load, 1),
        "beam_after_models_loaded_over_loop": round(after_load / loop["tiles_per_s"], 3),
        "beam_until_models_loaded_s": round(beam["until_models_loaded_s"], 2),
        "beam_peak_rss_large_over_small": round(
            beam["peak_rss_mb"] / runs["beam_small"]["peak_rss_mb"], 3
        ),
        "loop_peak_rss_large_over_small": round(
            loop["peak_rss_mb"] / runs["loop_small"]["peak_rss_mb"], 3
        ),
        "loop_over_per_tile_predict": round(
            loop["tiles_per_s"] / runs["predict_large"]["tiles_per_s"], 2
        ),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}",
        "command": "python bench/bench_slides.py " + " ".join(argv or sys.argv[1:]),
    }
    print(json.dumps(result, indent=2))
    out = REPO / "bench" / "results" / "slides.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
