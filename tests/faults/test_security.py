"""Nobody gets in: JSON only, Redis password and TLS, no leaked credentials, no escape from the
local store, no unsafe model code. Real processes throughout.

Two deployments, one per fixture:

- ``secure``: a TLS-only, password-protected ``redis-server`` (throwaway CA made with openssl),
  the moto S3 server with distinctive credentials, a real worker serving /metrics;
- ``local``: a ``file://`` store on the session Redis, for traversal and the unsafe model.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from kombu import Connection

from labeler.settings import Settings, load_settings, settings_from_env
from labeler.wiring import Stores, build_app
from storage import Area, ErrorReason, LabelRecord, ObjectStore, make_s3_client
from storage.keys import label_key
from storage.registry import ModelMetadata, ModelRegistry
from tasks.app import LabelerCelery
from tasks.contracts import CLASSIFY_BATCH, INFERENCE_QUEUE
from tasks.queues import unacked_hash
from testbed.digits import CLASSES, INPUT_SIZE, register_digits
from testbed.processes import LABELER, WorkerProcess, labeler_env, run_labeler
from testbed.services import MotoServer, RedisServer, free_port
from testbed.waiting import wait_until
from tests.conftest import DigitsFixture
from tests.support.corpus import DigitView, confident_views
from tests.support.tls import TlsRedisServer, make_certificates

pytestmark = pytest.mark.slow

# Distinctive, and the password has characters a URL gives meaning to: it must still work.
REDIS_PASSWORD = "redis-pw-XYZ789/@#?%:+"
S3_SECRET = "s3cret-XYZ123"
S3_KEY_ID = "s3key-XYZ456"
SECRETS = ("redis-pw-XYZ789", S3_SECRET, S3_KEY_ID)  # the stems: raw or percent-encoded
REFUSED_PICKLE = (
    "Received invalid task message: Refusing to deserialize untrusted content of type pickle"
)


@dataclass
class Deployment:
    env: dict[str, str]
    settings: Settings
    app: LabelerCelery
    worker: WorkerProcess
    incoming: ObjectStore
    labels: ObjectStore
    registry: ModelRegistry
    views: list[DigitView]

    def log(self) -> str:
        return self.worker.log_path.read_text(errors="replace")

    def record(self, key: str) -> LabelRecord:
        return LabelRecord.model_validate_json(self.labels.get(label_key(key)).data)

    def classify(self, batch_id: str, keys: list[str], timeout: float = 60) -> dict[str, Any]:
        payload = {"batch_id": batch_id, "keys": keys}
        result: dict[str, Any] = self.app.send_task(
            CLASSIFY_BATCH, kwargs={"payload": payload}
        ).get(timeout=timeout)
        return result


def _deployment(env: dict[str, str], log: Path, digits: DigitsFixture) -> Deployment:
    """Register the digits model (in-process, as `labeler models import` does), start a worker."""
    settings = settings_from_env(env)
    stores = Stores(settings)
    registry = stores.registry()
    register_digits(registry, digits.model_path)
    views = list(confident_views(digits.model_path, digits.held_out, 20))
    worker = WorkerProcess(env, log, "--queues", "inference").start()
    return Deployment(
        env,
        settings,
        build_app(settings),
        worker,
        stores.area(Area.INCOMING),
        stores.area(Area.LABELS),
        registry,
        views,
    )


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRedisServer]:
    root = tmp_path_factory.mktemp("tls")
    server = TlsRedisServer(root / "redis", make_certificates(root / "certs"), REDIS_PASSWORD)
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def secure(
    tls_redis: TlsRedisServer,
    s3_server: MotoServer,
    digits: DigitsFixture,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Deployment]:
    bucket = f"secure-{uuid.uuid4().hex[:8]}"
    env = labeler_env(
        broker_url=tls_redis.broker_url(),
        redis_password=REDIS_PASSWORD,
        storage_uri=f"s3://{bucket}/labeler",
        s3_endpoint_url=s3_server.endpoint_url,
        s3_access_key_id=S3_KEY_ID,  # moto takes any credentials
        s3_secret_access_key=S3_SECRET,
        model_name="digits",
        metrics_port=free_port(),
    )
    make_s3_client(settings_from_env(env).s3_options()).boto3.create_bucket(Bucket=bucket)
    deployment = _deployment(env, tmp_path_factory.mktemp("secure") / "worker.log", digits)
    try:
        yield deployment
    finally:
        deployment.worker.stop()


def _put_digits(d: Deployment, prefix: str, count: int, skip: int = 0) -> dict[str, str]:
    truth = {}
    for i, view in enumerate(d.views[skip : skip + count]):
        d.incoming.put(f"{prefix}{i}.png", view.png)
        truth[f"{prefix}{i}.png"] = view.label
    return truth


# --- Redis password and TLS ----------------------------------------------------------------------


def test_the_broker_accepts_only_tls_with_the_password(tls_redis: TlsRedisServer) -> None:
    with pytest.raises(redis.ConnectionError):  # plain text is not spoken at all
        redis.Redis(port=tls_redis.port, socket_timeout=2).ping()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(tls_redis.broker_url(), socket_timeout=2).ping()
    untrusted = tls_redis.broker_url().split("&ssl_ca_certs")[0]  # the system CAs: not ours
    with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
        redis.Redis.from_url(untrusted, password=REDIS_PASSWORD, socket_timeout=2).ping()


def test_images_are_labeled_over_tls_with_a_password(secure: Deployment) -> None:
    truth = _put_digits(secure, "tls/", 8)

    out = run_labeler(secure.env, "submit", "tls/", "--wait", "--timeout", "120")

    assert "labeled 8, errors 0" in out.stdout
    assert {key: secure.record(key).label for key in truth} == truth
    assert re.search(r"Connected to rediss://:\*\*@127\.0\.0\.1:\d+/0", secure.log())


def test_a_wrong_redis_password_fails_with_a_clear_error(
    secure: Deployment, tmp_path: Path
) -> None:
    _put_digits(secure, "wrong-password/", 1)
    env = {**secure.env, "LABELER_REDIS_PASSWORD": "wrong-pw-000", "LABELER_METRICS_PORT": "0"}

    out = subprocess.run(
        [*LABELER, "submit", "wrong-password/"], env=env, capture_output=True, text=True, timeout=60
    )

    assert out.returncode != 0
    assert "Error: cannot use the broker at rediss://127.0.0.1:" in out.stderr, out.stderr[-3000:]
    assert "invalid username-password pair" in out.stderr
    assert "Traceback" not in out.stderr
    assert "wrong-pw-000" not in out.stdout + out.stderr

    # A worker with the wrong password says why it cannot start, and keeps trying.
    log = tmp_path / "worker.log"
    with log.open("wb") as sink:
        worker = subprocess.Popen(
            [*LABELER, "worker"],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    refused = re.compile(r"Cannot connect to rediss://:\*\*@127\.0\.0\.1:\d+/0: invalid username")
    try:
        wait_until(
            lambda: refused.search(log.read_text(errors="replace")),
            60,
            "the worker reporting the refused password",
        )
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(10)
    text = log.read_text(errors="replace")
    assert "wrong-pw-000" not in text


# --- JSON only -----------------------------------------------------------------------------------


class _MakesDirectory:
    """Unpickling this calls ``os.mkdir(path)``: proof that someone deserialized it."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.mkdir, (self.path,))


def test_a_pickle_message_is_refused_not_run_and_not_redelivered(
    secure: Deployment, tmp_path: Path
) -> None:
    keys = list(_put_digits(secure, "pickled/", 4))
    marker = tmp_path / "unpickled"
    broker = redis.Redis.from_url(secure.settings.broker_connection_url())
    with Connection(secure.settings.broker_connection_url()) as connection:
        producer = connection.Producer(serializer="pickle")
        for n, extra in enumerate([{}, {"gadget": _MakesDirectory(marker)}]):
            body = ((), {"payload": {"batch_id": f"pickle-{n}", "keys": keys}, **extra}, {})
            producer.publish(
                body,
                routing_key=INFERENCE_QUEUE,
                headers={"task": CLASSIFY_BATCH, "id": f"pickle-{n}-{uuid.uuid4()}", "lang": "py"},
            )

    wait_until(lambda: secure.log().count(REFUSED_PICKLE) >= 2, 60, "both pickles refused")
    reserved = unacked_hash(INFERENCE_QUEUE)  # a worker serving only this queue holds them there
    wait_until(
        lambda: broker.llen(INFERENCE_QUEUE) == 0 and broker.hlen(reserved) == 0,
        10,
        "the refused messages acknowledged, not queued or held",
    )
    assert "application/x-python-serialize" in secure.log()
    assert not marker.exists(), "the worker unpickled the message"
    assert not any(secure.labels.exists(label_key(k)) for k in keys), "a pickle task ran"

    # The worker is still healthy and the same batch sent as JSON runs once.
    assert secure.classify("pickled-json", keys)["labeled"] == 4
    assert secure.log().count(REFUSED_PICKLE) == 2, "a refused message came back"
    assert broker.llen(INFERENCE_QUEUE) == 0


# --- Credentials never leak ----------------------------------------------------------------------


def _scrape(port: int, path: str) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return str(r.read().decode())
    except urllib.error.HTTPError as exc:
        return str(exc.read().decode())


def _output(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


def _redis_dump(client: redis.Redis) -> str:
    """Every key and value in the broker's database, as text."""
    parts = []
    read = {
        b"string": client.get,
        b"list": lambda key: client.lrange(key, 0, -1),
        b"hash": client.hgetall,
        b"set": client.smembers,
        b"zset": lambda key: client.zrange(key, 0, -1),
    }
    for key in client.scan_iter():
        value = read.get(client.type(key), lambda _: b"")(key)
        parts.append(f"{key!r} {value!r}")
    return "\n".join(parts)


def test_credentials_never_reach_logs_metrics_reprs_or_records(
    secure: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in secure.env.items():
        if name.startswith("LABELER_"):
            monkeypatch.setenv(name, value)  # for load_settings() in this process
    _put_digits(secure, "leak/", 2)
    secure.incoming.put("leak/text.jpg", b"not an image, just text")
    outcome = secure.classify(
        "leak", ["leak/0.png", "leak/1.png", "leak/text.jpg", "leak/gone.png"]
    )
    assert (outcome["labeled"], outcome["errored"]) == (2, 2)
    gone = secure.record("leak/gone.png").error
    assert gone is not None
    assert gone.reason == ErrorReason.NOT_FOUND

    settings = secure.settings
    texts = {
        "labeler config": run_labeler(secure.env, "config").stdout,
        "labeler submit": _output(run_labeler(secure.env, "submit", "leak/", "--wait")),
        "metrics": _scrape(settings.metrics_port, "/metrics"),
        "healthz": _scrape(settings.metrics_port, "/healthz"),
        "worker log": secure.log(),
        "repr(settings)": repr(settings) + str(settings) + repr(load_settings()),
        "settings dumps": settings.model_dump_json() + repr(settings.model_dump()),
        "repr(s3 options)": repr(settings.s3_options()),
        "records": "\n".join(
            secure.labels.get(info.key).data.decode() for info in secure.labels.list()
        ),
        "broker contents": _redis_dump(redis.Redis.from_url(settings.broker_connection_url())),
    }
    assert 'labeler_images_processed_total{outcome="error",reason="not_found"}' in texts["metrics"]
    assert '"not_found"' in texts["records"]
    assert '"not_an_image"' in texts["records"]
    assert "REDIS_PASSWORD" in texts["labeler config"].upper()
    leaks = {name: [s for s in SECRETS if s in text] for name, text in texts.items()}
    assert {name: found for name, found in leaks.items() if found} == {}


# --- The local store refuses traversal -----------------------------------------------------------


@pytest.fixture(scope="module")
def local(
    redis_server: RedisServer, digits: DigitsFixture, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    redis.Redis.from_url(redis_server.url).flushall()
    root = tmp_path_factory.mktemp("local")
    env = labeler_env(
        broker_url=redis_server.url,
        storage_uri=(root / "store").as_uri(),
        model_name="digits",
        model_reload_seconds=0.5,
    )
    deployment = _deployment(env, root / "worker.log", digits)
    try:
        yield deployment
    finally:
        deployment.worker.stop()


def _no_reader(fifo: Path) -> bool:
    """True when no process has ``fifo`` open for reading, or is waiting to."""
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as exc:
        return exc.errno == errno.ENXIO
    os.close(fd)
    return False


@pytest.mark.parametrize(
    "key", ["../outside.png", "a/../../outside.png", "/etc/passwd", "a\\..\\b"]
)
def test_traversal_keys_are_rejected_as_invalid_payloads(local: Deployment, key: str) -> None:
    result = local.app.send_task(
        CLASSIFY_BATCH, kwargs={"payload": {"batch_id": "escape", "keys": ["ok.png", key]}}
    )
    with pytest.raises(Exception, match="ClassifyBatchRequest: keys: Value error"):
        result.get(timeout=60)
    assert result.state == "FAILURE"
    assert "rejected labeler.classify_batch message, not retried" in local.log()


def test_links_out_of_the_store_get_invalid_key_and_nothing_outside_is_read(
    local: Deployment, tmp_path: Path
) -> None:
    incoming = Path(local.settings.area_uri(Area.INCOMING).removeprefix("file://"))
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = local.views[0]
    (outside / "secret.png").write_bytes(secret.png)  # a fine digit: reading it would label it
    os.mkfifo(outside / "pipe")  # opening this for reading would block the reader
    os.mkfifo(incoming / "fifo.png")  # inside the store, but not an object either
    (incoming / "escape").mkdir()
    (incoming / "escape" / "link.png").symlink_to(outside / "secret.png")
    (incoming / "escape" / "dir").symlink_to(outside)
    (incoming / "escape" / "pipe.png").symlink_to(outside / "pipe")
    (incoming / "escape" / "good.png").write_bytes(local.views[1].png)
    keys = ["escape/link.png", "escape/dir/secret.png", "escape/pipe.png", "fifo.png"]
    before = sorted(p.name for p in outside.iterdir())

    outcome = local.classify("links", [*keys, "escape/good.png"])

    assert (outcome["labeled"], outcome["errored"]) == (1, 4)
    errors = {k: local.record(k).error for k in keys}
    reasons = {k: e.reason if e else None for k, e in errors.items()}
    assert reasons == {
        "escape/link.png": ErrorReason.INVALID_KEY,
        "escape/dir/secret.png": ErrorReason.INVALID_KEY,
        "escape/pipe.png": ErrorReason.INVALID_KEY,
        "fifo.png": ErrorReason.NOT_FOUND,
    }
    assert all(local.record(k).label is None for k in keys)
    assert local.record("escape/good.png").label == local.views[1].label
    assert sorted(p.name for p in outside.iterdir()) == before  # nothing written outside
    assert _no_reader(outside / "pipe")
    assert _no_reader(incoming / "fifo.png")


# --- Unsafe model files --------------------------------------------------------------------------


def _lambda_model(path: Path, marker: Path) -> Path:
    """A digits-shaped model with a Lambda layer that creates ``marker`` whenever it runs."""
    import keras
    from keras import layers

    inputs = keras.Input((*INPUT_SIZE, 3))
    x = layers.Dense(len(CLASSES))(layers.Flatten()(inputs))
    x = layers.Lambda(lambda t, p=str(marker): (open(p, "w").close(), t)[1])(x)
    keras.Model(inputs, layers.Softmax()(x)).save(path)
    marker.unlink()  # building the model ran the lambda once, here
    return path


def test_a_model_with_a_lambda_layer_is_refused_and_never_served(
    local: Deployment, tmp_path: Path
) -> None:
    marker = tmp_path / "lambda-ran"
    unsafe = _lambda_model(tmp_path / "lambda.keras", marker)

    out = subprocess.run(
        [*LABELER, "models", "import", str(unsafe), "--classes", ",".join(CLASSES)],
        env=local.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0
    assert "cannot load lambda.keras safely" in out.stderr
    assert local.registry.versions() == [1]

    # Written into the registry directly and promoted, it is still never run.
    version = local.registry.register(
        unsafe.read_bytes(),
        ModelMetadata(name="digits", version=1, class_names=CLASSES, input_size=INPUT_SIZE),
    ).version
    local.registry.promote(version)
    truth = _put_digits(local, "unsafe/", 4)
    result = local.app.send_task(
        CLASSIFY_BATCH, kwargs={"payload": {"batch_id": "unsafe", "keys": list(truth)}}
    )
    try:
        wait_until(
            lambda: f"refusing model digits v{version}" in local.log(),
            60,
            "the worker refusing the model",
        )
        # The worker keeps serving the last good version; the refused one is never retried.
        assert result.get(timeout=120)["model_version"] == 1
        assert f"production is v{version}, which was refused: still serving v1" in local.log()
        assert not marker.exists(), "the Lambda layer ran"
    finally:
        local.registry.promote(1)  # what an operator does: serve a safe version again

    assert {k: local.record(k).model_version for k in truth} == dict.fromkeys(truth, 1)
    assert {k: local.record(k).label for k in truth} == truth
    assert not marker.exists()
