"""All configuration, from the environment (prefix ``LABELER_``), validated once at start-up.

Only this package reads the environment; everything else gets plain values through constructors.
The fields, by area: :mod:`labeler.settings_fields`. Value checks and error messages:
:mod:`labeler.settings_checks`; renamed variables and the
settings a data directory remembers: :mod:`labeler.settings_sources`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from labeler.settings_checks import (
    ENV_PREFIX,
    ConfigError,
    check_no_placeholder_secrets,
    check_s3_credentials_together,
    check_visibility_outlasts_tasks,
    env_name,
    explain,
    mask_url,
    reveal,
    with_password,
)
from labeler.settings_fields import (
    BrokerFields,
    DispatchFields,
    InferenceFields,
    MonitoringFields,
    RetrainFields,
    ReviewFields,
    RuntimeFields,
    StorageFields,
)
from labeler.settings_sources import DataDirSettings, RenamedVariables, renamed_variables
from storage import Area, S3Options, join_uri

__all__ = [
    "ENV_PREFIX",
    "ConfigError",
    "Settings",
    "env_name",
    "load_settings",
    "mask_url",
    "settings_from_env",
]


class Settings(  # fields from the last base first: the README lists broker settings first
    ReviewFields,
    MonitoringFields,
    RuntimeFields,
    RetrainFields,
    DispatchFields,
    InferenceFields,
    StorageFields,
    BrokerFields,
    BaseSettings,
):
    """labeler's settings. Each field is ``LABELER_<FIELD NAME IN CAPITALS>`` in the environment."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="ignore", validate_default=True, frozen=True
    )

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        check_visibility_outlasts_tasks(self)
        check_s3_credentials_together(self)
        check_no_placeholder_secrets(self)
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        renamed, remembered = RenamedVariables(settings_cls), DataDirSettings(settings_cls)
        return init_settings, env_settings, renamed, remembered, dotenv_settings

    # --- derived values -----------------------------------------------------------------------
    def area_uri(self, area: Area) -> str:
        """The URI of one storage area: its override, else ``<storage_uri>/<area>``."""
        override: str | None = getattr(self, f"{area.value}_uri")
        root = self.storage_uri or self.data_dir.resolve().as_uri()
        return override or join_uri(root, area.value)

    def train_cache_path(self) -> Path:
        return self.train_cache_dir or self.data_dir / "train-cache"

    def uses_s3(self) -> bool:
        return any(self.area_uri(area).startswith("s3://") for area in Area)

    def broker_connection_url(self) -> str:
        """The broker URL with the password put back in: for connecting, never for printing."""
        return with_password(self.broker_url, self.redis_password)

    def result_backend_url(self) -> str:
        return with_password(self.result_backend or self.broker_url, self.redis_password)

    def s3_options(self) -> S3Options:
        return S3Options(
            endpoint_url=self.s3_endpoint_url,
            region=self.s3_region,
            access_key_id=reveal(self.s3_access_key_id),
            secret_access_key=reveal(self.s3_secret_access_key),
            max_attempts=self.s3_max_attempts,
            connect_timeout=self.s3_connect_timeout,
            read_timeout=self.s3_read_timeout,
            max_pool_connections=self.s3_max_pool_connections,
        )


def load_settings(**overrides: Any) -> Settings:
    """Read and validate the environment; raise :class:`ConfigError` saying what to fix."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(explain(exc)) from None


def settings_from_env(env: Mapping[str, str]) -> Settings:
    """The settings a child process given ``env`` will see (its LABELER_* variables only)."""
    prefix = len(ENV_PREFIX)
    values = {k[prefix:].lower(): v for k, v in env.items() if k.startswith(ENV_PREFIX)}
    values |= renamed_variables(dict(env), set(values))
    return load_settings(**values)
