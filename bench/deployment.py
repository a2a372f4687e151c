"""Real deployments for the benchmark: a private Redis, a store, the model, worker processes.

Everything listens on 127.0.0.1 only and is stopped by the ``ExitStack`` that started it, even
when a start-up fails half way (each stop is registered before its start).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import naive_worker
from bench.procstat import process_tree
from labeler.settings import Settings, load_settings
from labeler.wiring import Stores, build_app
from storage import Area, ObjectStore, S3Options, make_s3_client
from storage.results import LabelStore
from tasks.app import LabelerCelery
from testbed.processes import WorkerProcess, labeler_env, run_labeler
from testbed.services import MotoServer, RedisServer
from testbed.waiting import wait_until

REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL_NAME = "bench"
CLASS_NAMES = [f"c{i}" for i in range(10)]
S3_TEST_CREDENTIALS = {"s3_access_key_id": "bench-key", "s3_secret_access_key": "bench-secret"}


def save_mobilenet(path: Path) -> Path:
    """MobileNetV2 at 224x224, random weights (offline), 10 classes, saved as ``.keras``."""
    import keras

    from workers.training import make_backbone_classifier

    keras.utils.set_random_seed(0)
    model = make_backbone_classifier((224, 224), 10, backbone="mobilenet_v2", weights=None)
    model.save(path)
    return path


@dataclass
class Deployment:
    """One labeler deployment: its environment, stores, a producer app and its worker."""

    env: dict[str, str]
    settings: Settings
    app: LabelerCelery
    incoming: ObjectStore
    labels: LabelStore
    local_root: Path | None = None  # the store's directory, for a file:// deployment
    worker: WorkerProcess | CommandWorker | None = None
    extra_pids: dict[str, list[int]] = field(default_factory=dict)

    def worker_pids(self) -> list[int]:
        """The worker's main process and its prefork children."""
        if self.worker is None or self.worker.process is None:
            raise RuntimeError("no worker is running")
        return process_tree(self.worker.process.pid)


class CommandWorker:
    """Any Celery worker command in its own process group, ready once its log says so."""

    def __init__(
        self, argv: list[str], env: dict[str, str], log_path: Path, cwd: Path = REPO_ROOT
    ) -> None:
        self.argv = argv
        self.env = env
        self.log_path = log_path
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> CommandWorker:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_until(self._ready_or_dead, 120, f"worker ready (log: {self.log_path})")
        if self._died():
            raise RuntimeError(f"worker died at start-up:\n{self.log_path.read_text()[-4000:]}")
        return self

    def _died(self) -> bool:
        return self.process is not None and self.process.poll() is not None

    def _ready_or_dead(self) -> bool:
        return b"ready." in self.log_path.read_bytes() or self._died()

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM the process group (warm shutdown), SIGKILL if it hangs."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)


class Services:
    """The processes one benchmark run starts; all stopped when ``stack`` closes."""

    def __init__(self, root: Path, stack: ExitStack) -> None:
        self.root = root
        self.stack = stack
        self.redis = RedisServer(root / "redis")
        stack.callback(self.redis.stop)
        self.redis.start()
        self._moto: MotoServer | None = None

    def redis_url(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.redis.port}/{db}"

    def redis_pid(self) -> list[int]:
        return [self.redis.process.pid] if self.redis.process else []

    def moto(self) -> MotoServer:
        """moto's S3 server in its own process, started on first use."""
        if self._moto is None:
            self._moto = MotoServer()
            self.stack.callback(self._moto.stop)
            self._moto.start()
        return self._moto

    def moto_pids(self) -> list[int]:
        """moto's server process, if it was started."""
        return [self._moto.process.pid] if self._moto and self._moto.process else []

    def start_worker(
        self, deployment: Deployment, name: str, tree: Path | None = None
    ) -> WorkerProcess | CommandWorker:
        """``labeler worker --queues inference`` (prefork, concurrency 1) for ``deployment``.

        With ``tree``, the worker runs that code tree's labeler (``PYTHONPATH=tree``, cwd
        ``tree``, this venv's python), so two versions of the code can be compared in one run.
        """
        log_path = self.root / f"{name}.log"
        worker: WorkerProcess | CommandWorker
        if tree is None:
            worker = WorkerProcess(deployment.env, log_path, "--queues", "inference")
        else:
            argv = [sys.executable, "-m", "labeler", "worker", "--queues", "inference"]
            worker = CommandWorker(argv, tree_env(deployment.env, tree), log_path, cwd=tree)
        self.stack.callback(worker.stop)
        deployment.worker = worker.start()
        return worker

    def start_naive_worker(self, db: int, incoming: Path, model_path: Path) -> CommandWorker:
        """The naive baseline's own Celery worker (see :mod:`bench.naive_worker`)."""
        env = labeler_env()
        env.update(
            {
                naive_worker.BROKER_ENV: self.redis_url(db),
                naive_worker.MODEL_ENV: str(model_path),
                naive_worker.INCOMING_ENV: str(incoming),
                naive_worker.LABELS_ENV: str(self.root / "naive-labels"),
            }
        )
        argv = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "bench.naive_worker",
            "worker",
            "--pool=prefork",
            "--concurrency=1",
            f"--queues={naive_worker.QUEUE}",
            "--loglevel=INFO",
            "--without-gossip",
            "--without-mingle",
            "--hostname=naive@%h",
        ]
        worker = CommandWorker(argv, env, self.root / "naive.log")
        self.stack.callback(worker.stop)
        return worker.start()


def tree_env(env: dict[str, str], tree: Path) -> dict[str, str]:
    """``env`` for a process that must import the labeler of code tree ``tree`` (run it with
    cwd ``tree`` too: ``python -m`` puts the cwd first on ``sys.path``)."""
    return {**env, "PYTHONPATH": str(tree)}


def local_deployment(
    services: Services,
    db: int,
    model_path: Path | None,
    *,
    calibration_dir: Path | None = None,
    **settings: Any,
) -> Deployment:
    """A ``file://`` deployment with the model imported and promoted (no worker yet).

    ``calibration_dir`` makes INT8 too (``labeler models import --calibration-dir``); without
    ``model_path`` nothing is imported.
    """
    root = services.root / f"store-{db}"
    env = _worker_env(services, db, storage_uri=root.as_uri(), **settings)
    deployment = _deployment(env, model_path, calibration_dir)
    deployment.local_root = root
    return deployment


def s3_deployment(
    services: Services,
    db: int,
    model_path: Path | None,
    *,
    calibration_dir: Path | None = None,
    **settings: Any,
) -> Deployment:
    """An ``s3://`` deployment on the moto server, bucket created, model promoted (no worker).

    ``model_path`` and ``calibration_dir`` as for :func:`local_deployment`.
    """
    moto = services.moto()
    bucket = f"bench-{int(time.time())}"
    env = _worker_env(
        services,
        db,
        storage_uri=f"s3://{bucket}/labeler",
        s3_endpoint_url=moto.endpoint_url,
        **S3_TEST_CREDENTIALS,
        **settings,
    )
    options = S3Options(
        endpoint_url=moto.endpoint_url,
        access_key_id=S3_TEST_CREDENTIALS["s3_access_key_id"],
        secret_access_key=S3_TEST_CREDENTIALS["s3_secret_access_key"],
    )
    make_s3_client(options).boto3.create_bucket(Bucket=bucket)
    deployment = _deployment(env, model_path, calibration_dir)
    if moto.process is not None:
        deployment.extra_pids["moto"] = [moto.process.pid]
    return deployment


def _worker_env(services: Services, db: int, **settings: Any) -> dict[str, str]:
    """The LABELER_* environment (plus TF_CPP_MIN_LOG_LEVEL=2) every process of it gets."""
    # By default the pipeline is measured against the bare TensorFlow model: the same runtime
    # on both sides (bench/runtimes.py chooses the runtime to compare them).
    settings.setdefault("runtime", "tensorflow")
    return labeler_env(
        broker_url=services.redis_url(db),
        model_name=MODEL_NAME,
        inference_batch_size=32,
        metrics_port=0,  # several workers on one host: no port to collide on
        **settings,
    )


def _deployment(
    env: dict[str, str], model_path: Path | None, calibration_dir: Path | None
) -> Deployment:
    settings = load_settings(
        **{k.removeprefix("LABELER_").lower(): v for k, v in env.items() if k[:8] == "LABELER_"}
    )
    if model_path is not None:
        calibration = ["--calibration-dir", str(calibration_dir)] if calibration_dir else []
        classes = ",".join(CLASS_NAMES)
        run_labeler(env, "models", "import", str(model_path), "--classes", classes, *calibration)
    stores = Stores(settings)
    return Deployment(
        env=env,
        settings=settings,
        app=build_app(settings),
        incoming=stores.area(Area.INCOMING),
        labels=LabelStore(stores.area(Area.LABELS)),
    )
