"""Metric definitions and their exposition; Prometheus and Grafana configuration lives beside."""

from monitoring.exposition import (
    MetricsServer,
    exposition_registry,
    mark_process_dead,
    reset_multiprocess_dir,
)
from monitoring.metrics import Metrics, SupervisorMetrics

__all__ = [
    "Metrics",
    "MetricsServer",
    "SupervisorMetrics",
    "exposition_registry",
    "mark_process_dead",
    "reset_multiprocess_dir",
]
