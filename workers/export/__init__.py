"""Labels out: the records of ``labels/`` as a Ground Truth style JSON Lines manifest, a CSV, or
a Hugging Face ImageFolder, streamed (bounded memory) and written atomically."""

from workers.export.exporter import LabelExporter
from workers.export.reading import ExportCounts, ExportFilter
from workers.export.rows import (
    CSV_COLUMNS,
    ExportRow,
    csv_row,
    export_row,
    imagefolder_line,
    manifest_line,
)
from workers.export.writing import METADATA_FILE, Destination, ExportError, ExportFormat

__all__ = [
    "CSV_COLUMNS",
    "METADATA_FILE",
    "Destination",
    "ExportCounts",
    "ExportError",
    "ExportFilter",
    "ExportFormat",
    "ExportRow",
    "LabelExporter",
    "csv_row",
    "export_row",
    "imagefolder_line",
    "manifest_line",
]
