"""One retrain run: data -> fit -> register -> evaluate -> report -> gate -> promote (or not)."""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import numpy as np

from monitoring.metrics import Metrics
from storage import ObjectNotFound, ObjectStore
from storage.keys import report_key
from storage.registry import ModelMetadata, ModelRegistry
from workers.inference import load_keras_file
from workers.review import count_reviewed_since
from workers.training.dataset import SplitRatios, TrainingData, load_training_data
from workers.training.evaluation import (
    Evaluation,
    GateDecision,
    GatePolicy,
    calibrate_thresholds,
    decide,
    evaluate,
    predict_split,
)
from workers.training.fitting import Progress, TrainedModel, TrainingConfig, train_model
from workers.training.image_cache import ImageCache
from workers.training.label_issues import (
    LabelIssue,
    LabelIssueConfig,
    LabelIssueReport,
    find_label_issues_in,
    thumbnails,
)
from workers.training.optimization import Int8Bars, calibration_from_training, optimize_version
from workers.training.report import write_version_reports

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetrainConfig:
    """What a retrain run needs to know. The fields without a default come from Settings
    (``labeler.wiring.retrain_config``); the others no variable sets."""

    training: TrainingConfig
    gate: GatePolicy
    target_precision: float  # promised precision of auto labels: sets review thresholds
    max_image_pixels: int
    int8: Int8Bars
    cache_dir: Path  # see image_cache
    cache_max_bytes: int
    ratios: SplitRatios = field(default_factory=SplitRatios)
    export_openvino: bool = True  # the IR is made here, once, never by the workers
    label_issues: LabelIssueConfig | None = field(default_factory=LabelIssueConfig)  # None: off
    report_label_issues: int = 24  # the worst shown with thumbnails in report.html


@dataclass(frozen=True)
class RetrainOutcome:
    version: int
    promoted: bool
    reasons: list[str]
    accuracy: float
    macro_f1: float
    production_version: int | None
    seconds: float
    reviewed_images_added: int | None = None  # reviewed images new since the parent version
    images: dict[str, int] = field(default_factory=dict)  # cache phase: fetched, reused, ...
    label_issues: int | None = None  # likely label errors found in training/ (None: not run)

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass(frozen=True)
class _Verdict:
    """The candidate's and production's evaluations on one test split, and the gate's say."""

    candidate: Evaluation
    production: Evaluation | None
    decision: GateDecision


class Retrainer:
    """Fine-tunes the production model (or builds the first) and promotes it only if better."""

    def __init__(
        self,
        training: ObjectStore,
        registry: ModelRegistry,
        reports: ObjectStore,
        metrics: Metrics,
        config: RetrainConfig,
        labels: ObjectStore | None = None,
        label_quality: Callable[[int], dict[str, Any]] | None = None,
        queue_label_issues: Callable[[list[LabelIssue]], int] | None = None,
    ) -> None:
        self.labels = labels  # to count the reviewed images that joined the data
        self._label_quality = label_quality  # production's audited precision, for the report
        self.queue_label_issues = queue_label_issues  # to the review queue: a person decides
        self.training = training
        self.registry = registry
        self.reports = reports
        self.metrics = metrics
        self.config = config

    def run(self, progress: Progress | None = None) -> RetrainOutcome:
        """One retrain run, in ten phases:

        1. warm start: load the production version (none before the first model);
        2. data: fetch and decode training/ once into the image cache, split by key hash;
        3. fit: fine-tune the production model, or build the first one;
        4. evaluate: candidate and production on the same test split, and the gate's decision;
        5. calibrate: per-class review thresholds on the validation split;
        6. register: the candidate becomes a new (not yet served) version;
        7. optimize: the OpenVINO IR, INT8 judged against FP32 (a failure only warns);
        8. label issues: training images whose folder out-of-sample predictions doubt, queued
           for a person (a failure only warns);
        9. report: evaluation.json, the confusion matrix and the HTML report;
        10. promote: only a version that passed the gate; count the decision.

        Args:
            progress: Called with ``{"phase": ...}`` (and counts) as the run goes.

        Returns:
            What was made and whether it was promoted.
        """
        report = progress or (lambda _: None)
        started = time.monotonic()
        alias = self.registry.production()
        base, base_meta = self._production_model(alias.version if alias else None)
        size = tuple(base_meta.input_size) if base_meta else self.config.training.input_size
        data = self._cache_data(size, report)
        trained = self._fit(data, base, base_meta, report)
        report({"phase": "evaluating"})
        verdict = self._judge(trained.model, base, base_meta, data)
        thresholds = self._calibrate(trained.model, data)
        metadata = self._register(
            trained.model, data, size, thresholds, verdict.candidate, base_meta
        )
        report({"phase": "optimizing"})
        runtimes = self._optimize(trained.model, data, metadata)
        joined = self._reviewed_since(base_meta)
        report({"phase": "finding label issues"})
        issues = self.label_issues(trained.model, data)
        facts = _facts(data, trained, joined)
        audited = self._label_quality(alias.version) if alias and self._label_quality else None
        self._write_reports(metadata, verdict, trained.history, runtimes, facts, audited, issues)
        self._promote(metadata, verdict)
        outcome = RetrainOutcome(
            version=metadata.version,
            promoted=verdict.decision.passed,
            reasons=verdict.decision.reasons,
            accuracy=verdict.candidate.accuracy,
            macro_f1=verdict.candidate.macro_f1,
            production_version=alias.version if alias else None,
            seconds=round(time.monotonic() - started, 1),
            reviewed_images_added=joined,
            images=data.cache,
            label_issues=issues.found if issues else None,
        )
        log.info("retrain finished: %s", outcome)
        return outcome

    def _cache_data(self, size: tuple[int, ...], report: Progress) -> TrainingData:
        """Phase 2: the training data, each image fetched and decoded once into the cache."""
        report({"phase": "caching images"})
        cache = ImageCache(
            self.config.cache_dir, (size[0], size[1]), max_bytes=self.config.cache_max_bytes
        )
        data = load_training_data(
            self.training,
            cache,
            ratios=self.config.ratios,
            max_pixels=self.config.max_image_pixels,
            progress=lambda counts: report({"phase": "caching images", **counts}),
        )
        log.info("training images: %s", data.cache)
        return data

    def _fit(
        self, data: TrainingData, base: Any, base_meta: ModelMetadata | None, report: Progress
    ) -> TrainedModel:
        """Phase 3: fine-tune ``base`` (or build the first model) on the training split."""
        return train_model(
            data,
            self.config.training,
            base_model=base,
            base_classes=base_meta.class_names if base_meta else None,
            progress=report,
        )

    def _judge(
        self, model: Any, base: Any, base_meta: ModelMetadata | None, data: TrainingData
    ) -> _Verdict:
        """Phase 4: both models on the same test images, and the gate's decision."""
        candidate = self._evaluate(model, data, data.class_names)
        production = self._evaluate(base, data, base_meta.class_names) if base_meta else None
        return _Verdict(candidate, production, decide(candidate, production, self.config.gate))

    def _calibrate(self, model: Any, data: TrainingData) -> dict[str, float]:
        """Phase 5: per-class thresholds under which a label waits for review."""
        return calibrate_thresholds(
            data.validation.labels,
            predict_split(model, data.validation),
            data.class_names,
            target_precision=self.config.target_precision,
            default=0.5,
        )

    def _promote(self, metadata: ModelMetadata, verdict: _Verdict) -> None:
        """Phase 10: serve the version if it passed; count the decision and its figures."""
        passed = verdict.decision.passed
        if passed:
            self.registry.promote(metadata.version)
        self.metrics.gate_decisions.labels("passed" if passed else "refused").inc()
        for metric, value in verdict.candidate.summary().items():
            self.metrics.evaluation.labels(metadata.name, metric).set(value)

    def _production_model(self, version: int | None) -> tuple[Any, ModelMetadata | None]:
        if version is None:
            return None, None
        metadata = self.registry.metadata(version)
        with tempfile.TemporaryDirectory(prefix="labeler-retrain-") as tmp:
            path = Path(tmp) / "model.keras"
            path.write_bytes(self.registry.model_bytes(version))
            return load_keras_file(path), metadata

    def _evaluate(self, model: Any, data: TrainingData, model_classes: list[str]) -> Evaluation:
        """Evaluate on the test split in the *data's* class order (production may know fewer)."""
        probs = predict_split(model, data.test)
        if model_classes != data.class_names:
            aligned = np.zeros((len(probs), len(data.class_names)), np.float32)
            for j, name in enumerate(model_classes):
                if name in data.class_names:
                    aligned[:, data.class_names.index(name)] = probs[:, j]
            probs = aligned
        return evaluate(data.test.keys, data.test.labels, probs, data.class_names)

    def _register(
        self,
        model: Any,
        data: TrainingData,
        size: tuple[int, ...],
        thresholds: dict[str, float],
        candidate: Evaluation,
        parent: ModelMetadata | None,
    ) -> ModelMetadata:
        with tempfile.TemporaryDirectory(prefix="labeler-candidate-") as tmp:
            path = Path(tmp) / "model.keras"
            model.save(path)
            return self.registry.register(
                path.read_bytes(),
                ModelMetadata(
                    name=self.registry.name,
                    version=1,
                    class_names=data.class_names,
                    input_size=(int(size[0]), int(size[1])),
                    class_thresholds=thresholds,
                    parent_version=parent.version if parent else None,
                    training_data_fingerprint=data.fingerprint,
                    seed=self.config.training.seed,
                    library_versions={
                        p: package_version(p)
                        for p in ("tensorflow", "keras", "pillow", "scikit-learn")
                    },
                    evaluation=candidate.summary(),
                ),
            )

    def _optimize(
        self, model: Any, data: TrainingData, metadata: ModelMetadata
    ) -> list[dict[str, Any]]:
        """OpenVINO IR next to the version: INT8 calibrated on validation, judged on test.
        A failed export leaves a TensorFlow-only version (workers fall back with a warning)."""
        if not self.config.export_openvino:
            return []
        try:
            calibration, held_out = calibration_from_training(
                data, data.class_names, self.config.int8
            )
            result = optimize_version(
                self.registry,
                metadata.version,
                model,
                calibration=calibration,
                held_out=held_out,
                bars=self.config.int8,
            )
        except Exception:
            log.exception(
                "OpenVINO export of %s v%s failed: it serves with TensorFlow",
                metadata.name,
                metadata.version,
            )
            return []
        return result.rows

    def _write_reports(
        self,
        metadata: ModelMetadata,
        verdict: _Verdict,
        history: dict[str, list[float]],
        runtimes: list[dict[str, Any]],
        facts: dict[str, int | str | None],
        audited: dict[str, Any] | None,
        issues: LabelIssueReport | None,
    ) -> None:
        """Phase 9: evaluation.json, the confusion matrix and the HTML report of the version."""
        write_version_reports(
            self.reports,
            metadata,
            (verdict.candidate, verdict.production, verdict.decision),
            history,
            runtimes,
            {**facts, "production_label_quality": audited},
            audited=audited,
            issues=issues,
            issues_shown=self.config.report_label_issues,
        )

    def check_labels(self, progress: Progress | None = None) -> dict[str, Any]:
        """Label issues in training/ by the production model, by hand (``labeler check-labels``):
        queued for review and written into that version's ``evaluation.json``."""
        report = progress or (lambda _: None)
        alias = self.registry.production()
        if alias is None:
            return {"outcome": "no_model"}
        model, meta = self._production_model(alias.version)
        assert meta is not None  # a production alias names a registered version
        data = self._cache_data(tuple(meta.input_size), report)
        report({"phase": "finding label issues"})
        found = self.label_issues(model, data)
        if found is None:
            return {"outcome": "failed", "version": meta.version}
        self._record_issues(meta, found)
        return {"outcome": "checked", "version": meta.version, **found.summary()}

    def _record_issues(self, meta: ModelMetadata, found: LabelIssueReport) -> None:
        key = report_key(meta.name, meta.version, "evaluation.json")
        try:
            document = json.loads(self.reports.get(key).data)
        except (ObjectNotFound, ValueError):
            document = {"model": meta.name, "version": meta.version}
        document["label_issues"] = [issue.as_dict() for issue in found.issues]
        document["label_issue_search"] = found.summary()
        data = json.dumps(document, indent=2).encode()
        self.reports.put(key, data, content_type="application/json")

    def label_issues(self, model: Any, data: TrainingData) -> LabelIssueReport | None:
        """Likely label errors in ``data``, queued for review; a failure here never fails the
        retrain (the version is still judged and reported, without the list)."""
        if self.config.label_issues is None:
            return None
        try:
            found = find_label_issues_in(model, data, self.config.label_issues)
            worst = found.issues[: self.config.report_label_issues]
            found.thumbnails[:] = thumbnails(data, worst)
            if self.queue_label_issues is not None:
                self.queue_label_issues(found.issues)
        except Exception:
            log.exception("finding label issues failed; the retrain goes on without them")
            return None
        return found

    def _reviewed_since(self, parent: ModelMetadata | None) -> int | None:
        """Reviewed images added to training/ since the parent version was made (or ever)."""
        if self.labels is None:
            return None
        return count_reviewed_since(self.training, self.labels, parent.created_at if parent else 0)


def _facts(data: TrainingData, trained: TrainedModel, joined: int | None) -> dict[str, Any]:
    """What the report says about the run besides the evaluation."""
    return {
        "training_images": sum(len(s.labels) for s in (data.train, data.validation, data.test)),
        "reviewed_images_added": joined,
        "training_devices": trained.replicas,
        "training_dtype_policy": trained.policy,
    }
