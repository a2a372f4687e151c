"""Retraining: the data set and its image cache, fitting, evaluation and the promotion gate,
reports, and OpenVINO optimization of a new version.
"""

from workers.training.architectures import make_backbone_classifier, make_small_cnn
from workers.training.augmentation import parse_augmentation
from workers.training.dataset import TrainingData, load_training_data, split_of
from workers.training.evaluation import (
    Evaluation,
    GatePolicy,
    calibrate_thresholds,
    decide,
    evaluate,
    predict_split,
)
from workers.training.fitting import TrainingConfig, train_model
from workers.training.image_cache import ImageCache
from workers.training.label_issues import (
    LabelIssue,
    LabelIssueConfig,
    LabelIssueReport,
    find_label_issues_in,
)
from workers.training.optimization import (
    HeldOut,
    Int8Bars,
    calibration_from_store,
    calibration_from_training,
    optimize_version,
)
from workers.training.report import report_html
from workers.training.retrain import RetrainConfig, Retrainer, RetrainOutcome

__all__ = [
    "Evaluation",
    "GatePolicy",
    "HeldOut",
    "ImageCache",
    "Int8Bars",
    "LabelIssue",
    "LabelIssueConfig",
    "LabelIssueReport",
    "RetrainConfig",
    "RetrainOutcome",
    "Retrainer",
    "TrainingConfig",
    "TrainingData",
    "calibrate_thresholds",
    "calibration_from_store",
    "calibration_from_training",
    "decide",
    "evaluate",
    "find_label_issues_in",
    "load_training_data",
    "make_backbone_classifier",
    "make_small_cnn",
    "optimize_version",
    "parse_augmentation",
    "predict_split",
    "report_html",
    "split_of",
    "train_model",
]
