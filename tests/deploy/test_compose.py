"""docker-compose.yml as Docker reads it, and every labeler command in it as click parses it."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from labeler.cli import main
from testbed.services import require_binary

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
LONG_RUNNING = {
    "redis",
    "minio",
    "inference-worker",
    "training-worker",
    "dispatcher",
    "review",
    "prometheus",
    "grafana",
}


def _compose(*args: str, env_file: Path = ENV_EXAMPLE) -> subprocess.CompletedProcess[str]:
    binary = require_binary("docker-compose", "apt-get install -y docker-compose")
    return subprocess.run(
        [binary, "-f", str(COMPOSE), "--env-file", str(env_file), "--profile", "gpu", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    result = _compose("config")
    assert result.returncode == 0, result.stderr
    resolved: dict[str, Any] = yaml.safe_load(result.stdout)["services"]
    return resolved


def test_compose_file_is_valid() -> None:
    result = _compose("config", "-q")
    assert result.returncode == 0, result.stderr


def test_a_missing_secret_stops_compose_with_its_name(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("MINIO_ROOT_USER=u\nMINIO_ROOT_PASSWORD=p\nGRAFANA_ADMIN_PASSWORD=g\n")
    result = _compose("config", "-q", env_file=env)
    assert result.returncode != 0
    assert "set REDIS_PASSWORD in .env" in result.stderr


def test_no_secret_is_written_in_the_compose_file() -> None:
    text = COMPOSE.read_text()
    for line in ENV_EXAMPLE.read_text().splitlines():
        if "PASSWORD" in line and "=" in line:
            assert line.split("=", 1)[1] not in text


@pytest.mark.parametrize(
    "name",
    ["inference-worker", "inference-worker-gpu", "training-worker", "beat", "dispatcher", "review"],
)
def test_each_labeler_service_runs_a_command_that_parses(
    services: dict[str, Any], name: str
) -> None:
    service = services[name]
    assert service["image"].startswith("labeler:")
    args = list(service["command"])
    command = main.get_command(click.Context(main), args[0])
    assert command is not None, f"{name}: `labeler {args[0]}` is not a command"
    command.make_context(args[0], args[1:])  # raises on an unknown option or a bad value
    assert service["environment"]["LABELER_S3_ENDPOINT_URL"] == "http://minio:9000"


def test_services_restart_and_report_health(services: dict[str, Any]) -> None:
    for name in LONG_RUNNING:
        assert services[name]["restart"] == "unless-stopped", name
    for name in ("redis", "minio", "prometheus"):
        assert "healthcheck" in services[name], name
    assert services["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"


def test_redis_keeps_acknowledged_work_and_never_evicts(services: dict[str, Any]) -> None:
    command = services["redis"]["command"]
    command = command if isinstance(command, str) else " ".join(command)
    assert "--appendonly yes" in command
    assert "--maxmemory-policy noeviction" in command


def test_minio_sends_incoming_events_to_the_dispatchers_list(services: dict[str, Any]) -> None:
    minio = services["minio"]["environment"]
    dispatcher = services["dispatcher"]["environment"]
    assert minio["MINIO_NOTIFY_REDIS_FORMAT_PRIMARY"] == "access"
    assert minio["MINIO_NOTIFY_REDIS_KEY_PRIMARY"] == dispatcher["LABELER_EVENTS_LIST"]
    entrypoint = services["minio-init"]["entrypoint"]
    init = entrypoint if isinstance(entrypoint, str) else " ".join(entrypoint)
    assert "--event put --prefix incoming/" in init


def test_gpu_profile_reserves_a_device(services: dict[str, Any]) -> None:
    gpu = services["inference-worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    device = gpu["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["capabilities"] == ["gpu"]


def test_every_image_is_pinned_to_a_version(services: dict[str, Any]) -> None:
    for name, service in services.items():
        image = service["image"]
        if image.startswith("labeler:"):
            continue  # built here
        _, _, tag = image.rpartition(":")
        pinned = "@sha256:" in image or (tag != "latest" and any(c.isdigit() for c in tag))
        assert pinned, f"{name}: {image} is not pinned to a version"
        assert not tag.split("-")[0].isdigit() or "." in tag, f"{name}: {image} is a major only"


def test_only_the_review_app_is_published_beyond_this_host(services: dict[str, Any]) -> None:
    exposed = {}
    for name, service in services.items():
        for port in service.get("ports", []):
            if isinstance(port, dict):
                host_ip = port.get("host_ip", "")
            else:  # "127.0.0.1:9000:9000/tcp", or "8300:8300" (every interface)
                parts = str(port).split(":")
                host_ip = parts[0] if len(parts) == 3 else ""
            if host_ip not in ("127.0.0.1", "::1"):
                exposed[name] = port
    assert list(exposed) == ["review"], exposed


def test_the_review_app_gets_the_tls_proxy_settings(services: dict[str, Any]) -> None:
    environment = services["review"]["environment"]
    assert "LABELER_REVIEW_TRUSTED_PROXIES" in environment
    assert "LABELER_REVIEW_SECURE_COOKIES" in environment
