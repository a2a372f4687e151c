"""Ratios, target checks, a CPU-cost model of where the time goes, and the printed summary.

Everything here is derived from the measurements, so it can be recomputed from a results file
(``python -m bench.inference --report-only FILE``) without measuring again.
"""

from __future__ import annotations

import statistics
from typing import Any

from bench.header import FOREIGN_LOAD_LIMIT

# (image set, threshold): end-to-end images/s over the bare model's, local store.
RATIO_TARGETS = (("640x480", 0.90), ("4000x3000", 0.65))
NAIVE_FACTOR_TARGET = 5.0
RSS_GROWTH_TARGET_PERCENT = 10.0


def finish(results: dict[str, Any]) -> None:
    """Add ratios, CPU-normalised estimates, interference flags and target checks in place."""
    bare = max(b["images_per_second"] for b in results["bare"])
    infer_cpu = statistics.mean(b["cpu_ms_per_image"] for b in results["bare"])
    results["bare_reference"] = {
        "images_per_second": bare,
        "cpu_ms_per_image": round(infer_cpu, 2),
        "why": "the better of the two bare runs (start and end of the benchmark): the ceiling",
    }
    for run in results["engine_in_process"]:
        run["ratio_to_bare"] = round(run["images_per_second"] / bare, 3)
        _add_cpu_figures(run, run["cpu"]["bench_cpu_seconds"], infer_cpu)
    for run in _e2e(results):
        run["ratio_to_bare"] = round(run["images_per_second"] / bare, 3)
        _add_cpu_figures(run, run["cpu"]["worker_cpu_seconds"], infer_cpu)
        if "adjacent_bare" in run:
            around = statistics.mean(b["images_per_second"] for b in run["adjacent_bare"])
            run["ratio_to_adjacent_bare"] = round(run["images_per_second"] / around, 3)
            # The comparison counts only when the run and both references around it had the
            # cores: a disturbed bare run makes the ratio look better than it is.
            loads = [b["foreign_cores"] for b in run["adjacent_bare"]]
            loads.append(run["cpu"]["foreign_cores"])
            run["adjacent_comparison_trusted"] = max(loads) <= FOREIGN_LOAD_LIMIT
    naive = results["naive"]
    naive["cpu_ms_per_image"] = round(
        1000 * naive["cpu"]["worker_cpu_seconds"] / naive["images"], 2
    )
    best_small = _best(results["end_to_end_local"], "640x480")
    results["ratios"] = {
        **{f"{r['name']}_to_bare": r["ratio_to_bare"] for r in _e2e(results)},
        "local-640x480-best_to_naive": round(
            best_small["images_per_second"] / naive["images_per_second"], 2
        ),
        "local-640x480-best_to_naive_cpu_normalised": round(
            naive["cpu_ms_per_image"] / best_small["cpu_ms_per_image"], 2
        ),
        "naive_to_bare": round(naive["images_per_second"] / bare, 3),
    }
    results["interference"] = _interference(results)
    results["cpu_cost_model"] = _cpu_cost_model(results)
    results["targets"] = _targets(results)


def _add_cpu_figures(run: dict[str, Any], cpu_seconds: float, infer_cpu: float) -> None:
    """CPU per image, and the ratio the run would reach on an idle machine if CPU-bound.

    ``cpu_normalised_ratio`` = the bare model's CPU per image / this run's CPU per image: what
    images/s over bare becomes when both get the same cores. It does not depend on how many
    cores another user's jobs took meanwhile, but it assumes no pipeline bubbles (an upper bound).
    """
    run["cpu_ms_per_image"] = round(1000 * cpu_seconds / run["images"], 2)
    run["cpu_normalised_ratio"] = round(infer_cpu / run["cpu_ms_per_image"], 3)
    if "moto_cpu_seconds" in run["cpu"]:  # moto shares this machine; a real S3 would not
        with_moto = 1000 * (cpu_seconds + run["cpu"]["moto_cpu_seconds"]) / run["images"]
        run["cpu_normalised_ratio_with_moto"] = round(infer_cpu / with_moto, 3)


def _e2e(results: dict[str, Any]) -> list[dict[str, Any]]:
    return [*results["end_to_end_local"], *results["end_to_end_s3"]]


def _best(runs: list[dict[str, Any]], image_set: str) -> dict[str, Any]:
    return max((r for r in runs if r["image_set"] == image_set), key=lambda r: r["ratio_to_bare"])


def _interference(results: dict[str, Any]) -> dict[str, Any]:
    """Which measurements ran while other jobs used the machine's cores."""
    loads = {f"bare-{n}": b["foreign_cores"] for n, b in enumerate(results["bare"], 1)}
    loads |= {
        f"engine-{r['name']}": r["cpu"]["foreign_cores"] for r in results["engine_in_process"]
    }
    loads |= {r["name"]: r["cpu"]["foreign_cores"] for r in _e2e(results)}
    loads["naive"] = results["naive"]["cpu"]["foreign_cores"]
    loads["memory"] = results["memory"]["cpu"]["foreign_cores"]
    disturbed = sorted(name for name, load in loads.items() if load > FOREIGN_LOAD_LIMIT)
    return {
        "limit_cores": FOREIGN_LOAD_LIMIT,
        "foreign_cores_by_measurement": loads,
        "disturbed": disturbed,
        "trustworthy": not disturbed,
    }


def _cpu_cost_model(results: dict[str, Any]) -> dict[str, Any]:
    """If the worker is CPU-bound, images/s <= cores / (CPU per image over all stages).

    Inference CPU per image comes from the bare runs; the other stages from single-threaded,
    uncontended calls of the worker's own functions (``stage_costs``).
    """
    cores = results["machine"]["nproc"] or 1
    infer = results["bare_reference"]["cpu_ms_per_image"]
    model: dict[str, Any] = {"cores": cores, "infer_cpu_ms_per_image": infer}
    for name, costs in results["stage_costs"].items():
        other = sum(v for k, v in costs.items() if k.endswith("_cpu_ms"))
        total = infer + other
        model[name] = {
            "other_stages_cpu_ms_per_image": round(other, 2),
            "total_cpu_ms_per_image": round(total, 2),
            "predicted_max_images_per_second": round(1000 * cores / total, 1),
            "predicted_max_ratio_to_bare": round(infer / total, 3),
        }
    return model


def _targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    disturbed = set(results["interference"]["disturbed"])
    checks = []
    for image_set, threshold in RATIO_TARGETS:
        runs = [r for r in results["end_to_end_local"] if r["image_set"] == image_set]
        best = max(r["ratio_to_bare"] for r in runs)
        normalised = max(r["cpu_normalised_ratio"] for r in runs)
        adjacent_check: dict[str, Any] = {}
        if all("ratio_to_adjacent_bare" in r for r in runs):  # older results files lack it
            counted = [r for r in runs if r["adjacent_comparison_trusted"]]
            adjacent = max((r["ratio_to_adjacent_bare"] for r in counted), default=None)
            adjacent_check = {
                "adjacent_bare_value": adjacent,
                "passed_adjacent_bare": None if adjacent is None else adjacent >= threshold,
                "adjacent_untrusted_not_counted": [
                    r["name"] for r in runs if not r["adjacent_comparison_trusted"]
                ],
            }
        checks.append(
            {
                "target": f"local {image_set}: end-to-end / bare >= {threshold}",
                "value": best,
                "by_batch_max_images": {
                    r["settings"]["batch_max_images"]: r["ratio_to_bare"] for r in runs
                },
                "passed": best >= threshold,
                **adjacent_check,
                "cpu_normalised_value": normalised,
                "passed_cpu_normalised": normalised >= threshold,
                "trustworthy": not disturbed & {"bare-1", "bare-2", *(r["name"] for r in runs)},
            }
        )
    factor = results["ratios"]["local-640x480-best_to_naive"]
    normalised = results["ratios"]["local-640x480-best_to_naive_cpu_normalised"]
    local_small = {r["name"] for r in results["end_to_end_local"] if r["image_set"] == "640x480"}
    checks.append(
        {
            "target": f"end-to-end >= {NAIVE_FACTOR_TARGET}x naive (local, 640x480)",
            "value": factor,
            "passed": factor >= NAIVE_FACTOR_TARGET,
            "cpu_normalised_value": normalised,
            "passed_cpu_normalised": normalised >= NAIVE_FACTOR_TARGET,
            "trustworthy": not disturbed & {"naive", *local_small},
        }
    )
    growth = results["memory"]["rss_growth_percent"]
    checks.append(
        {
            "target": f"worker RSS growth < {RSS_GROWTH_TARGET_PERCENT}% over "
            f"{results['memory']['images']} images",
            "value": growth,
            "passed": growth < RSS_GROWTH_TARGET_PERCENT,
            "trustworthy": True,  # memory does not depend on how many cores we got
        }
    )
    return checks


def summary(results: dict[str, Any]) -> str:
    """A few lines a person can read: rates, ratios, the cost model, pass/fail."""
    m = results["machine"]
    lines = [
        f"inference benchmark ({'quick' if results['quick'] else 'full'}), "
        f"{m['nproc']} cores {m['cpu_model']}, TF {m['versions']['tensorflow']}, "
        f"{results['total_seconds']} s",
        "bare model: "
        + ", ".join(
            f"{b['images_per_second']} images/s (foreign load {b['foreign_cores']} cores)"
            for b in results["bare"]
        )
        + f", {results['bare_reference']['cpu_ms_per_image']} ms CPU/image",
    ]
    for run in results["engine_in_process"]:
        share = run["share_of_wall"]
        lines.append(
            f"engine {run['name']:<21} {run['images_per_second']:>6.1f} images/s  ratio "
            f"{run['ratio_to_bare']:.3f} (CPU-normalised {run['cpu_normalised_ratio']:.3f})  "
            f"model busy {share['model_calls']:.0%}, first-batch wait "
            f"{share['first_batch_wait']:.0%}, gaps {share['gaps_between_calls']:.0%}, "
            f"tail {share['tail']:.0%}, foreign {run['cpu']['foreign_cores']:.2f}"
        )
    for run in _e2e(results):
        cpu = run["cpu"]
        moto = ""
        if "moto_cores" in cpu:
            moto = (
                f", moto {cpu['moto_share_of_machine']:.0%} of machine "
                f"(with moto {run['cpu_normalised_ratio_with_moto']:.3f})"
            )
        adjacent = ""
        if "ratio_to_adjacent_bare" in run:
            adjacent = f", to the bare runs around it {run['ratio_to_adjacent_bare']:.3f}"
            if not run["adjacent_comparison_trusted"]:
                adjacent += " UNTRUSTED: disturbed, not counted"
        lines.append(
            f"{run['name']:<21} {run['images']:>5} images {run['seconds']:>6.1f} s "
            f"{run['images_per_second']:>6.1f} images/s  ratio {run['ratio_to_bare']:.3f} "
            f"(CPU-normalised {run['cpu_normalised_ratio']:.3f}{adjacent})  worker "
            f"{cpu['worker_cores']:.2f} cores, {run['cpu_ms_per_image']} ms CPU/image{moto}, "
            f"foreign {cpu['foreign_cores']:.2f}"
        )
    naive, mem = results["naive"], results["memory"]
    lines.append(
        f"naive baseline: {naive['images']} images {naive['seconds']} s "
        f"{naive['images_per_second']} images/s, {naive['cpu_ms_per_image']} ms CPU/image, "
        f"foreign {naive['cpu']['foreign_cores']:.2f} (best end-to-end is "
        f"{results['ratios']['local-640x480-best_to_naive']}x, CPU-normalised "
        f"{results['ratios']['local-640x480-best_to_naive_cpu_normalised']}x)"
    )
    lines.append(
        f"memory: {mem['images']} images, RSS {mem['rss_start_mib']} -> {mem['rss_end_mib']} MiB "
        f"({mem['rss_growth_percent']:+.1f}%), peak {mem['rss_peak_mib']} MiB, "
        f"{mem['images_per_second']} images/s"
    )
    cost = results["cpu_cost_model"]
    for name in results["stage_costs"]:
        c = cost[name]
        lines.append(
            f"CPU model {name}: infer {cost['infer_cpu_ms_per_image']} + other "
            f"{c['other_stages_cpu_ms_per_image']} ms/image -> at most "
            f"{c['predicted_max_images_per_second']} images/s, ratio "
            f"{c['predicted_max_ratio_to_bare']}"
        )
    for check in results["targets"]:
        normalised = ""
        if "cpu_normalised_value" in check:
            normalised = (
                f" (CPU-normalised {check['cpu_normalised_value']}: "
                f"{'pass' if check['passed_cpu_normalised'] else 'fail'})"
            )
        if "adjacent_bare_value" in check:
            normalised += (
                f" (to the bare runs around it {check['adjacent_bare_value']}: "
                f"{'pass' if check['passed_adjacent_bare'] else 'fail'})"
            )
        trust = "" if check["trustworthy"] else "  [disturbed by other load]"
        lines.append(
            f"[{'PASS' if check['passed'] else 'FAIL'}] {check['target']}: "
            f"{check['value']}{normalised}{trust}"
        )
    if not results["interference"]["trustworthy"]:
        lines.append(
            "WARNING: other jobs used more than "
            f"{FOREIGN_LOAD_LIMIT} cores during: {', '.join(results['interference']['disturbed'])}"
        )
    return "\n".join(lines)
