"""labeler's composition root: settings from the environment, the CLI, and the wiring."""

from labeler.settings import ConfigError, Settings, load_settings, settings_from_env

__all__ = ["ConfigError", "Settings", "load_settings", "settings_from_env"]
