"""Benchmark the upload function: cold start and warm latency, against the bare model call.

In one run, on the embedded default (a local bucket folder, the real function under
a functions-framework subprocess on 127.0.0.1, binary CloudEvents over HTTP):

- cold start: process start to the first successful response to a real event
  (Python and functions-framework start, TensorFlow import, model load, first
  image scored and both outputs written);
- warm latency per image: event in to both outputs written (the function writes
  them before it answers), over N new objects: median and 95th percentile;
- where a warm event's time goes: the function logs the milliseconds of each stage
  (``stages_ms``: storage look-ups and writes, read, check, explain, overlay drawing,
  PNG encoding, JSON) with every outcome; the medians of those log fields, plus
  the time outside the handler (HTTP, CloudEvent parsing, functions-framework),
  which a skipped event (a name that is not an image) also measures;
- the bare ``LoadedModel.explain([bytes])`` on the same image, in this process,
  one call right after each warm event (interleaved, so both see the same load on
  a shared machine): median and 95th percentile.

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
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


class EventClient:
    """Posts binary CloudEvents to the function over one kept-alive HTTP/1.1 connection.

    Eventarc keeps its connections to the service open, so a connection per event
    (and a heavyweight client) would time the client, not the function: with
    ``requests`` and a new connection per event a skipped event took about 1 ms
    more than here.
    """

    def __init__(self, port: int, uploads: Path) -> None:
        import http.client

        self._conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        self._uploads = uploads

    def post(self, name: str) -> float:
        """Send the finalized event for ``uploads/name``; return seconds to a 2xx answer."""
        from cloudevents.conversion import to_binary

        info = storage.stat(str(self._uploads / name))
        headers, body = to_binary(finalized_event(self._uploads.name, name, info))
        started = time.perf_counter()
        self._conn.request("POST", "/", body=body, headers=headers)
        response = self._conn.getresponse()
        response.read()
        elapsed = time.perf_counter() - started
        if not 200 <= response.status < 300:
            raise RuntimeError(f"the function answered {response.status} for {name}")
        return elapsed

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()


def check_outputs(uploads: Path, name: str) -> None:
    """Raise unless both outputs of ``name`` were written before the function answered."""
    for suffix in (".gradcam.png", ".prediction.json"):
        if not (uploads / (name + suffix)).is_file():
            raise RuntimeError(f"{name}{suffix} was not written")


def outcome_logs(log_path: Path, status: str) -> list[dict[str, Any]]:
    """The function's JSON outcome lines with ``status`` (one per event), in order."""
    lines = []
    for line in log_path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("status") == status and "stages_ms" in entry:
            lines.append(entry)
    return lines


def stage_medians(entries: list[dict[str, Any]]) -> dict[str, float]:
    """Median milliseconds of each logged stage over ``entries``."""
    names = dict.fromkeys(name for e in entries for name in e["stages_ms"])
    return {
        name: round(statistics.median(e["stages_ms"].get(name, 0.0) for e in entries), 2)
        for name in names
    }


def run_function(
    model_uri: str, image: bytes, work: Path, events: int, bare: Callable[[], float]
) -> dict[str, Any]:
    """Cold start, warm latency and its breakdown through a functions-framework subprocess.

    ``bare`` times one bare ``explain`` call; it runs after each warm event.
    """
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
    log_path = work / "function.log"
    log = log_path.open("w")
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
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
        client = EventClient(port, uploads)
        client.post("cold.png")
        cold = time.perf_counter() - started
        check_outputs(uploads, "cold.png")
        warm, bare_times = [], []
        for i in range(events):
            name = f"warm-{i:03d}.png"
            (uploads / name).write_bytes(image)
            warm.append(client.post(name))
            check_outputs(uploads, name)
            bare_times.append(bare())
        (uploads / "notes.txt").write_text("not an image")
        skipped = [client.post("notes.txt") for _ in range(events)]
        client.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
    scored = outcome_logs(log_path, "scored")
    if len(scored) != events + 1:
        raise RuntimeError(f"expected {events + 1} scored outcomes in the log, got {len(scored)}")
    cold_log, warm_logs = scored[0], scored[1:]
    outside = [t * 1000 - e["elapsed_ms"] for t, e in zip(warm, warm_logs, strict=True)]
    return {
        "listening_s": round(listening, 3),
        "cold_start_s": round(cold, 3),
        "cold_event_stages_ms": cold_log["stages_ms"],
        "warm": warm,
        "bare": bare_times,
        "warm_stages_ms": stage_medians(warm_logs),
        "warm_handler_ms": round(statistics.median(e["elapsed_ms"] for e in warm_logs), 2),
        "warm_outside_handler_ms": round(statistics.median(outside), 2),
        "skipped": skipped,
    }


def bare_explain(model_uri: str, image: bytes) -> Callable[[], float]:
    """Load the model here and return a timer of one ``LoadedModel.explain([image])`` call."""
    from model_export.loader import load_model

    model = load_model(model_uri)
    for _ in range(3):
        model.explain([image])

    def timed() -> float:
        started = time.perf_counter()
        model.explain([image])
        return time.perf_counter() - started

    return timed


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
        function = run_function(model_uri, image, work, args.events, bare_explain(model_uri, image))
        bare = function["bare"]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    warm = summary_ms(function["warm"])
    bare_ms = summary_ms(bare)
    result = {
        "benchmark": "functions/on_upload on the embedded default (local bucket, HTTP CloudEvents)",
        "model": model_description,
        "image": f"{IMAGE_SIZE}x{IMAGE_SIZE} synthetic PNG, {len(image)} bytes",
        "events": args.events,
        "cold_start_s": function["cold_start_s"],
        "server_listening_s": function["listening_s"],
        "cold_event_stages_ms": function["cold_event_stages_ms"],
        "warm_event_ms": warm,
        "warm_breakdown_ms": {
            "handler_stages_median": function["warm_stages_ms"],
            "handler_total_median": function["warm_handler_ms"],
            "outside_handler_median": function["warm_outside_handler_ms"],
        },
        "skipped_event_ms": summary_ms(function["skipped"]),
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
    print("where a warm event's time goes (medians, ms, from the function's stages_ms log):")
    for stage, ms in function["warm_stages_ms"].items():
        print(f"  {stage:<42}{ms:>10.2f}")
    outside = function["warm_outside_handler_ms"]
    print(f"  {'outside the handler (HTTP, framework)':<42}{outside:>10.2f}")
    print(f"  {'a skipped event, end to end':<42}{result['skipped_event_ms']['median']:>10.2f}")
    print(
        f"cold start (process start -> first response): {function['cold_start_s']:.2f} s "
        f"(listening after {function['listening_s']:.2f} s)"
    )
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
