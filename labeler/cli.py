"""The ``labeler`` command line."""

from __future__ import annotations

import json
import sys

import click

from labeler.config_table import markdown_table
from labeler.settings import ConfigError, Settings, load_settings


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)


@click.group()
@click.version_option(package_name="labeler")
def main() -> None:
    """Drop images into a bucket; get them labeled."""


@main.command()
@click.option("--markdown", is_flag=True, help="Print the README's configuration table.")
def config(markdown: bool) -> None:
    """Validate the environment and print the effective settings (secrets masked)."""
    if markdown:
        click.echo(markdown_table())
        return
    settings = _settings()
    values = json.loads(settings.model_dump_json())
    click.echo(json.dumps(values, indent=2, default=str))


@main.command()
def demo() -> None:
    """Run the main job end to end on the embedded default.

    Batched inference is not built yet: for now this checks the configuration and makes a round
    trip through the configured incoming store, and says so.
    """
    from storage import Area, open_store

    settings = _settings()
    if settings.uses_s3():
        raise click.UsageError("the demo runs on the local data directory; unset the S3 URIs")
    store = open_store(settings.area_uri(Area.INCOMING))
    info = store.put("demo/hello.txt", b"hello from labeler\n")
    click.echo(f"wrote {store.uri}/{info.key} (etag {info.etag})")
    click.echo("labeling is not implemented yet: this demo only exercised settings and storage.")
