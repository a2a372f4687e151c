"""CPU per S3 call on the worker's hot path: ``S3Store``'s GET and PUT (obstore) against the
same requests made through boto3, as ``S3Store`` made them before (issue 27).

One process talks to the moto S3 server (another process, not in the figures). Per call: this
process's CPU time (``time.process_time``: every thread, obstore's runtime threads included) and
wall time.
Calls: GET of a 640x480 photo JPEG, PUT of a label-record-sized JSON, and a conditional create
(If-None-Match) of one. The two clients take turns, in rounds, so drift hits both alike; each
figure is the median of the rounds. Writes bench/results/s3_calls.json.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from typing import Any

from bench.header import phase, run_header, trusted, write_result
from bench.images import make_image_set
from storage import S3Options, S3Store, make_s3_client
from storage.s3 import S3Client
from testbed.processes import TEST_CREDENTIALS
from testbed.services import MotoServer

BUCKET = "bench-s3-calls"
CALLS, ROUNDS = 200, 5
RECORD = json.dumps({"source_key": "incoming/x.jpg", "label": "cat", "pad": "x" * 380}).encode()


def per_call(calls: Callable[[int], object], first: int) -> dict[str, float]:
    """Run ``calls(first) .. calls(first + CALLS - 1)``: CPU and wall milliseconds per call."""
    cpu, wall = time.process_time(), time.perf_counter()
    for n in range(first, first + CALLS):
        calls(n)
    return {
        "cpu_ms": (time.process_time() - cpu) / CALLS * 1000,
        "wall_ms": (time.perf_counter() - wall) / CALLS * 1000,
    }


def median(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: round(statistics.median(r[k] for r in runs), 3) for k in ("cpu_ms", "wall_ms")}


def measure(client: S3Client, store: S3Store, jpeg: bytes) -> dict[str, Any]:
    boto3 = client.boto3  # the same requests as S3Store made them before issue 27
    full = store.prefix

    def boto3_get(n: int) -> object:
        response = boto3.get_object(Bucket=BUCKET, Key=f"{full}images/{n % CALLS}.jpg")
        return response["Body"].read()

    def boto3_put(n: int) -> object:
        return boto3.put_object(Bucket=BUCKET, Key=f"{full}labels/b{n}.json", Body=RECORD)

    def boto3_create(n: int) -> object:
        key = f"{full}created/b{n}.json"
        return boto3.put_object(Bucket=BUCKET, Key=key, Body=RECORD, IfNoneMatch="*")

    calls: dict[str, dict[str, Callable[[int], object]]] = {
        "get_jpeg": {
            "boto3": boto3_get,
            "s3store_obstore": lambda n: store.get(f"images/{n % CALLS}.jpg"),
        },
        "put_record": {
            "boto3": boto3_put,
            "s3store_obstore": lambda n: store.put(f"labels/o{n}.json", RECORD),
        },
        "conditional_create": {
            "boto3": boto3_create,
            "s3store_obstore": lambda n: store.put(
                f"created/o{n}.json", RECORD, if_none_match=True
            ),
        },
    }
    for n in range(CALLS):
        store.put(f"images/{n}.jpg", jpeg)
    results: dict[str, Any] = {}
    for name, clients in calls.items():
        runs: dict[str, list[dict[str, float]]] = {way: [] for way in clients}
        for call in clients.values():
            call(10**6)  # connections open, first-call costs paid
        for round_ in range(ROUNDS):
            for way, call in clients.items():
                runs[way].append(per_call(call, round_ * CALLS))
        results[name] = {way: median(r) for way, r in runs.items()}
        before, after = results[name]["boto3"]["cpu_ms"], results[name]["s3store_obstore"]["cpu_ms"]
        results[name]["cpu_saved_ms"] = round(before - after, 3)
    return results


def main() -> None:
    header = run_header()
    moto = MotoServer().start()
    try:
        options = S3Options(
            endpoint_url=moto.endpoint_url,
            access_key_id=TEST_CREDENTIALS["access_key_id"],
            secret_access_key=TEST_CREDENTIALS["secret_access_key"],
        )
        client = make_s3_client(options)
        client.boto3.create_bucket(Bucket=BUCKET)
        store = S3Store(client, BUCKET, "bench")
        jpeg = make_image_set((640, 480), 1).blobs[0]
        record: dict[str, Any] = {}
        assert moto.process is not None
        with phase(record, moto.process.pid):  # moto's work is ours, not a foreign load
            record.update(measure(client, store, jpeg))
    finally:
        moto.stop()
    result = {
        **header,
        "trusted": trusted(record),
        "benchmark": "S3 hot-path CPU per call, obstore vs boto3 (issue 27)",
        "setup": {
            "server": "moto S3 server, loopback HTTP (its CPU: not per call, not foreign load)",
            "jpeg_bytes": len(jpeg),
            "record_bytes": len(RECORD),
            "calls_per_round": CALLS,
            "rounds": ROUNDS,
            "figure": "median over rounds of this process's CPU (all threads) per call",
        },
        "calls": record,
    }
    print(json.dumps(result, indent=2))
    print(f"results: {write_result('s3_calls', result)}")


if __name__ == "__main__":
    main()
