"""What every CLI command shares: settings that fail with a readable message and exit code 2."""

from __future__ import annotations

import logging
import sys

import click

from labeler.settings import ConfigError, Settings, load_settings


def settings_or_exit() -> Settings:
    try:
        settings = load_settings()
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s [%(processName)s] %(name)s: %(message)s",
    )
    return settings
