"""Benchmark the upload function: cold start and warm latency, against the bare model call.

In one run, on the embedded default (a local bucket folder, the real function under
a functions-framework subprocess on 127.0.0.1, binary CloudEvents over HTTP):

- cold start: process start to the first successful response to a real event
  (Python and functions-framework start, TensorFlow import, model load, first
  image scored and both outputs written);
- warm latency per image: event in to both outputs written (the function writes
  them before it answers), over N new objects: median and 95th percentile;
- the bare ``LoadedModel.explain([bytes])`` on the same image, in this process
  after the server has stopped: median and 95th percentile.

The model is ``buckets/models/histo-cnn`` when present, else an untrained
``build_custom_cnn(64)`` exported with ``model_export`` (speed does not need
trained weights). Writes ``bench/results/function.json`` and prints a table.

Usage: ``python bench/bench_function.py [--events 30] [--model URI]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
import histo_common.tensorflow_env  # noqa: E402, F401  (sets up TensorFlow first)
from functions.watch import finalized_event, free_port  # noqa: E402
from histo_common import storage  # noqa: E402
from histo_common.samples import generate_samples  # noqa: E402

DEFAULT_MODEL = REPO_ROOT / "buckets" / "models" / "histo-cnn"
RESULTS = REPO_ROOT / "bench" / "results" / "function.json"
IMAGE_SIZE = 50  # the IDC patch size


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def summary_ms(seconds: list[float]) -> dict[str, float]:
    """Median and p95 in milliseconds."""
    ms = [s * 1000 for s in seconds]
    return {
        "median": round(statistics.median(ms), 2),
        "p95": round(percentile(ms, 95), 2),
        "n": len(ms),
    }


def benchmark_model(work: Path, requested: str | None) -> tuple[str, str]:
    """Return ``(model_uri, description)``: the requested or local model, or a fresh one."""
    from model_export.identity import list_versions

    if requested:
        return requested, requested
    if DEFAULT_MODEL.is_dir() and list_versions(str(DEFAULT_MODEL)):
        return str(DEFAULT_MODEL), f"{DEFAULT_MODEL.relative_to(REPO_ROOT)} (latest version)"
    from benchkit import export_untrained_cnn

    root = export_untrained_cnn(str(work / "models"), 64)
    return root, "untrained custom_cnn(64), exported for the benchmark"


def sample_image(work: Path) -> bytes:
    """One synthetic malignant patch of the IDC size."""
    generate_samples(str(work / "samples"), count=2, seed=0, size=IMAGE_SIZE)
    return sorted((work / "samples" / "malignant").glob("*.png"))[0].read_bytes()


def post_event(url: str, uploads: Path, name: str) -> float:
    """Send the finalized event for ``uploads/name``; return seconds to a 2xx answer."""
    import requests
    from cloudevents.conversion import to_binary

    info = storage.stat(str(uploads / name))
    headers, body = to_binary(finalized_event(uploads.name, name, info))
    started = time.perf_counter()
    response = requests.post(url, headers=headers, data=body, timeout=600)
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    for suffix in (".gradcam.png", ".prediction.json"):
        if not (uploads / (name + suffix)).is_file():
            raise RuntimeError(f"{name}{suffix} was not written")
    return elapsed


def run_function(model_uri: str, image: bytes, work: Path, events: int) -> dict[str, object]:
    """Cold start and warm latency through a functions-framework subprocess."""
    import requests

    root = work / "buckets"
    uploads = root / "uploads"
    uploads.mkdir(parents=True)
    (uploads / "cold.png").write_bytes(image)
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    env = dict(os.environ)
    env.update(
        MODEL_URI=model_uri,
        LOCAL_BUCKET_ROOT=str(root),
        PYTHONPATH=str(REPO_ROOT),
        WORKERS="1",
        TF_CPP_MIN_LOG_LEVEL="3",
    )
    command = [
        sys.executable,
        "-m",
        "functions_framework",
        "--target=on_upload",
        "--signature-type=cloudevent",
        f"--source={REPO_ROOT / 'functions' / 'main.py'}",
        "--host=127.0.0.1",
        f"--port={port}",
    ]
    started = time.perf_counter()
    server = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        listening = None
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"the function server exited with {server.returncode}")
            try:
                requests.get(url, timeout=2)
                listening = time.perf_counter() - started
                break
            except requests.ConnectionError:
                time.sleep(0.02)
        post_event(url, uploads, "cold.png")
        cold = time.perf_counter() - started
        warm = []
        for i in range(events):
            name = f"warm-{i:03d}.png"
            (uploads / name).write_bytes(image)
            warm.append(post_event(url, uploads, name))
    finally:
        server.terminate()
        server.wait(timeout=30)
    return {"listening_s": round(listening, 3), "cold_start_s": round(cold, 3), "warm": warm}


def run_bare(model_uri: str, image: bytes, events: int) -> list[float]:
    """Time ``LoadedModel.explain([image])`` after a short warm-up."""
    from model_export.loader import load_model

    model = load_model(model_uri)
    for _ in range(3):
        model.explain([image])
    times = []
    for _ in range(events):
        started = time.perf_counter()
        model.explain([image])
        times.append(time.perf_counter() - started)
    return times


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, write the JSON, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=30, help="warm events (and bare calls)")
    parser.add_argument("--model", default=None, help="model root or version URI")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write the JSON")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="bench-function-"))
    try:
        model_uri, model_description = benchmark_model(work, args.model)
        image = sample_image(work)
        function = run_function(model_uri, image, work, args.events)
        bare = run_bare(model_uri, image, args.events)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    warm = summary_ms(function["warm"])  # type: ignore[arg-type]
    bare_ms = summary_ms(bare)
    result = {
        "benchmark": "functions/on_upload on the embedded default (local bucket, HTTP CloudEvents)",
        "model": model_description,
        "image": f"{IMAGE_SIZE}x{IMAGE_SIZE} synthetic PNG, {len(image)} bytes",
        "events": args.events,
        "cold_start_s": function["cold_start_s"],
        "server_listening_s": function["listening_s"],
        "warm_event_ms": warm,
        "bare_explain_ms": bare_ms,
        "overhead_ms": {
            "median": round(warm["median"] - bare_ms["median"], 2),
            "p95": round(warm["p95"] - bare_ms["p95"], 2),
        },
        "ratio": {
            "median": round(warm["median"] / bare_ms["median"], 2),
            "p95": round(warm["p95"] / bare_ms["p95"], 2),
        },
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average_at_start": round(load_before, 2),
        },
        "command": "python bench/bench_function.py " + " ".join(argv or sys.argv[1:]),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"model: {model_description}; image: {result['image']}; {args.events} events")
    rows = [
        ("warm event in -> both outputs written (ms)", warm["median"], warm["p95"]),
        ("bare LoadedModel.explain([bytes]) (ms)", bare_ms["median"], bare_ms["p95"]),
        ("function / bare", result["ratio"]["median"], result["ratio"]["p95"]),
    ]
    print(f"{'measure':<44}{'median':>10}{'p95':>10}")
    for label, median, p95 in rows:
        print(f"{label:<44}{median:>10.2f}{p95:>10.2f}")
    print(
        f"cold start (process start -> first response): {function['cold_start_s']:.2f} s "
        f"(listening after {function['listening_s']:.2f} s)"
    )
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
