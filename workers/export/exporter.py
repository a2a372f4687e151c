"""``labeler export``'s engine: stream ``labels/`` through a filter into one output format."""

from __future__ import annotations

from storage import ObjectStore
from workers.export.reading import ExportCounts, ExportFilter, Progress, export_rows
from workers.export.writing import Destination, ExportFormat, write_imagefolder, write_manifest


class LabelExporter:
    """Exports the records of one deployment's ``labels/``.

    Args:
        labels: The labels store (records are read from it, never changed).
        incoming: The incoming store: its URI names each object, and an image folder's files
            come from it.
    """

    def __init__(self, labels: ObjectStore, incoming: ObjectStore) -> None:
        self.labels = labels
        self.incoming = incoming

    def export(
        self,
        fmt: ExportFormat,
        out: Destination,
        keep: ExportFilter | None = None,
        progress: Progress | None = None,
    ) -> ExportCounts:
        """Write every kept record to ``out`` in ``fmt``; returns what was read and written.

        Nothing is visible at ``out`` until the whole export is written (see ``writing``).
        """
        counts = ExportCounts()
        rows = export_rows(self.labels, self.incoming.uri, keep or ExportFilter(), counts, progress)
        if fmt is ExportFormat.IMAGEFOLDER:
            write_imagefolder(rows, self.incoming, out, counts)
        else:
            write_manifest(rows, fmt, out)
        return counts
