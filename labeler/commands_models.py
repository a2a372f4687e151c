"""``labeler models ...``: bring a model, list versions, promote, roll back, optimize."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import click
import numpy as np

from labeler.cli_common import settings_or_exit
from labeler.commands_relabel import after_promotion
from labeler.settings import Settings
from labeler.wiring import Stores, int8_bars
from storage.registry import ModelRegistry


@click.group()
def models() -> None:
    """The model registry."""


@models.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", help="Registry name (default: LABELER_MODEL_NAME).")
@click.option("--classes", help="Class names in output order, comma-separated.")
@click.option(
    "--classes-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Class names, one per line, in output order.",
)
@click.option("--review-threshold", default=0.5, show_default=True, type=click.FloatRange(0, 1))
@click.option("--no-promote", is_flag=True, help="Register without promoting.")
@click.option(
    "--calibration-dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Images like the ones to label: calibrate INT8 and judge it against FP32.",
)
def import_model(
    path: Path,
    name: str | None,
    classes: str | None,
    classes_file: Path | None,
    review_threshold: float,
    no_promote: bool,
    calibration_dir: Path | None,
) -> None:
    """Register PATH (a .keras file) as the next version, export its OpenVINO IR (and INT8 with
    --calibration-dir), and promote it."""
    from storage.registry import ModelMetadata
    from workers.inference import InvalidModel, load_keras_file, model_signature

    settings = settings_or_exit()
    class_names = _class_names(classes, classes_file)
    if calibration_dir and sum(p.is_file() for p in calibration_dir.rglob("*")) < 5:
        raise click.UsageError(f"--calibration-dir {calibration_dir} needs at least 5 images")
    try:
        model = load_keras_file(path)
        size, outputs = model_signature(model)
    except InvalidModel as exc:
        raise click.ClickException(str(exc)) from None
    if outputs != len(class_names):
        raise click.ClickException(
            f"the model has {outputs} outputs but {len(class_names)} class names were given"
        )
    registry = Stores(settings).registry(name)
    metadata = registry.register(
        path.read_bytes(),
        ModelMetadata(
            name=registry.name,
            version=1,  # replaced by the registry with the next free number
            class_names=class_names,
            input_size=size,
            review_threshold=review_threshold,
            source=f"imported from {path.name}",
            library_versions=_library_versions(),
        ),
    )
    click.echo(f"registered {registry.name} v{metadata.version} (input {size}, {outputs} classes)")
    _optimize(settings, registry, metadata.version, model, calibration_dir)
    if not no_promote:
        registry.promote(metadata.version)
        click.echo(f"promoted {registry.name} v{metadata.version} to production")
        after_promotion(settings, metadata.version)


@models.command("list")
@click.option("--name", help="Registry name (default: LABELER_MODEL_NAME).")
def list_models(name: str | None) -> None:
    """Versions of a model; the production one is marked with *."""
    settings = settings_or_exit()
    registry = Stores(settings).registry(name)
    alias = registry.production()
    for version in registry.versions():
        meta = registry.metadata(version)
        mark = "*" if alias and alias.version == version else " "
        created = time.strftime("%Y-%m-%d %H:%M", time.gmtime(meta.created_at))
        accuracy = meta.evaluation.get("accuracy")
        figures = f"accuracy {accuracy:.4f}" if accuracy is not None else meta.source
        click.echo(
            f"{mark} v{version}  {created} UTC  {len(meta.class_names)} classes  {figures}"
            f"  [{_runtimes(registry, version)}]"
        )


@models.command("promote")
@click.argument("version", type=click.IntRange(min=1))
@click.option("--name", help="Registry name (default: LABELER_MODEL_NAME).")
def promote(version: int, name: str | None) -> None:
    """Serve VERSION: workers switch within LABELER_MODEL_RELOAD_SECONDS."""
    settings = settings_or_exit()
    registry = Stores(settings).registry(name)
    registry.promote(version)
    click.echo(f"promoted {registry.name} v{version} to production")
    after_promotion(settings, version)


@models.command("rollback")
@click.option("--to", "to", type=click.IntRange(min=1), help="Version (default: the previous).")
@click.option("--name", help="Registry name (default: LABELER_MODEL_NAME).")
def rollback(to: int | None, name: str | None) -> None:
    """Serve the previously promoted version again (or --to VERSION)."""
    registry = Stores(settings_or_exit()).registry(name)
    alias = registry.rollback(to)
    click.echo(f"{registry.name} production is now v{alias.version}")


@models.command("optimize")
@click.argument("name")
@click.argument("version", type=click.IntRange(min=1))
@click.option(
    "--calibration-dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Calibrate INT8 on these images (default: the validation split of training/).",
)
def optimize(name: str, version: int, calibration_dir: Path | None) -> None:
    """Make the OpenVINO artifacts of an existing VERSION (FP32 IR, and INT8 if approved)."""
    from workers.inference import InvalidModel, load_keras_file

    settings = settings_or_exit()
    registry = Stores(settings).registry(name)
    registry.metadata(version)  # VersionNotFound says which
    with tempfile.TemporaryDirectory(prefix="labeler-optimize-") as tmp:
        path = Path(tmp) / "model.keras"
        path.write_bytes(registry.model_bytes(version))
        try:
            model = load_keras_file(path)
        except InvalidModel as exc:
            raise click.ClickException(str(exc)) from None
    if not _optimize(settings, registry, version, model, calibration_dir, from_training=True):
        raise click.ClickException(f"{name} v{version} keeps serving with TensorFlow")


def _optimize(
    settings: Settings,
    registry: ModelRegistry,
    version: int,
    model: Any,
    calibration_dir: Path | None,
    *,
    from_training: bool = False,
) -> bool:
    """Export and store the version's OpenVINO artifacts; say what INT8's verdict was."""
    from storage import LocalStore
    from workers.inference import InvalidModel
    from workers.training import (
        HeldOut,
        calibration_from_store,
        optimize_version,
    )

    bars = int8_bars(settings)
    metadata = registry.metadata(version)
    size = (metadata.input_size[0], metadata.input_size[1])
    calibration, held_out = (
        np.zeros((0, *size, 3), np.uint8),
        HeldOut(np.zeros((0, *size, 3), np.uint8)),
    )
    if calibration_dir is not None:
        calibration, held_out = calibration_from_store(
            LocalStore(calibration_dir),
            size,
            limit=bars.calibration_images,
            max_pixels=settings.max_image_pixels,
        )
        if len(calibration) == 0 or len(held_out.images) == 0:
            raise click.ClickException(f"{calibration_dir} needs at least 5 readable images")
    elif from_training:
        calibration, held_out = _training_split(settings, metadata.class_names, size, bars)
    try:
        result = optimize_version(
            registry, version, model, calibration=calibration, held_out=held_out, bars=bars
        )
    except (InvalidModel, ImportError) as exc:
        click.echo(f"warning: no OpenVINO artifacts for v{version}: {exc}", err=True)
        return False
    int8 = result.artifacts.int8
    verdict = "no INT8 (no calibration images)"
    if int8 is not None:
        verdict = f"INT8 {'approved' if int8.approved else 'refused, FP32 serves'}: {int8.reason}"
    click.echo(f"OpenVINO artifacts for {registry.name} v{version}: FP32; {verdict}")
    return True


def _training_split(
    settings: Settings, class_names: list[str], size: tuple[int, int], bars: Any
) -> tuple[Any, Any]:
    from storage import Area
    from workers.training import HeldOut, ImageCache, calibration_from_training, load_training_data

    # The retrains' own cache: a version's images were decoded into it when it was trained.
    cache = ImageCache(
        settings.train_cache_path().resolve(), size, max_bytes=settings.train_cache_max_bytes
    )
    try:
        data = load_training_data(
            Stores(settings).area(Area.TRAINING), cache, max_pixels=settings.max_image_pixels
        )
    except ValueError as exc:  # too little training data: FP32 only
        click.echo(f"no INT8 calibration: {exc}", err=True)
        empty = np.zeros((0, *size, 3), np.uint8)
        return empty, HeldOut(empty)
    return calibration_from_training(data, class_names, bars)


def _runtimes(registry: ModelRegistry, version: int) -> str:
    """What can serve a version: ``tensorflow``, plus its OpenVINO formats and INT8's verdict."""
    artifacts = registry.artifacts(version)
    if artifacts is None:
        return "tensorflow only: run `labeler models optimize`"
    int8 = artifacts.int8
    verdict = "" if int8 is None else (" approved" if int8.approved else " refused")
    return "openvino " + "+".join(artifacts.formats) + verdict


def _class_names(classes: str | None, classes_file: Path | None) -> list[str]:
    if (classes is None) == (classes_file is None):
        raise click.UsageError("give exactly one of --classes a,b,c or --classes-file FILE")
    text = classes_file.read_text() if classes_file else ""
    names = [c.strip() for c in (classes.split(",") if classes else text.splitlines())]
    names = [c for c in names if c]
    if len(names) < 2 or len(set(names)) != len(names):
        raise click.UsageError(f"need at least two distinct class names, got {names}")
    from workers.review import is_class_name

    unsafe = [name for name in names if not is_class_name(name)]
    if unsafe:
        # A class becomes a folder, training/<class>/: no '/', no leading dot, 64 characters.
        raise click.UsageError(
            f"class names must be letters, digits, space and _.+- (starting with a letter or "
            f"digit, at most 64 characters); refused: {unsafe}"
        )
    return names


def _library_versions() -> dict[str, str]:
    from importlib.metadata import version

    return {lib: version(lib) for lib in ("tensorflow", "keras", "pillow", "numpy")}
