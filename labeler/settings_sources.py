"""Where Settings come from besides ``LABELER_*`` variables: the names a release renamed (still
read, with a warning) and the settings a data directory remembers (``DATA_DIR/labeler.json``).

Order, first wins: arguments, the environment, a renamed variable's old name, the data
directory's file, the defaults.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo
from pydantic_settings import PydanticBaseSettingsSource

from labeler.settings_checks import ConfigError, env_name

log = logging.getLogger(__name__)

DATA_DIR_SETTINGS = "labeler.json"
DEFAULT_DATA_DIR = Path("data")

# old variable -> the field that replaced it; read for one release, then dropped.
RENAMED = {
    "LABELER_PRECISION": "serving_format",
    "LABELER_TRAIN_PRECISION": "train_dtype_policy",
    "LABELER_REVIEW_PRECISION": "auto_label_target_precision",
}


def renamed_variables(env: dict[str, str] | os._Environ[str], taken: set[str]) -> dict[str, str]:
    """Values of the old names in ``env`` by their new field, unless the field is in ``taken``
    (the new name wins); each old name found is warned about, naming its replacement."""
    found = {}
    for old, field in RENAMED.items():
        if old not in env:
            continue
        new = env_name(field)
        if field in taken:
            message = f"{old} is ignored: {new} is set (and {old} is a deprecated name for it)"
        else:
            message = f"{old} is deprecated: set {new} instead (the old name goes next release)"
            found[field] = env[old]
        warnings.warn(message, DeprecationWarning, stacklevel=2)
        log.warning("%s", message)  # also seen where DeprecationWarning is filtered out
    return found


class RenamedVariables(PydanticBaseSettingsSource):
    """The old names of renamed variables, below the new names in priority."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads all at once

    def __call__(self) -> dict[str, Any]:
        return renamed_variables(os.environ, set(self.current_state))


class DataDirSettings(PydanticBaseSettingsSource):
    """``DATA_DIR/labeler.json``: settings a data directory needs (e.g. the demo's model name
    and its private Redis), below the environment in priority."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        data_dir = Path(self.current_state.get("data_dir") or DEFAULT_DATA_DIR)
        values = read_remembered(data_dir)
        fields = set(self.settings_cls.model_fields) - {"data_dir"}
        unknown = sorted(set(values) - fields)
        if unknown:
            raise ConfigError(
                f"{data_dir / DATA_DIR_SETTINGS}: {', '.join(unknown)} cannot be remembered "
                "there (use setting names in lower case, e.g. model_name; not data_dir)"
            )
        return values


def read_remembered(data_dir: Path) -> dict[str, Any]:
    """The settings ``data_dir`` remembers; {} if it remembers none.

    Raises:
        ConfigError: the file is not a JSON object.
    """
    path = Path(data_dir) / DATA_DIR_SETTINGS
    try:
        values = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    if not isinstance(values, dict):
        raise ConfigError(f'{path} must hold one JSON object, e.g. {{"model_name": "digits"}}')
    return values


def remember(data_dir: Path, **values: Any) -> Path:
    """Write ``DATA_DIR/labeler.json`` so every command on ``data_dir`` uses these values
    unless the environment says otherwise."""
    path = Path(data_dir) / DATA_DIR_SETTINGS
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path
