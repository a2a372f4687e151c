"""Likely label errors in ``training/``, by confident learning (cleanlab).

Every training image is embedded by the model's penultimate layer (streamed in batches: memory
is one ``N x d`` float32 array, d at most 256, so 100,000 images take 100 MB), then a logistic
regression is fitted k times on k-1 folds and predicts the fold it did not see, so every
probability is out of sample (what ``find_label_issues`` requires). Nothing here moves or deletes
an image: the issues go to ``evaluation.json``, the report, and the review queue, and a person
decides.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from workers.training.dataset import TrainingData

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LabelIssueConfig:
    folds: int = 5
    batch_size: int = 256  # images embedded per model call
    max_width: int = 256  # wider embeddings are randomly projected down to this many columns
    max_issues: int = 1000  # the worst this many are listed and queued; the count says all
    seed: int = 0


@dataclass(frozen=True)
class LabelIssue:
    """A training image whose folder (``given``) the out-of-sample predictions doubt.

    ``quality`` is cleanlab's label quality score in [0, 1]: lower is more likely wrong.
    """

    key: str
    given: str
    suggested: str
    quality: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LabelIssueReport:
    issues: list[LabelIssue]  # worst first, at most ``max_issues``
    found: int  # all flagged, listed or not
    images: int
    seconds: float
    thumbnails: list[bytes | None] = field(default_factory=list)  # of the worst, for the report

    def summary(self) -> dict[str, Any]:
        return {"found": self.found, "images": self.images, "seconds": self.seconds}


def penultimate_model(model: Any) -> Any:
    """The model up to the input of its last (classifier) layer: an embedding model."""
    import keras

    return keras.Model(model.inputs, model.layers[-1].input)


def embed(
    model: Any,
    batches: Iterable[npt.NDArray[Any]],
    count: int,
    max_width: int = 256,
    seed: int = 0,
) -> npt.NDArray[np.float32]:
    """``count`` embeddings, filled batch by batch into one preallocated float32 array.

    A layer wider than ``max_width`` (a flattened feature map: 4,096 for the small CNN) goes
    through a fixed Gaussian random projection, which keeps distances (Johnson-Lindenstrauss):
    100,000 images then cost 100 MB, not 1.6 GB, and the regression is 16 times cheaper.
    """
    extractor = penultimate_model(model)
    width = int(np.prod(extractor.output_shape[1:]))
    projection = None
    if width > max_width:
        rng = np.random.default_rng(seed)
        projection = (rng.standard_normal((width, max_width)) / np.sqrt(max_width)).astype(
            np.float32
        )
    out = np.empty((count, min(width, max_width)), np.float32)
    filled = 0
    for images in batches:
        vectors = np.asarray(extractor.predict_on_batch(images), np.float32)
        vectors = vectors.reshape(len(images), width)
        if projection is not None:
            vectors = vectors @ projection
        out[filled : filled + len(images)] = vectors
        filled += len(images)
    if filled != count:
        raise ValueError(f"expected {count} images to embed, got {filled}")
    return out


def out_of_sample_probabilities(
    embeddings: npt.NDArray[np.float32], labels: npt.NDArray[np.int64], folds: int, seed: int
) -> npt.NDArray[np.float64]:
    """k-fold logistic regression: each row predicted by a model that never saw it."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    smallest = int(np.bincount(labels).min())
    # Stratified folds need every class in every fold; a class of 3 images allows 3 folds.
    splits = max(2, min(folds, smallest))
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
    cv = StratifiedKFold(n_splits=splits, shuffle=True, random_state=seed)
    probabilities: npt.NDArray[np.float64] = cross_val_predict(
        classifier, embeddings, labels, cv=cv, method="predict_proba"
    )
    return probabilities


def rank_issues(
    keys: list[str],
    labels: npt.NDArray[np.int64],
    probabilities: npt.NDArray[np.float64],
    class_names: list[str],
    limit: int,
) -> tuple[list[LabelIssue], int]:
    """The flagged images, worst label quality first (at most ``limit``), and how many in all."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    # n_jobs=1: a Celery prefork child is daemonic and may not start a multiprocessing pool.
    flagged = find_label_issues(labels, probabilities, n_jobs=1)
    quality = get_label_quality_scores(labels, probabilities)
    chosen = np.flatnonzero(flagged)
    chosen = chosen[np.argsort(quality[chosen], kind="stable")][:limit]
    issues = [
        LabelIssue(
            key=keys[i],
            given=class_names[labels[i]],
            suggested=class_names[int(probabilities[i].argmax())],
            quality=round(float(quality[i]), 4),
        )
        for i in chosen
    ]
    return issues, int(flagged.sum())


def find_label_issues_in(
    model: Any, data: TrainingData, config: LabelIssueConfig = LabelIssueConfig()
) -> LabelIssueReport:
    """Label issues among every image of ``data`` (train, validation and test splits)."""
    started = time.monotonic()
    splits = (data.train, data.validation, data.test)
    keys = [key for split in splits for key in split.keys]
    labels = np.concatenate([split.labels for split in splits])
    batches = (images for split in splits for images in split.images(config.batch_size))
    embeddings = embed(model, batches, len(keys), config.max_width, config.seed)
    probabilities = out_of_sample_probabilities(embeddings, labels, config.folds, config.seed)
    del embeddings
    issues, found = rank_issues(keys, labels, probabilities, data.class_names, config.max_issues)
    seconds = round(time.monotonic() - started, 1)
    log.info("label issues: %d of %d training images (%.1f s)", found, len(keys), seconds)
    return LabelIssueReport(issues, found, len(keys), seconds)


def thumbnails(data: TrainingData, issues: list[LabelIssue], size: int = 64) -> list[bytes | None]:
    """A PNG of each issue's image, read from the decoded-image cache (None if it is gone)."""
    import io

    from PIL import Image

    entries = {
        key: entry
        for split in (data.train, data.validation, data.test)
        for key, entry in zip(split.keys, split.entries, strict=True)
    }
    height, width = data.train.input_size
    pngs: list[bytes | None] = []
    for issue in issues:
        try:
            with open(entries[issue.key], "rb") as f:
                pixels = f.read(height * width * 3)
            image = Image.frombytes("RGB", (width, height), pixels)
        except (KeyError, OSError, ValueError):
            pngs.append(None)
            continue
        # Nearest keeps a small digit's pixels sharp when scaled up to a visible size.
        resample = Image.Resampling.NEAREST if width < size else Image.Resampling.BILINEAR
        buffer = io.BytesIO()
        image.resize((size, max(1, size * height // width)), resample).save(buffer, "PNG")
        pngs.append(buffer.getvalue())
    return pngs
