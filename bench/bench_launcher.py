"""The scoring job's launcher at 10,000 and 100,000 inputs: time to launch and peak memory.

For each count, tiny files are written into a temporary folder (1,000 per
subfolder) and ``python -m beam_jobs.score --input '<folder>/**.png'`` is
started in a child process whose ``Pipeline.run`` is replaced by a stop: the
child reports the seconds from its start to the moment it hands the pipeline to
the runner (the launcher's whole work: flags, input check, model version,
output check, building the graph), its peak RSS and its RSS then (the peak
is set by importing TensorFlow, so the RSS at launch shows growth the peak
hides). The figures are
ratios 100k/10k (1.0: the launcher does not grow with the inputs), each the
fastest of ``--repeats`` launches after one warm-up launch. With
``--baseline-repo`` (a checkout of the launcher before matching moved into the
pipeline) the same is measured for that code, in the same run.

    python bench/bench_launcher.py [--counts 10000 100000] [--baseline-repo ../main]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# Runs in the child: the real command line, stopped where the runner would take over.
CHILD = """
import json, os, resource, sys, time
started = time.monotonic()
import apache_beam as beam

def _stop(self, *args, **kwargs):
    with open("/proc/self/status") as status:
        rss_kib = next(int(l.split()[1]) for l in status if l.startswith("VmRSS:"))
    report = {
        "launch_s": time.monotonic() - started,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_at_launch_mib": rss_kib / 1024,
    }
    with open(os.environ["BENCH_REPORT"], "w") as fh:
        json.dump(report, fh)
    os._exit(0)

beam.Pipeline.run = _stop
from beam_jobs import score
sys.exit(score.main(sys.argv[1:]))
"""


def make_inputs(root: Path, count: int, per_folder: int = 1000) -> Path:
    """Write ``count`` 8-byte files named ``*.png`` under ``root`` (1,000 per folder)."""
    for i in range(count):
        folder = root / f"f{i // per_folder:04d}"
        if i % per_folder == 0:
            folder.mkdir(parents=True)
        (folder / f"img_{i:07d}.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    return root


def launch(repo: Path, inputs: Path, model: str, output: Path, report: Path) -> dict:
    """Run the launcher of ``repo`` in a child process; return its report."""
    env = dict(os.environ, PYTHONPATH=str(repo), BENCH_REPORT=str(report))
    argv = ["--input", f"{inputs}/**.png", "--model", model, "--output", str(output)]
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", CHILD, *argv], env=env, capture_output=True, text=True, cwd=repo
    )
    wall = time.monotonic() - started
    if done.returncode != 0 or not report.exists():
        raise RuntimeError(f"launcher in {repo} failed ({done.returncode}): {done.stderr[-2000:]}")
    result = json.loads(report.read_text())
    report.unlink()
    result["process_s"] = wall
    return {k: round(v, 2) for k, v in result.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", type=int, nargs=2, default=[10_000, 100_000])
    parser.add_argument("--baseline-repo", help="a checkout of the earlier launcher to compare")
    parser.add_argument("--repeats", type=int, default=2, help="launches per case; fastest kept")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "launcher.json"))
    args = parser.parse_args()

    from benchkit import export_untrained_cnn

    repos = {"pipeline_matching": REPO}
    if args.baseline_repo:
        repos["launcher_matching_baseline"] = Path(args.baseline_repo).resolve()
    work = Path(tempfile.mkdtemp(prefix="bench-launcher-"))
    figures: dict[str, dict] = {name: {} for name in repos}
    try:
        model = export_untrained_cnn(str(work / "models"), image_size=48)
        for count in args.counts:
            t = time.monotonic()
            inputs = make_inputs(work / f"inputs-{count}", count)
            print(f"{count} inputs written in {time.monotonic() - t:.1f} s", flush=True)
            if count == args.counts[0]:  # warm the page cache (imports) for every repo
                for repo in repos.values():
                    launch(repo, inputs, model, work / "warm-up", work / "report.json")
                    shutil.rmtree(work / "warm-up", ignore_errors=True)
            for name, repo in repos.items():
                runs = []
                for i in range(args.repeats):
                    output = work / f"out-{name}-{count}-{i}"
                    runs.append(launch(repo, inputs, model, output, work / "report.json"))
                    shutil.rmtree(output, ignore_errors=True)
                best = {key: min(r[key] for r in runs) for key in runs[0]}
                figures[name][str(count)] = best
                print(f"{name:28s} {count:>7d} inputs: {best}", flush=True)
            shutil.rmtree(inputs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    small, large = (str(c) for c in args.counts)
    uname = os.uname()
    machine = f"{uname.sysname} {uname.machine}, {os.cpu_count()} cores, local disk"
    result: dict = {"counts": args.counts, "machine": machine, "input": "local folder"}
    for name, cases in figures.items():
        result[name] = {
            **cases,
            "launch_ratio": round(cases[large]["launch_s"] / cases[small]["launch_s"], 3),
            "peak_rss_ratio": round(cases[large]["peak_rss_mib"] / cases[small]["peak_rss_mib"], 3),
            "rss_at_launch_ratio": round(
                cases[large]["rss_at_launch_mib"] / cases[small]["rss_at_launch_mib"], 3
            ),
        }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
