"""``labeler export`` throughput and peak RSS at 100,000 and 1,000,000 records (issue 25).

Records are written straight into a temporary data directory's ``labels/`` (1,000 per folder;
one in ten reviewed, one in a hundred an error), then the real CLI runs as a subprocess on the
local store; its peak RSS comes from ``wait4``'s rusage (the child's own high-water mark).
The image folder needs the images too, so it runs at the smaller size only.

Target: 100,000 records exported under 400 MB of RSS. Writes bench/results/export.json;
figures are recorded, never asserted.

    .venv/bin/python -m bench.export [--sizes 100000 1000000] [--formats jsonl csv imagefolder]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.header import phase, run_header, trusted, write_result

PER_FOLDER = 1000
RSS_TARGET_MB = 400
_AUTO = (
    '{{"source_key":"{key}","source_etag":"0123456789abcdef0123456789abcdef",'
    '"model_name":"digits","model_version":3,"label":"{label}","score":{score},'
    '"top_k":[{{"label":"{label}","score":{score}}},{{"label":"1","score":0.01}}],'
    '"needs_review":{needs},"batch_id":"b-{folder}","created_at":1700000000.5,'
    '"runtime":"tensorflow","timings":{{"fetch":0.001,"decode":0.002,"infer":0.003}}{review}}}'
)
_REVIEW = ',"review":{"label":"2","outcome":"corrected","reviewer":"ana","at":1710000000.0}'
_ERROR = (
    '{{"source_key":"{key}","model_name":"digits","model_version":3,'
    '"error":{{"reason":"unreadable","detail":"broken data"}},"created_at":1700000000.5}}'
)


def make_records(data: Path, count: int, images: bool) -> None:
    """``count`` records (and, with ``images``, a tiny file per labeled image) under ``data``."""
    for n in range(count):
        folder = f"cam{n // PER_FOLDER:04d}"
        key = f"{folder}/{n:08d}.png"
        if n % PER_FOLDER == 0:
            (data / "labels" / folder).mkdir(parents=True, exist_ok=True)
            if images:
                (data / "incoming" / folder).mkdir(parents=True, exist_ok=True)
        if n % 100 == 99:
            text = _ERROR.format(key=key)
        else:
            text = _AUTO.format(
                key=key,
                label=n % 10,
                score=round(0.5 + (n % 50) / 100, 2),
                needs="true" if n % 10 == 0 else "false",
                folder=folder,
                review=_REVIEW if n % 10 == 0 else "",
            )
        (data / "labels" / f"{key}.json").write_text(text)
        if images:
            (data / "incoming" / key).write_bytes(b"\x89PNG tiny")


def run_export(data: Path, fmt: str, out: Path) -> dict[str, Any]:
    """One export subprocess: wall time, records per second, its peak RSS."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABELER_")}
    env["LABELER_DATA_DIR"] = str(data)
    cmd = [sys.executable, "-m", "labeler", "export", "--format", fmt, "--out", str(out)]
    record: dict[str, Any] = {"format": fmt}
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with phase(record):  # this process; the child's CPU comes from wait4, once it has ended
        _, status, usage = os.wait4(proc.pid, 0)
    record["seconds"] = round(time.perf_counter() - started, 2)
    _add_child_cpu(record["cpu"], usage.ru_utime + usage.ru_stime)
    stdout = proc.stdout.read().decode() if proc.stdout else ""
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"export failed ({proc.returncode}): {stderr[-2000:]}")
    record["summary"] = stdout.strip()
    record["peak_rss_mb"] = round(usage.ru_maxrss / 1024, 1)  # KiB on Linux
    return record


def _add_child_cpu(cpu: dict[str, Any], child_seconds: float) -> None:
    """Count the reaped export process as ours: /proc no longer shows its CPU time."""
    wall = max(cpu["wall_seconds"], 1e-9)
    cpu["export_cpu_seconds"] = round(child_seconds, 2)
    cpu["export_cores"] = round(child_seconds / wall, 3)
    cpu["foreign_cores"] = round(max(0.0, cpu["foreign_cores"] - child_seconds / wall), 3)


def measure(size: int, formats: list[str], work: Path) -> dict[str, Any]:
    data = work / f"data-{size}"
    started = time.perf_counter()
    make_records(data, size, images="imagefolder" in formats)
    result: dict[str, Any] = {
        "records": size,
        "generate_seconds": round(time.perf_counter() - started, 1),
        "runs": [],
    }
    for fmt in formats:
        out = work / f"out-{size}.{fmt}"
        run = run_export(data, fmt, out)
        run["records_per_second"] = round(size / run["seconds"])
        run["output_mb"] = round(_size(out) / 2**20, 1)
        run["under_rss_target"] = run["peak_rss_mb"] < RSS_TARGET_MB
        result["runs"].append(run)
        print(
            f"{size:>9,} {fmt:<12} {run['seconds']:>7.1f} s {run['records_per_second']:>7,}/s "
            f"peak RSS {run['peak_rss_mb']} MB",
            flush=True,
        )
        if out.is_dir():
            shutil.rmtree(out)
        else:
            out.unlink()
    shutil.rmtree(data)
    return result


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--formats", nargs="+", default=["jsonl", "csv", "imagefolder"])
    parser.add_argument(
        "--large-formats",
        nargs="+",
        default=["jsonl"],
        help="Formats run at sizes above 100,000 (the image folder needs a file per image).",
    )
    args = parser.parse_args()
    result: dict[str, Any] = {**run_header(), "rss_target_mb": RSS_TARGET_MB, "sizes": []}
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        for size in args.sizes:
            formats = args.formats if size <= 100_000 else args.large_formats
            result["sizes"].append(measure(size, formats, Path(tmp)))
    runs = [run for size in result["sizes"] for run in size["runs"]]
    result["trusted"] = trusted(*runs)
    print(write_result("export", result))


if __name__ == "__main__":
    main()
