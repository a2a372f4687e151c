"""Inference throughput and memory, bare model vs real deployments (issue 3).

Runs, in one go on this machine: the bare model (the ceiling, at the start and at the end), the
per-stage CPU costs and the worker's ``BatchClassifier`` in this process (where a task's time
goes), a real ``labeler worker`` on a local store (640x480 and 4000x3000 JPEGs, tasks of 64 and
128 images) and on moto's S3 server, a naive one-task-per-image Celery baseline, and the
worker's RSS over thousands of images. Every measurement records the CPU other jobs used
meanwhile, so a disturbed run can be told from a clean one. Writes
``bench/results/inference.json`` (``inference.quick.json`` with ``--quick``) and prints a
summary. Targets are recorded, never asserted.

    .venv/bin/python -m bench.inference [--quick]
    .venv/bin/python -m bench.inference --report-only bench/results/inference.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import naive_worker
from bench.deployment import (
    Deployment,
    Services,
    local_deployment,
    s3_deployment,
    save_mobilenet,
)
from bench.engine_profile import profile_engine
from bench.header import run_header
from bench.images import ImageSet, keys_for, make_image_set, place_in_store, place_local
from bench.measure import (
    RESULT_TIMEOUT,
    Run,
    decoded_batches,
    load_bare_model,
    measure_bare,
    measure_stage_costs,
    record_timings,
    timed_run,
    warm_up,
)
from bench.procstat import (
    CpuWindow,
    RssSampler,
    busy_cores,
    process_tree,
    rss_bytes,
)
from bench.report import finish, summary
from workers.inference import LoadedModel

RESULTS_DIR = Path(__file__).parent / "results"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is first imported


@dataclass(frozen=True)
class Plan:
    """How much of everything; ``QUICK`` is for checking the benchmark itself works."""

    bare_calls: int
    small_distinct: int
    big_distinct: int
    small_images: int  # 640x480 per local run: >= 15 s of work at the bare model's speed
    big_images: int  # 4000x3000 per local run
    s3_images: int
    naive_images: int
    memory_images: int
    warmup_images: int
    engine_small_images: int  # in-process engine profile
    engine_big_images: int
    per_task: tuple[int, ...] = (64, 128)


FULL = Plan(20, 200, 32, 1280, 640, 1280, 200, 5000, 64, 640, 256)
QUICK = Plan(5, 32, 8, 128, 64, 128, 20, 500, 32, 64, 32)


@dataclass
class Context:
    """What the measurements share: the plan, the model file, image sets, scratch space."""

    plan: Plan
    root: Path
    model_path: Path
    small: ImageSet
    big: ImageSet


def run_settings(deployment: Deployment, per_task: int) -> dict[str, Any]:
    s = deployment.settings
    return {
        "batch_max_images": per_task,  # keys per classify_batch task, as `labeler submit` sends
        "inference_batch_size": s.inference_batch_size,
        "decode_threads": s.decode_threads,
        "io_threads": s.io_threads,
        "worker": "labeler worker --queues inference (prefork, concurrency 1)",
    }


def engine_runs(ctx: Context, model: LoadedModel) -> list[dict[str, Any]]:
    """The BatchClassifier in this process: each set x task size, and one decode thread."""
    runs = []
    sets = ((ctx.small, ctx.plan.engine_small_images), (ctx.big, ctx.plan.engine_big_images))
    for images, count in sets:
        variants = [(per_task, 2) for per_task in ctx.plan.per_task] + [(max(ctx.plan.per_task), 1)]
        for per_task, decode_threads in variants:
            run = profile_engine(
                model,
                images,
                count,
                per_task,
                ctx.root / "engine",
                decode_threads=decode_threads,
            )
            runs.append(run)
            print(f"  {run['name']}: {run['images_per_second']} images/s", flush=True)
    return runs


def local_runs(
    ctx: Context, services: Services, bare: Callable[[], dict[str, Any]]
) -> tuple[Deployment, list[dict[str, Any]]]:
    """Both image sets x both task sizes through one warm worker on a ``file://`` store.

    The bare model is measured again just before and just after each run (the worker idle
    meanwhile): this machine's speed drifts by more than 10% within minutes, so a run is also
    compared with the ceiling measured around it, not only with the best of the whole benchmark.
    """
    deployment = local_deployment(services, 0, ctx.model_path)
    worker = services.start_worker(deployment, "worker-local")
    pids = {
        "worker": deployment.worker_pids(),
        "redis": services.redis_pid(),
        "bench": [os.getpid()],
    }
    runs = []
    for images, count in ((ctx.small, ctx.plan.small_images), (ctx.big, ctx.plan.big_images)):
        for per_task in ctx.plan.per_task:
            name = f"local-{images.name}-b{per_task}"
            run = Run(name, keys_for(name, count), per_task)
            # The worker loads and traces its model during the warm-up: the bare reference
            # before the run starts only after that, so the two never share the cores.
            warm_seconds = _warm_local(ctx, deployment, images, run)
            before = bare()
            result = _local_run(deployment, images, run, pids, warm_seconds)
            result["adjacent_bare"] = [before, bare()]
            runs.append(result)
            print(f"  {name}: {result['images_per_second']} images/s", flush=True)
    worker.stop()
    return deployment, runs


def _warm_local(ctx: Context, deployment: Deployment, images: ImageSet, run: Run) -> float:
    """Place the run's images and warm the worker on a batch of others; returns its seconds."""
    assert deployment.local_root is not None
    warm = Run(
        f"warm-{run.name}", keys_for(f"warm-{run.name}", ctx.plan.warmup_images), run.per_task
    )
    place_local(images, deployment.local_root / "incoming", warm.keys + run.keys)
    return warm_up(deployment, warm)


def _local_run(
    deployment: Deployment,
    images: ImageSet,
    run: Run,
    pids: dict[str, list[int]],
    warm_seconds: float,
) -> dict[str, Any]:
    result = timed_run(deployment, run, pids)
    return {
        "name": run.name,
        "store": "local",
        "image_set": images.name,
        **result,
        "warm_up_seconds": warm_seconds,
        "settings": run_settings(deployment, run.per_task),
        "record_timings_ms": record_timings(deployment.labels, run.keys),
    }


def memory_run(ctx: Context, services: Services, deployment: Deployment) -> dict[str, Any]:
    """A fresh worker's RSS (main + prefork child) before and after many 640x480 images."""
    assert deployment.local_root is not None
    worker = services.start_worker(deployment, "worker-memory")
    per_task = 64
    warm = Run("warm-memory", keys_for("warm-memory", ctx.plan.warmup_images), per_task)
    run = Run("memory", keys_for("memory", ctx.plan.memory_images), per_task)
    place_local(ctx.small, deployment.local_root / "incoming", warm.keys + run.keys)
    warm_up(deployment, warm)
    pids = deployment.worker_pids()
    start = {pid: rss_bytes([pid]) for pid in pids}
    with RssSampler(pids[0], every=1.0) as sampler:
        result = timed_run(
            deployment,
            run,
            {"worker": pids, "redis": services.redis_pid(), "bench": [os.getpid()]},
        )
    end = {pid: rss_bytes([pid]) for pid in process_tree(pids[0])}
    worker.stop()
    rss_start, rss_end = sum(start.values()), sum(end.values())
    return {
        "image_set": ctx.small.name,
        **result,
        "settings": run_settings(deployment, per_task),
        "rss_start_mib": _mib(rss_start),
        "rss_end_mib": _mib(rss_end),
        "rss_peak_mib": _mib(max([rss_end, *(rss for _, rss in sampler.samples)])),
        "rss_growth_percent": round(100 * (rss_end - rss_start) / rss_start, 2),
        "rss_per_process_mib": {"start": _by_pid(start), "end": _by_pid(end)},
        "rss_samples_mib": [
            (t, _mib(rss)) for t, rss in sampler.samples[:: max(1, len(sampler.samples) // 60)]
        ],
    }


def naive_run(ctx: Context, services: Services, deployment: Deployment) -> dict[str, Any]:
    """One task per image, full decode, ``model.predict`` on one image (bench.naive_worker)."""
    assert deployment.local_root is not None
    incoming = deployment.local_root / "incoming"
    warm, keys = keys_for("warm-naive", 3), keys_for("naive", ctx.plan.naive_images)
    place_local(ctx.small, incoming, warm + keys)
    db = 2
    worker = services.start_naive_worker(db, incoming, ctx.model_path)
    app = naive_worker.make_app(services.redis_url(db))
    for result in [app.send_task(naive_worker.TASK, args=[k]) for k in warm]:
        result.get(timeout=RESULT_TIMEOUT)
    assert worker.process is not None
    pids = {
        "worker": process_tree(worker.process.pid),
        "redis": services.redis_pid(),
        "bench": [os.getpid()],
    }
    window = CpuWindow(pids).start()
    started = time.perf_counter()
    results = [app.send_task(naive_worker.TASK, args=[key]) for key in keys]
    for result in results:
        result.get(timeout=RESULT_TIMEOUT)
    seconds = time.perf_counter() - started
    cpu = window.stop()
    worker.stop()
    return {
        "image_set": ctx.small.name,
        "store": "local",
        "images": len(keys),
        "tasks": len(keys),
        "seconds": round(seconds, 3),
        "images_per_second": round(len(keys) / seconds, 2),
        "cpu": cpu,
        "settings": {
            "worker": "celery -A bench.naive_worker worker --pool=prefork --concurrency=1",
            "per_task": 1,
            "decode": 'Image.open(...).convert("RGB").resize((224, 224)), no draft',
            "predict": "keras Model.predict(x[None]) per image",
        },
    }


def s3_runs(ctx: Context, services: Services) -> list[dict[str, Any]]:
    """640x480 through a worker whose every area is on moto's S3 server."""
    deployment = s3_deployment(services, 1, ctx.model_path)
    worker = services.start_worker(deployment, "worker-s3")
    pids = {
        "worker": deployment.worker_pids(),
        "redis": services.redis_pid(),
        "moto": deployment.extra_pids["moto"],
        "bench": [os.getpid()],
    }
    runs = []
    for per_task in ctx.plan.per_task:
        name = f"s3-{ctx.small.name}-b{per_task}"
        run = Run(name, keys_for(name, ctx.plan.s3_images), per_task)
        warm = Run(f"warm-{name}", keys_for(f"warm-{name}", ctx.plan.warmup_images), per_task)
        place_in_store(ctx.small, deployment.incoming, warm.keys + run.keys)
        warm_seconds = warm_up(deployment, warm)
        result = timed_run(deployment, run, pids)
        cpu = result["cpu"]
        cpu["moto_share_of_machine"] = round(
            cpu["moto_cpu_seconds"] / (cpu["wall_seconds"] * (os.cpu_count() or 1)), 3
        )
        runs.append(
            {
                "name": name,
                "store": "s3 (moto server)",
                "image_set": ctx.small.name,
                **result,
                "warm_up_seconds": warm_seconds,
                "settings": run_settings(deployment, per_task),
                "record_timings_ms": record_timings(deployment.labels, run.keys, sample=100),
            }
        )
        print(f"  {name}: {result['images_per_second']} images/s", flush=True)
    worker.stop()
    return runs


def run_benchmark(plan: Plan, root: Path) -> dict[str, Any]:
    """Every measurement, in an order that keeps the bare model's two runs at both ends."""
    quiet = busy_cores()
    print(f"preparing images and the model (machine busy: {quiet} cores)...", flush=True)
    ctx = Context(
        plan,
        root,
        save_mobilenet(root / "mobilenet_v2.keras"),
        make_image_set((640, 480), plan.small_distinct),
        make_image_set((4000, 3000), plan.big_distinct),
    )
    model = load_bare_model(ctx.model_path, root / "bare-models")
    batches = decoded_batches(ctx.small)
    results: dict[str, Any] = {"machine_busy_cores_before_start": quiet}
    results["bare"] = [measure_bare(model, batches, plan.bare_calls)]
    print(f"  bare: {results['bare'][0]['images_per_second']} images/s", flush=True)
    results["stage_costs"] = {
        s.name: measure_stage_costs(s, root / "profile") for s in (ctx.small, ctx.big)
    }
    print("engine in-process...", flush=True)
    results["engine_in_process"] = engine_runs(ctx, model)
    with ExitStack() as stack:
        services = Services(root, stack)
        print("end to end, local store...", flush=True)
        deployment, results["end_to_end_local"] = local_runs(
            ctx, services, lambda: measure_bare(model, batches, plan.bare_calls // 2)
        )
        print("memory...", flush=True)
        results["memory"] = memory_run(ctx, services, deployment)
        print("naive baseline...", flush=True)
        results["naive"] = naive_run(ctx, services, deployment)
        print("end to end, S3 (moto)...", flush=True)
        results["end_to_end_s3"] = s3_runs(ctx, services)
    results["bare"].append(measure_bare(model, batches, plan.bare_calls))
    results["image_sets"] = {s.name: s.describe() for s in (ctx.small, ctx.big)}
    results["model"] = {
        "architecture": "mobilenet_v2 (workers.training.architectures.make_backbone_classifier)",
        "input": [224, 224, 3],
        "classes": 10,
        "weights": None,
        "file_bytes": ctx.model_path.stat().st_size,
    }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few images: check that it works")
    parser.add_argument("--output", type=Path, help="default: bench/results/inference.json")
    parser.add_argument(
        "--report-only",
        type=Path,
        metavar="FILE",
        help="measure nothing: recompute ratios and targets of FILE and print its summary",
    )
    args = parser.parse_args()
    if args.report_only:
        results = json.loads(args.report_only.read_text())
        _write(results, args.report_only)
        return
    plan = QUICK if args.quick else FULL
    output = args.output or RESULTS_DIR / (
        "inference.quick.json" if args.quick else "inference.json"
    )
    signal.signal(signal.SIGTERM, _interrupt)  # run the finally blocks: stop what we started
    header = run_header()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="labeler-bench-") as tmp:
        measured = run_benchmark(plan, Path(tmp))
    results = {
        **header,
        "benchmark": "inference (issue 3)",
        "quick": args.quick,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "total_seconds": round(time.perf_counter() - started, 1),
        "plan": asdict(plan),
        **measured,
    }
    _write(results, output)


def _write(results: dict[str, Any], output: Path) -> None:
    """Derive ratios and target checks, write the JSON, print the summary."""
    finish(results)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    print(summary(results))
    print(f"results: {output}")


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def _mib(value: int) -> float:
    return round(value / 2**20, 1)


def _by_pid(rss: dict[int, int]) -> dict[str, float]:
    return {str(pid): _mib(value) for pid, value in rss.items()}


if __name__ == "__main__":
    main()
