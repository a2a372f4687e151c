"""The ``labeler`` command line."""

from __future__ import annotations

import json

import click

from labeler.cli_common import failures_as_messages, settings_or_exit
from labeler.commands_dispatch import dispatch
from labeler.commands_export import export
from labeler.commands_models import models
from labeler.commands_relabel import relabel
from labeler.commands_review import review
from labeler.commands_run import classify, submit, worker
from labeler.commands_status import status
from labeler.commands_training import beat, check_labels, report, retrain
from labeler.readme_tables import errors_markdown_table, markdown_table


@click.group()
@click.version_option(package_name="labeler")
def main() -> None:
    """Drop images into a bucket; get them labeled."""


@main.command()
@click.option("--markdown", is_flag=True, help="Print the README's configuration table.")
@click.option("--errors-markdown", is_flag=True, help="Print the README's error table.")
def config(markdown: bool, errors_markdown: bool) -> None:
    """Validate the environment and print the effective settings (secrets masked)."""
    if markdown or errors_markdown:
        click.echo(markdown_table() if markdown else errors_markdown_table())
        return
    settings = settings_or_exit()
    values = json.loads(settings.model_dump_json())
    click.echo(json.dumps(values, indent=2, default=str))


@main.command()
@click.option("--data-dir", default="data/demo", show_default=True, type=click.Path())
@click.option("--limit", type=click.IntRange(min=100), help="Use only the first N digits.")
@click.option(
    "--review-sample",
    type=click.IntRange(min=1),
    help="Then answer N flagged digits from the truth, retrain, and compare the versions.",
)
def demo(data_dir: str, limit: int | None, review_sample: int | None) -> None:
    """Label real images end to end on the local store: retrain, then label through Redis."""
    from pathlib import Path

    from labeler.demo import run_demo

    with failures_as_messages():
        run_demo(settings_or_exit(), Path(data_dir), limit, review_sample)


main.add_command(models)
main.add_command(worker)
main.add_command(submit)
main.add_command(classify)
main.add_command(retrain)
main.add_command(beat)
main.add_command(report)
main.add_command(dispatch)
main.add_command(status)
main.add_command(review)
main.add_command(export)
main.add_command(check_labels)
main.add_command(relabel)


@main.command()
@click.option("--data-dir", type=click.Path(file_okay=False), help="Default: LABELER_DATA_DIR.")
def up(data_dir: str | None) -> None:
    """Run everything on this machine: Redis (if none answers), workers, dispatcher, beat."""
    from pathlib import Path

    from labeler.embedded import run_up

    with failures_as_messages():
        run_up(settings_or_exit(Path(data_dir) if data_dir else None))
