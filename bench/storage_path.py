"""Worker CPU per image on the storage hot path, two code trees in one run (issue 27, items 1-2).

In one run on this machine: the bare model (OpenVINO INT8 on the deployment's own IR, batches
of 32 pre-decoded 224x224 uint8) at the start, between every two runs and at the end (the
machine's speed drifts); then, for each code tree (``--before``, ``--after``) x store (local
``file://``, S3 on moto's server in its own process) x image set (640x480 and 4000x3000 JPEGs),
a warm ``labeler worker --queues inference`` of that tree (``PYTHONPATH=<tree>``, cwd
``<tree>``, this venv's python) labels N fresh keys sent as ``classify_batch`` tasks of 64.
Each run records images/s, the worker's CPU per image (the prefork child alone and the whole
tree: main process + child), moto's and Redis's CPU apart, the foreign load, every key's one
record (and that it says OpenVINO INT8), and the ratio of the worker's CPU per image to the
bare model's: to the median of every bare measurement of the run, which the issue's targets
(640x480: at most 1.8x on the local store, 2.5x on S3) are judged on, recorded as met or not,
never asserted; and to the two measured just before and just after the run.
Writes ``bench/results/storage_path.json`` (``storage_path.quick.json`` with ``--quick``).

    .venv/bin/python -m bench.storage_path [--quick] [--before TREE] [--after TREE]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.deployment import (
    CommandWorker,
    Deployment,
    Services,
    local_deployment,
    s3_deployment,
    save_mobilenet,
    tree_env,
)
from bench.header import REPO_ROOT, phase, run_header, write_result
from bench.images import ImageSet, keys_for, make_image_set, place_in_store, place_local
from bench.measure import (
    BATCH_SIZE,
    Run,
    decoded_batches,
    file_create_cpu_us,
    measure_bare,
    timed_run,
    warm_up,
)
from bench.procstat import busy_cores, process_tree
from bench.storage_path_report import summarize, table
from labeler.wiring import Stores
from storage import Area
from storage.local import TEMP_DIR_NAME
from testbed.processes import WorkerProcess

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is first imported

# The worktree of issue 27's landed main (9456f67), the reference the issue's figures came from.
DEFAULT_BEFORE = Path("/work/wt/before")
# Random weights: INT8's agreement with FP32 means nothing here, so the bars approve it and
# only its speed is measured (as bench/runtimes.py does).
SERVING: dict[str, Any] = {
    "runtime": "openvino",
    "serving_format": "int8",
    "int8_min_agreement": 0,
    "int8_max_accuracy_drop": 1,
    "relabel_on_promote": "off",
}
# What a tree's worker imports on the hot path: recorded to prove which code ran.
HOT_MODULES = ("labeler", "storage.local", "storage.s3", "workers.inference.batch")


@dataclass(frozen=True)
class Plan:
    """How much of everything; ``QUICK`` only checks that the benchmark works."""

    bare_calls: int  # batches of 32 at the start and at the end
    between_calls: int  # batches of 32 between two runs
    small_distinct: int
    big_distinct: int
    local_small: int  # 640x480 images per run on the local store
    s3_small: int
    big: int  # 4000x3000 images per run, either store
    warmup_images: int
    per_task: int = 64


FULL = Plan(40, 40, 100, 16, 2560, 640, 256, 64)
QUICK = Plan(10, 4, 32, 8, 192, 128, 32, 32)


@dataclass(frozen=True)
class CodeTree:
    role: str  # before or after
    path: Path


@dataclass
class Context:
    plan: Plan
    root: Path
    services: Services
    bare_model: Any
    bare_batches: list[Any]
    sets: dict[str, ImageSet]
    bares: list[dict[str, Any]] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)

    def measure_bare(self) -> None:
        """The bare model now; the first and the last are longer (the workers idle meanwhile)."""
        calls = self.plan.between_calls if self.bares else self.plan.bare_calls
        self.measure_bare_calls(calls)

    def measure_bare_calls(self, calls: int) -> None:
        with phase({"index": len(self.bares)}) as record:
            record |= measure_bare(self.bare_model, self.bare_batches, calls)
        self.bares.append(record)


def describe_tree(tree: CodeTree, env: dict[str, str]) -> dict[str, Any]:
    """Commit, clean flag, and the files a worker of ``tree`` imports the hot path from."""
    script = (
        "import importlib, json\n"
        f"print(json.dumps({{m: importlib.import_module(m).__file__ for m in {HOT_MODULES!r}}}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=tree_env(env, tree.path),
        cwd=tree.path,
        capture_output=True,
        text=True,
        check=True,
    )
    modules = json.loads(done.stdout.strip().splitlines()[-1])

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=tree.path, capture_output=True, text=True
        ).stdout.strip()

    changed = [line for line in git("status", "--porcelain").splitlines() if line]
    return {
        "path": str(tree.path),
        "commit": git("rev-parse", "HEAD"),
        "clean_tree": not changed,
        "changed_files": changed,
        "hot_path_modules": modules,
        "imports_from_tree": all(Path(f).is_relative_to(tree.path) for f in modules.values()),
    }


def prepare(root: Path, services: Services) -> tuple[Deployment, Deployment]:
    """The two deployments, serving one INT8 version: made once, copied to S3 object by object
    (the same IR everywhere, and one INT8 export instead of two)."""
    model_path = save_mobilenet(root / "mobilenet_v2.keras")
    calibration = root / "calibration"
    calibration.mkdir()
    for n, blob in enumerate(make_image_set((640, 480), 40).blobs):
        (calibration / f"{n:03d}.jpg").write_bytes(blob)
    local = local_deployment(services, 0, model_path, calibration_dir=calibration, **SERVING)
    s3 = s3_deployment(services, 1, None, **SERVING)
    source, target = Stores(local.settings).area(Area.MODELS), Stores(s3.settings).area(Area.MODELS)
    for info in source.list():
        target.put(info.key, source.get(info.key).data)
    return local, s3


def load_bare_int8(deployment: Deployment) -> Any:
    """OpenVINO INT8 on the production version's own IR, as the worker will serve it."""
    from workers.inference import OpenVinoModel, read_ir

    registry = Stores(deployment.settings).registry()
    alias = registry.production()
    artifacts = registry.artifacts(alias.version) if alias else None
    if alias is None or artifacts is None or not artifacts.servable("int8"):
        raise RuntimeError(f"no approved INT8 artifact to serve: {artifacts}")
    ir = read_ir(*registry.ir_bytes(alias.version, "int8"))
    return OpenVinoModel(ir, registry.metadata(alias.version), BATCH_SIZE, "int8")


def tree_block(ctx: Context, deployment: Deployment, store: str, tree: CodeTree) -> None:
    """One worker of ``tree`` on ``deployment``: a warm-up then a timed run per image set."""
    worker = ctx.services.start_worker(deployment, f"worker-{tree.role}-{store}", tree.path)
    plan = ctx.plan
    counts = {"640x480": plan.local_small if store == "local" else plan.s3_small}
    counts["4000x3000"] = plan.big
    for set_name, count in counts.items():
        images = ctx.sets[set_name]
        name = f"{tree.role}-{store}-{set_name}"
        run = Run(name, keys_for(name, count), plan.per_task)
        warm = Run(f"warm-{name}", keys_for(f"warm-{name}", plan.warmup_images), plan.per_task)
        record: dict[str, Any] = {"name": name, "tree": tree.role, "store": store}
        record |= {"image_set": set_name, "bare_before": len(ctx.bares)}
        try:
            _place(ctx, deployment, images, warm.keys + run.keys)
            record["warm_up_seconds"] = warm_up(deployment, warm)
            if deployment.local_root is not None:  # where the worker's records will be made
                probe = deployment.local_root / TEMP_DIR_NAME / f"probe-{name}"
                record["file_create_cpu_us"] = file_create_cpu_us(probe)
            ctx.measure_bare()
            record["bare_before"] = len(ctx.bares) - 1
            record |= measured_run(ctx, deployment, worker, run)
        except Exception as exc:  # one tree's failure must not lose the other's figures
            record["error"] = f"{type(exc).__name__}: {str(exc)[:2000]}"
        ctx.runs.append(record)
        print(f"  {name}: {record.get('images_per_second', record.get('error'))}", flush=True)
    worker.stop()


def _place(ctx: Context, deployment: Deployment, images: ImageSet, keys: list[str]) -> None:
    if deployment.local_root is not None:
        place_local(images, deployment.local_root / "incoming", keys)
    else:
        place_in_store(images, deployment.incoming, keys)


def measured_run(
    ctx: Context, deployment: Deployment, worker: WorkerProcess | CommandWorker, run: Run
) -> dict[str, Any]:
    """``run`` through the warm worker; CPU of its main process and child apart."""
    assert worker.process is not None
    main = worker.process.pid
    children = process_tree(main)[1:]
    pids = {
        "worker_main": [main],
        "worker_child": children,
        "redis": ctx.services.redis_pid(),
        "moto": ctx.services.moto_pids(),
        "bench": [os.getpid()],
    }
    result = timed_run(deployment, run, pids)
    result["worker_pids"] = {"main": main, "children": children}
    # A replaced child takes its CPU with it: the figures would be too low.
    result["child_replaced"] = process_tree(main)[1:] != children
    result["records"] = check_records(deployment, run)
    result["settings"] = {
        "worker": "labeler worker --queues inference (prefork, concurrency 1)",
        "keys_per_task": run.per_task,
        **{
            k: getattr(deployment.settings, k)
            for k in ("inference_batch_size", "decode_threads", "io_threads", "serving_format")
        },
    }
    return result


def check_records(deployment: Deployment, run: Run) -> dict[str, Any]:
    """Every key has exactly one record, a label made by OpenVINO INT8 in this run."""
    listed = Stores(deployment.settings).area(Area.LABELS).list(f"{run.name}/", etags=False)
    with ThreadPoolExecutor(8) as pool:
        records = list(pool.map(deployment.labels.read, run.keys))
    found = [(k, r) for k, r in zip(run.keys, records, strict=True) if r is not None]
    served = Counter(f"{r.runtime} {r.serving_format}" for _, r in found)
    errored = sum(1 for _, r in found if not r.ok)
    foreign = sum(
        1 for k, r in found if r.source_key != k or not (r.batch_id or "").startswith(run.name)
    )
    count = sum(1 for _ in listed)
    return {
        "keys": len(run.keys),
        "records_listed": count,
        "missing": len(run.keys) - len(found),
        "errored": errored,
        "not_from_this_run": foreign,
        "served_by": dict(served),
        "exactly_one_each": count == len(run.keys) == len(found) and not foreign,
        "all_openvino_int8": served == Counter({"openvino int8": len(run.keys)}),
    }


def run_benchmark(plan: Plan, root: Path, trees: list[CodeTree]) -> dict[str, Any]:
    quiet = busy_cores()
    print(f"preparing the model, INT8 and images (machine busy: {quiet} cores)...", flush=True)
    result: dict[str, Any] = {"machine_busy_cores_before_start": quiet}
    with ExitStack() as stack:
        services = Services(root, stack)
        local, s3 = prepare(root, services)
        result["trees"] = {t.role: describe_tree(t, local.env) for t in trees}
        small = make_image_set((640, 480), plan.small_distinct)
        big = make_image_set((4000, 3000), plan.big_distinct)
        sets = {s.name: s for s in (small, big)}
        ctx = Context(plan, root, services, load_bare_int8(local), decoded_batches(small), sets)
        for store, deployment in (("local", local), ("s3", s3)):
            for tree in trees:
                print(f"{tree.role} tree, {store} store...", flush=True)
                tree_block(ctx, deployment, store, tree)
        ctx.measure_bare_calls(plan.bare_calls)
    result["bare"] = ctx.bares
    result["runs"] = ctx.runs
    result["image_sets"] = {s.name: s.describe() for s in (small, big)}
    result["model"] = {
        "architecture": "mobilenet_v2 224x224, 10 classes, random weights (offline)",
        "serving": SERVING,
        "bare": f"OpenVINO INT8 on the version's IR, batches of {BATCH_SIZE}, "
        "pre-decoded 224x224 uint8, process CPU",
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few images: check that it works")
    parser.add_argument("--before", type=Path, default=DEFAULT_BEFORE, help="code tree before")
    parser.add_argument("--after", type=Path, default=REPO_ROOT, help="code tree after")
    args = parser.parse_args()
    trees = [CodeTree("before", args.before.resolve()), CodeTree("after", args.after.resolve())]
    for tree in trees:
        if not (tree.path / "labeler" / "__init__.py").is_file():
            parser.error(f"--{tree.role} {tree.path} is not a labeler code tree")
    plan = QUICK if args.quick else FULL
    signal.signal(signal.SIGTERM, _interrupt)  # run the finally blocks: stop what we started
    result: dict[str, Any] = {
        **run_header(),
        "benchmark": "storage hot path, before and after (issue 27, items 1-2)",
        "quick": args.quick,
        "plan": asdict(plan),
    }
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="labeler-bench-storage-") as tmp:
        result |= run_benchmark(plan, Path(tmp), trees)
    result["total_seconds"] = round(time.perf_counter() - started, 1)
    result["summary"] = summarize(result)
    path = write_result("storage_path.quick" if args.quick else "storage_path", result)
    print(table(result))
    print(f"results: {path}")


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    main()
