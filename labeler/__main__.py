"""``python -m labeler``: the CLI (how ``labeler up`` starts its components)."""

import os
import sys
import tempfile

# prometheus_client picks multiprocess mode when first imported, and the CLI imports it: give a
# worker its metrics directory before, so it need not re-execute itself to set it (~0.7 s of
# its start; the `labeler` script still does, see multiprocess_dir_or_reexec).
if sys.argv[1:2] == ["worker"] and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="labeler-metrics-")

from labeler.cli import main  # after the metrics directory is set

main()
