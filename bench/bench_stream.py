"""The streaming job against the batch job, in one run, on the local runner.

1. Throughput: a burst of N files (default 2,000) dropped into a watched folder;
   the stream's images/s (first file written -> last row written) divided by the
   batch job's images/s scoring the same files (``beam_jobs.score``, launch to
   finish). Both on the local runners, both with the same tiny model.
2. Latency: after the burst, files appear one at a time; file written -> the row
   file holding its row written, median and p95.
3. Hot swap: halfway through the trickle, once the first half's rows are
   written, a new model version is published; every file must have exactly one
   row, and versions must switch 1 -> 2 once.

    python bench/bench_stream.py [--burst 2000] [--trickle 40]
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))


def _rows(output: Path) -> list[tuple[dict, float]]:
    rows = []
    for path in sorted((output / "results").glob("part-*.jsonl")):
        try:
            written = path.stat().st_mtime
            text = path.read_text()
        except FileNotFoundError:  # the work folder is being removed at the end
            continue
        rows.extend((json.loads(line), written) for line in text.splitlines() if line)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--burst", type=int, default=2000)
    parser.add_argument("--trickle", type=int, default=40)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "stream.json"))
    args = parser.parse_args()

    from model_fixtures import build_tiny_model, publish_version
    from support import run_local_stream

    from beam_jobs import score, stream
    from histo_common.samples import generate_samples

    work = Path(tempfile.mkdtemp(prefix="bench-stream-"))
    try:
        generate_samples(str(work / "samples"), count=40, seed=0, size=48)
        tiny = build_tiny_model(work / "models", work / "samples")
        models = Path(tiny.root_uri)
        sources = sorted((work / "samples").rglob("*.png"))
        staging = work / "staging"
        staging.mkdir()
        for i in range(args.burst):
            shutil.copy(sources[i % len(sources)], staging / f"burst_{i:05d}.png")

        # Batch job on the same files.
        started = time.monotonic()
        score.run(
            [
                "--input",
                f"{staging}/*.png",
                "--model",
                str(models),
                "--output",
                str(work / "batch"),
            ]
        )
        batch_rate = args.burst / (time.monotonic() - started)

        uploads = work / "buckets" / "uploads"
        uploads.mkdir(parents=True)
        output = work / "stream"
        marks: dict[str, float] = {}
        trickle_names: list[str] = []

        def scenario(setup: stream.LocalSetup) -> None:
            marks["burst_start"] = time.time()
            for path in sorted(staging.glob("*.png")):
                path.rename(uploads / path.name)
            while len(_rows(output)) < args.burst:
                time.sleep(0.5)
            marks["burst_done"] = max(written for _, written in _rows(output))
            for i in range(args.trickle):
                if i == args.trickle // 2:
                    # Swap once the first half is written: on a loaded machine the stream
                    # can lag the trickle, and every row would then carry version 2.
                    deadline = time.monotonic() + 120
                    while time.monotonic() < deadline and not set(trickle_names) <= {
                        Path(row["uri"]).name for row, _ in _rows(output)
                    }:
                        time.sleep(0.25)
                    publish_version(models, models / "1", 2)
                    marks["swap"] = time.time()
                name = f"trickle_{i:03d}.png"
                shutil.copy(sources[i % len(sources)], uploads / name)
                trickle_names.append(name)
                time.sleep(0.25)

        failures = run_local_stream(
            uploads,
            models,
            output,
            scenario,
            idle_s=6,
            flags=("--model-poll-seconds", "1", "--max-batch-seconds", "0.5"),
        )
        if failures:
            raise failures[0]

        rows = _rows(output)
        by_name: dict[str, list[tuple[dict, float]]] = {}
        for row, written in rows:
            by_name.setdefault(Path(row["uri"]).name, []).append((row, written))
        stream_rate = args.burst / (marks["burst_done"] - marks["burst_start"])
        latencies = []
        versions = []
        for name in trickle_names:
            (row, written), *_ = by_name[name]
            latencies.append(written - (uploads / name).stat().st_mtime)
            versions.append(row["model_version"])
        expected = {f"burst_{i:05d}.png" for i in range(args.burst)} | set(trickle_names)
        lost = sorted(expected - set(by_name))
        duplicated = sorted(n for n, found in by_name.items() if len(found) > 1)
        switches = sum(1 for a, b in itertools.pairwise(versions) if a != b)
        latencies.sort()
        result = {
            "burst": args.burst,
            "batch_images_per_s": round(batch_rate, 1),
            "stream_images_per_s": round(stream_rate, 1),
            "stream_over_batch": round(stream_rate / batch_rate, 3),
            "latency_median_s": round(statistics.median(latencies), 2),
            "latency_p95_s": round(latencies[int(0.95 * (len(latencies) - 1))], 2),
            "hot_swap": {
                "lost": len(lost),
                "duplicated": len(duplicated),
                "versions": versions,
                "switches": switches,
            },
            "runner": stream.LOCAL_RUNNER,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    ok = not lost and not duplicated and switches == 1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
