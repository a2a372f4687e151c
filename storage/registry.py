"""The model registry: immutable versions and the ``production.json`` alias workers follow.

A version is ``<name>/<version>/model.keras`` plus ``metadata.json``, written in that order:
a version exists once its metadata does, so a reader never sees a half-written one. Promotion
and rollback rewrite only the alias (one atomic PUT). A version's OpenVINO artifacts live in
``<name>/<version>/openvino/``: the IR files per precision, then ``manifest.json`` listing them.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from storage.base import ObjectStore
from storage.errors import ObjectNotFound, PermanentStorageError
from storage.keys import (
    ARTIFACTS_FILE,
    METADATA_FILE,
    alias_key,
    metadata_key,
    model_file_key,
    model_prefix,
    openvino_key,
)

PRECISIONS = ("fp32", "int8")
IR_FILES = ("model.xml", "model.bin")


class ModelMetadata(BaseModel):
    """Everything needed to serve, compare and reproduce one model version."""

    model_config = ConfigDict(protected_namespaces=())

    name: str
    version: int = Field(ge=1)
    class_names: list[str] = Field(min_length=2)
    input_size: tuple[int, int]  # (height, width)
    preprocessing: str = "RGB uint8 resized (stretched, bilinear); the model rescales inside"
    review_threshold: float = Field(0.5, ge=0.0, le=1.0)
    class_thresholds: dict[str, float] = Field(default_factory=dict)
    parent_version: int | None = None
    created_at: float = Field(default_factory=time.time)
    training_data_fingerprint: str | None = None
    seed: int | None = None
    library_versions: dict[str, str] = Field(default_factory=dict)
    evaluation: dict[str, float] = Field(default_factory=dict)
    source: str = "trained"  # or "imported"

    def threshold_for(self, label: str) -> float:
        return self.class_thresholds.get(label, self.review_threshold)


class ProductionAlias(BaseModel):
    """``production.json``: the version in service and the ones before it, newest last."""

    version: int
    promoted_at: float
    history: list[int] = Field(default_factory=list)


class Int8Approval(BaseModel):
    """Whether the INT8 IR may serve instead of FP32, and the figures that decided it."""

    approved: bool
    reason: str
    figures: dict[str, float] = Field(default_factory=dict)


class RuntimeArtifacts(BaseModel):
    """``openvino/manifest.json``: the IR's numeric formats (fp32, int8) a version has; INT8
    serves only if approved."""

    # Manifests written before the rename call the list "precisions".
    formats: list[str] = Field(validation_alias=AliasChoices("formats", "precisions"))
    int8: Int8Approval | None = None
    created_at: float = Field(default_factory=time.time)

    def servable(self, serving_format: str) -> bool:
        if serving_format == "int8":
            return "int8" in self.formats and self.int8 is not None and self.int8.approved
        return serving_format in self.formats


class VersionNotFound(PermanentStorageError):
    """No such version of the model."""


class ModelRegistry:
    """Versions of one named model in a store."""

    def __init__(self, store: ObjectStore, name: str) -> None:
        if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,62}", name):
            raise ValueError(f"model name {name!r} must be lowercase letters, digits, '_' or '-'")
        self.store = store
        self.name = name

    def versions(self) -> list[int]:
        """Complete versions (those with metadata), ascending."""
        found = []
        for info in self.store.list(model_prefix(self.name)):
            parts = info.key.split("/")
            if len(parts) == 3 and parts[2] == METADATA_FILE and parts[1].isdigit():
                found.append(int(parts[1]))
        return sorted(found)

    def metadata(self, version: int) -> ModelMetadata:
        try:
            data = self.store.get(metadata_key(self.name, version)).data
        except ObjectNotFound:
            raise VersionNotFound(f"model {self.name!r} has no version {version}") from None
        return ModelMetadata.model_validate_json(data)

    def model_bytes(self, version: int) -> bytes:
        return self.store.get(model_file_key(self.name, version)).data

    def register(self, model_file: bytes, metadata: ModelMetadata) -> ModelMetadata:
        """Store a new version (numbered after the newest) and return its metadata."""
        version = max(self.versions(), default=0) + 1
        stored = metadata.model_copy(update={"name": self.name, "version": version})
        self.store.put(model_file_key(self.name, version), model_file)
        self.store.put(
            metadata_key(self.name, version),
            stored.model_dump_json(indent=2).encode(),
            content_type="application/json",
        )
        return stored

    def put_artifacts(
        self, version: int, ir: dict[str, tuple[bytes, bytes]], manifest: RuntimeArtifacts
    ) -> None:
        """Store ``{precision: (xml, bin)}`` IR files, then the manifest that makes them visible."""
        self.metadata(version)  # raises VersionNotFound
        for precision, files in ir.items():
            if precision not in PRECISIONS:
                raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
            for file, data in zip(IR_FILES, files, strict=True):
                self.store.put(openvino_key(self.name, version, f"{precision}/{file}"), data)
        self.store.put(
            openvino_key(self.name, version, ARTIFACTS_FILE),
            manifest.model_dump_json(indent=2).encode(),
            content_type="application/json",
        )

    def artifacts(self, version: int) -> RuntimeArtifacts | None:
        """The version's OpenVINO manifest, or None when it has none yet."""
        try:
            data = self.store.get(openvino_key(self.name, version, ARTIFACTS_FILE)).data
        except ObjectNotFound:
            return None
        return RuntimeArtifacts.model_validate_json(data)

    def ir_bytes(self, version: int, precision: str) -> tuple[bytes, bytes]:
        """``(model.xml, model.bin)`` of one precision."""
        xml, weights = (
            self.store.get(openvino_key(self.name, version, f"{precision}/{file}")).data
            for file in IR_FILES
        )
        return xml, weights

    def production(self) -> ProductionAlias | None:
        try:
            data = self.store.get(alias_key(self.name)).data
        except ObjectNotFound:
            return None
        return ProductionAlias.model_validate_json(data)

    def promote(self, version: int) -> ProductionAlias:
        """Point the alias at ``version`` (which must exist)."""
        self.metadata(version)  # raises VersionNotFound
        current = self.production()
        history = _history_with(current)
        alias = ProductionAlias(version=version, promoted_at=time.time(), history=history)
        self._write_alias(alias)
        return alias

    def rollback(self, to: int | None = None) -> ProductionAlias:
        """Serve ``to``, or the version promoted before the current one."""
        current = self.production()
        if current is None:
            raise VersionNotFound(f"model {self.name!r} has no production version to roll back")
        if to is None:
            earlier = [v for v in current.history if v != current.version]
            if not earlier:
                raise VersionNotFound(f"model {self.name!r} has no earlier version to roll back to")
            to = earlier[-1]
        self.metadata(to)
        history = [v for v in current.history if v != to]
        self._write_alias(ProductionAlias(version=to, promoted_at=time.time(), history=history))
        return self.production() or current

    def _write_alias(self, alias: ProductionAlias) -> None:
        self.store.put(
            alias_key(self.name), alias.model_dump_json().encode(), content_type="application/json"
        )


def _history_with(current: ProductionAlias | None) -> list[int]:
    if current is None:
        return []
    history: Sequence[int] = [*current.history, current.version]
    return list(history)[-50:]  # bounded: the alias is read every few seconds by every worker
