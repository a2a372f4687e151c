"""``labeler models ...``: bring a model, list versions, promote, roll back."""

from __future__ import annotations

import time
from pathlib import Path

import click

from labeler.cli_common import settings_or_exit
from labeler.wiring import Stores


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
def import_model(
    path: Path,
    name: str | None,
    classes: str | None,
    classes_file: Path | None,
    review_threshold: float,
    no_promote: bool,
) -> None:
    """Register PATH (a .keras file) as the next version and promote it."""
    from storage.registry import ModelMetadata
    from workers.errors import InvalidModel
    from workers.model_runtime import load_keras_file, model_signature

    settings = settings_or_exit()
    class_names = _class_names(classes, classes_file)
    try:
        size, outputs = model_signature(load_keras_file(path))
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
    if not no_promote:
        registry.promote(metadata.version)
        click.echo(f"promoted {registry.name} v{metadata.version} to production")


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
        click.echo(f"{mark} v{version}  {created} UTC  {len(meta.class_names)} classes  {figures}")


@models.command("promote")
@click.argument("version", type=click.IntRange(min=1))
@click.option("--name", help="Registry name (default: LABELER_MODEL_NAME).")
def promote(version: int, name: str | None) -> None:
    """Serve VERSION: workers switch within LABELER_MODEL_RELOAD_SECONDS."""
    registry = Stores(settings_or_exit()).registry(name)
    registry.promote(version)
    click.echo(f"promoted {registry.name} v{version} to production")


@models.command("rollback")
@click.option("--to", "to", type=click.IntRange(min=1), help="Version (default: the previous).")
@click.option("--name", help="Registry name (default: LABELER_MODEL_NAME).")
def rollback(to: int | None, name: str | None) -> None:
    """Serve the previously promoted version again (or --to VERSION)."""
    registry = Stores(settings_or_exit()).registry(name)
    alias = registry.rollback(to)
    click.echo(f"{registry.name} production is now v{alias.version}")


def _class_names(classes: str | None, classes_file: Path | None) -> list[str]:
    if (classes is None) == (classes_file is None):
        raise click.UsageError("give exactly one of --classes a,b,c or --classes-file FILE")
    text = classes_file.read_text() if classes_file else ""
    names = [c.strip() for c in (classes.split(",") if classes else text.splitlines())]
    names = [c for c in names if c]
    if len(names) < 2 or len(set(names)) != len(names):
        raise click.UsageError(f"need at least two distinct class names, got {names}")
    return names


def _library_versions() -> dict[str, str]:
    from importlib.metadata import version

    return {lib: version(lib) for lib in ("tensorflow", "keras", "pillow", "numpy")}
