"""Serving memory and cold start (issue 27): a worker that serves OpenVINO without TensorFlow.

One run on this machine compares two checkouts of the code, "before" (``--before``, a commit
whose worker imports TensorFlow whatever it serves) and "after" (``--after``, this tree by
default), each running its own ``labeler worker`` (same interpreter, ``PYTHONPATH`` and working
directory set to the checkout), for two runtimes: OpenVINO INT8 (``LABELER_RUNTIME=auto`` on
this CPU-only machine) and TensorFlow FP32, the unchanged reference. Per worker launch:

- cold start: from launching ``labeler worker`` to the first label record written (the record
  file's mtime) for batches already waiting in the queue; launches alternate before/after;
- memory (first launch of each): VmRSS and peak (VmHWM) of the prefork child and of the parent
  once 2,000 640x480 JPEGs are labeled, and whether each process mapped TensorFlow's libraries.

MobileNetV2 224x224 with random weights (nothing is downloaded); INT8 made with the bench's
approval bars, as in bench/runtimes.py. Every launch records the CPU other processes used
meanwhile. Writes ``bench/results/serving_memory.json``.

    .venv/bin/python -m bench.serving_memory [--before DIR] [--after DIR] [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.header import REPO_ROOT, run_header, trusted, write_result

if TYPE_CHECKING:
    from bench.deployment import Deployment, Services

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is first imported

BEFORE_DEFAULT = Path("/work/wt/before")  # a checkout of 9456f67, before issue 27
# name -> LABELER_RUNTIME: auto picks OpenVINO (and its INT8) on a machine without a GPU
RUNTIMES = {"openvino": "auto", "tensorflow": "tensorflow"}
TARGET_CHILD_RSS_MB = 400  # issue 27: an OpenVINO worker child after 2,000 images


def _source(path: Path) -> dict[str, Any]:
    """The checkout a worker runs: its path, commit and whether it has uncommitted changes."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=path, capture_output=True, text=True, check=True
        ).stdout.strip()

    return {
        "path": str(path),
        "commit": git("rev-parse", "HEAD"),
        "clean_tree": not git("status", "--porcelain"),
    }


def _memory(pid: int) -> dict[str, Any]:
    """VmRSS and VmHWM (peak) of ``pid`` in MB, and whether it mapped TensorFlow."""
    from testbed.processes import tensorflow_libraries

    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return {
        "rss_mb": round(int(fields["VmRSS"].split()[0]) / 1024, 1),
        "peak_rss_mb": round(int(fields["VmHWM"].split()[0]) / 1024, 1),
        "tensorflow_loaded": bool(tensorflow_libraries(pid)),
    }


def _first_label_at(deployment: Deployment, keys: list[str]) -> float:
    """When the first of ``keys``' label records was written (file mtime, seconds since epoch)."""
    assert deployment.local_root is not None
    labels = deployment.local_root / "labels"
    return min((labels / f"{key}.json").stat().st_mtime for key in keys)


def launch(
    services: Services,
    deployment: Deployment,
    name: str,
    source: Path,
    keys: list[str],
) -> dict[str, Any]:
    """Queue ``keys`` in batches of 32, launch the worker of ``source``, wait for every label.

    Returns the cold start, the memory of the parent and child once all are labeled, what
    served them, and the CPU of everything else on the machine meanwhile.
    """
    from bench.measure import RESULT_TIMEOUT, Run, send_batches
    from bench.procstat import CpuWindow, process_tree

    results = send_batches(deployment, Run(name, keys, 32))
    window = CpuWindow({"bench": [os.getpid()], "redis": services.redis_pid()}).start()
    launched = time.time()
    worker = services.start_worker(deployment, name, source)
    assert worker.process is not None
    parent, *children = process_tree(worker.process.pid)
    window.add_started("worker", [parent, *children])
    outcomes = [result.get(timeout=RESULT_TIMEOUT) for result in results]
    cpu = window.stop()
    labeled = sum(int(o["labeled"]) for o in outcomes)
    if labeled != len(keys):
        raise RuntimeError(f"{name}: expected {len(keys)} labels, got {outcomes}")
    (child,) = children  # concurrency 1
    record = deployment.labels.read(keys[0])
    assert record is not None
    out = {
        "name": name,
        "images": len(keys),
        "cold_start_seconds": round(_first_label_at(deployment, keys) - launched, 2),
        "served": f"{record.runtime} {record.serving_format}",
        "child": _memory(child),
        "parent": _memory(parent),
        "cpu": cpu,
    }
    worker.stop()
    return out


def measure(
    root: Path, sources: dict[str, Path], images_per_run: int, launches: int
) -> dict[str, list[dict[str, Any]]]:
    """Every launch of every runtime and checkout; the first launch of each labels
    ``images_per_run`` images (memory), the others one batch of 32 (cold start)."""
    from bench.deployment import Services, local_deployment, save_mobilenet
    from bench.images import keys_for, make_image_set, place_local
    from bench.runtimes import add_int8

    model_path = save_mobilenet(root / "mobilenet.keras")
    images = make_image_set((640, 480), 40)
    runs: dict[str, list[dict[str, Any]]] = {}
    with ExitStack() as stack:
        services = Services(root / "services", stack)
        for db, (runtime, setting) in enumerate(RUNTIMES.items()):
            deployment = local_deployment(services, db, model_path, runtime=setting)
            assert deployment.local_root is not None
            if runtime == "openvino":
                add_int8(deployment, model_path, images)
            for n in range(launches):
                for tree, source in sources.items():
                    name = f"{runtime}-{tree}-{n}"
                    keys = keys_for(name, images_per_run if n == 0 else 32)
                    place_local(images, deployment.local_root / "incoming", keys)
                    run = launch(services, deployment, name, source, keys)
                    run |= {"runtime": runtime, "tree": tree, "launch": n}
                    runs.setdefault(runtime, []).append(run)
                    child = run["child"]
                    print(
                        f"  {name}: cold start {run['cold_start_seconds']} s, child "
                        f"{child['rss_mb']} MB (TensorFlow: {child['tensorflow_loaded']})",
                        flush=True,
                    )
    return runs


def compare(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per runtime, before and after: memory after the big run, median cold start, trusted."""
    out: dict[str, Any] = {}
    for runtime, records in runs.items():
        figures: dict[str, Any] = {}
        for tree in ("before", "after"):
            mine = [r for r in records if r["tree"] == tree]
            big = mine[0]
            starts = [r["cold_start_seconds"] for r in mine]
            figures[tree] = {
                "served": big["served"],
                "child_rss_mb": big["child"]["rss_mb"],
                "child_peak_rss_mb": big["child"]["peak_rss_mb"],
                "parent_rss_mb": big["parent"]["rss_mb"],
                "child_tensorflow_loaded": big["child"]["tensorflow_loaded"],
                "parent_tensorflow_loaded": big["parent"]["tensorflow_loaded"],
                "cold_start_seconds_median": round(statistics.median(starts), 2),
                "cold_start_seconds": starts,
            }
        figures["trusted"] = trusted(*records)
        out[runtime] = figures
    openvino = out["openvino"]["after"]
    out["target_met"] = {
        f"openvino child under {TARGET_CHILD_RSS_MB} MB": openvino["child_rss_mb"]
        < TARGET_CHILD_RSS_MB,
        "openvino cold start faster": openvino["cold_start_seconds_median"]
        < out["openvino"]["before"]["cold_start_seconds_median"],
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, default=BEFORE_DEFAULT, help="older checkout")
    parser.add_argument("--after", type=Path, default=REPO_ROOT, help="newer checkout")
    parser.add_argument("--launches", type=int, default=3, help="worker launches per variant")
    parser.add_argument("--quick", action="store_true", help="few images: check that it works")
    args = parser.parse_args()
    sources = {"before": args.before.resolve(), "after": args.after.resolve()}
    images = 128 if args.quick else 2000
    result: dict[str, Any] = {
        **run_header(),
        "benchmark": "serving memory and cold start (issue 27)",
        "quick": args.quick,
        "sources": {tree: _source(path) for tree, path in sources.items()},
        "settings": {
            "model": "MobileNetV2 224x224, 10 classes, random weights",
            "images": f"{images} JPEGs 640x480 for memory, then batches of 32 for cold start",
            "worker": "labeler worker --queues inference (prefork, concurrency 1), batch 32",
            "runtimes": RUNTIMES,
        },
    }
    with tempfile.TemporaryDirectory(prefix="labeler-bench-serving-memory-") as tmp:
        result["runs"] = measure(Path(tmp), sources, images, 1 if args.quick else args.launches)
    result["comparison"] = compare(result["runs"])
    name = "serving_memory.quick" if args.quick else "serving_memory"
    print(f"results: {write_result(name, result)}")


if __name__ == "__main__":
    main()
