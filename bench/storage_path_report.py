"""The summary of ``bench/storage_path.py``: per-image figures, ratios to the bare model, targets.

The ratio of a run is the worker's CPU per image over the bare model's. The targets are judged
on the median of every bare measurement of the run: one measurement of a few seconds jitters by
a third on this shared machine (2.71, 4.46, 2.76 ms in a row), more than the machine drifts in a
run. The ratios to the two bare measurements just before and after the run, and to the first and
the last, are kept beside it.
"""

from __future__ import annotations

import statistics
from typing import Any

from bench.header import FOREIGN_LOAD_LIMIT, trusted

# Issue 27, item 1: worker CPU per image over the bare model's, 640x480 INT8.
TARGETS = {"local": 1.8, "s3": 2.5}
TARGET_SET = "640x480"


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    """Derived figures of ``result`` (its ``bare`` and ``runs``)."""
    bares = result["bare"]
    start_end = statistics.mean([bares[0]["cpu_ms_per_image"], bares[-1]["cpu_ms_per_image"]])
    median = statistics.median(b["cpu_ms_per_image"] for b in bares)
    runs = [_run_row(run, bares, start_end, median) for run in result["runs"] if "error" not in run]
    return {
        "bare_cpu_ms_per_image": {
            "start": bares[0]["cpu_ms_per_image"],
            "end": bares[-1]["cpu_ms_per_image"],
            "median": median,
            "all": [b["cpu_ms_per_image"] for b in bares],
            "foreign_cores_max": max(b["cpu"]["foreign_cores"] for b in bares),
        },
        "bare_images_per_second": {
            "start": bares[0]["images_per_second"],
            "end": bares[-1]["images_per_second"],
        },
        "runs": runs,
        "failed_runs": [r["name"] for r in result["runs"] if "error" in r],
        "targets": _targets(runs),
        "after_vs_before": _after_vs_before(runs),
    }


def _run_row(
    run: dict[str, Any], bares: list[dict[str, Any]], start_end: float, median: float
) -> dict[str, Any]:
    cpu: dict[str, float] = run["cpu"]
    images: int = run["images"]

    def ms(*groups: str) -> float:
        seconds = sum(cpu[f"{g}_cpu_seconds"] for g in groups)
        return round(1000 * seconds / images, 2)

    around = bares[run["bare_before"] : run["bare_before"] + 2]
    bare = statistics.mean(b["cpu_ms_per_image"] for b in around)
    tree, child = ms("worker_main", "worker_child"), ms("worker_child")
    return {
        "name": run["name"],
        "tree": run["tree"],
        "store": run["store"],
        "image_set": run["image_set"],
        "images": images,
        "seconds": run["seconds"],
        "images_per_second": run["images_per_second"],
        "cpu_ms_per_image": {
            "worker_tree": tree,
            "worker_child": child,
            "worker_main": ms("worker_main"),
            "moto": ms("moto"),
            "redis": ms("redis"),
            "bench": ms("bench"),
        },
        "bare_cpu_ms_per_image_around": round(bare, 3),
        "ratio_worker_tree": round(tree / median, 2),
        "ratio_worker_child": round(child / median, 2),
        "ratio_worker_tree_to_bare_around": round(tree / bare, 2),
        "ratio_worker_tree_to_start_end_bare": round(tree / start_end, 2),
        "foreign_cores": cpu["foreign_cores"],
        "file_create_cpu_us": run.get("file_create_cpu_us"),  # local store only
        "trusted": trusted(run, *around) and not run["child_replaced"],
        "records_ok": run["records"]["exactly_one_each"] and run["records"]["all_openvino_int8"],
    }


def _targets(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Issue 27 item 1 per tree: met or not, on the worker tree and on the child alone."""
    out: dict[str, Any] = {}
    for row in runs:
        limit = TARGETS.get(row["store"])
        if limit is None or row["image_set"] != TARGET_SET:
            continue
        out.setdefault(row["tree"], {})[f"{row['store']} {TARGET_SET} <= {limit}x"] = {
            "ratio_worker_tree": row["ratio_worker_tree"],
            "met_worker_tree": row["ratio_worker_tree"] <= limit,
            "ratio_worker_child": row["ratio_worker_child"],
            "met_worker_child": row["ratio_worker_child"] <= limit,
            "ratio_worker_tree_to_bare_around": row["ratio_worker_tree_to_bare_around"],
            "trusted": row["trusted"],
        }
    return out


def _after_vs_before(runs: list[dict[str, Any]]) -> dict[str, Any]:
    by = {(r["tree"], r["store"], r["image_set"]): r for r in runs}
    out: dict[str, Any] = {}
    for (tree, store, image_set), after in by.items():
        before = by.get(("before", store, image_set))
        if tree != "after" or before is None:
            continue
        b, a = before["cpu_ms_per_image"]["worker_tree"], after["cpu_ms_per_image"]["worker_tree"]
        out[f"{store} {image_set}"] = {
            "worker_tree_cpu_ms_per_image": [b, a],
            "cpu_change_percent": round(100 * (a - b) / b, 1),
            "images_per_second": [before["images_per_second"], after["images_per_second"]],
            "trusted": before["trusted"] and after["trusted"],
        }
    return out


def table(result: dict[str, Any]) -> str:
    """The summary as text: one line per run, then the targets."""
    summary = result["summary"]
    bare = summary["bare_cpu_ms_per_image"]
    lines = [
        f"bare OpenVINO INT8, CPU ms/image: median {bare['median']}, start {bare['start']}, "
        f"end {bare['end']} (all: {bare['all']})",
        "",
        f"{'tree':7}{'store':6}{'set':10}{'images/s':>9}{'worker':>8}{'child':>7}"
        f"{'around':>7}{'ratio':>7}{'child':>7}{'around':>7}{'moto':>7}{'redis':>7}"
        f"{'foreign':>8}{'create':>8}  ok",
        f"{'':23}{'':9}{'CPU ms/image (bare around)':^29}{'x median bare':^21}{'ms/img':^14}"
        f"{'cores':>8}{'us/file':>8}",
    ]
    for r in summary["runs"]:
        ms = r["cpu_ms_per_image"]
        flags = ("" if r["trusted"] else " untrusted") + ("" if r["records_ok"] else " RECORDS")
        lines.append(
            f"{r['tree']:7}{r['store']:6}{r['image_set']:10}{r['images_per_second']:>9}"
            f"{ms['worker_tree']:>8}{ms['worker_child']:>7}{r['bare_cpu_ms_per_image_around']:>7.2f}"
            f"{r['ratio_worker_tree']:>7}{r['ratio_worker_child']:>7}"
            f"{r['ratio_worker_tree_to_bare_around']:>7}{ms['moto']:>7}"
            f"{ms['redis']:>7}{r['foreign_cores']:>8}{r['file_create_cpu_us'] or '':>8}"
            f"  {flags.strip() or 'yes'}"
        )
    lines.append(
        f"untrusted: over {FOREIGN_LOAD_LIMIT} foreign cores in the run or a bare measurement "
        "around it; RECORDS: a key without exactly one OpenVINO INT8 record; create: CPU to "
        "create one file where the local store's records go, just before the run"
    )
    lines += [f"failed: {name}" for name in summary["failed_runs"]]
    lines.append("")
    for tree, targets in summary["targets"].items():
        for name, t in targets.items():
            lines.append(
                f"target {tree:6} {name}: worker tree {t['ratio_worker_tree']}x "
                f"{'met' if t['met_worker_tree'] else 'NOT met'}, child alone "
                f"{t['ratio_worker_child']}x {'met' if t['met_worker_child'] else 'NOT met'} "
                f"(to the bare measured around the run: {t['ratio_worker_tree_to_bare_around']}x)"
                f"{'' if t['trusted'] else ' (untrusted: foreign load)'}"
            )
    for name, c in summary["after_vs_before"].items():
        lines.append(
            f"after vs before, {name}: worker CPU {c['worker_tree_cpu_ms_per_image']} ms/image "
            f"({c['cpu_change_percent']:+}%), images/s {c['images_per_second']}"
        )
    return "\n".join(lines)
