"""Evaluation reports: ``evaluation.json``, ``confusion_matrix.png`` and a self-contained
``report.html`` (tables, the matrix, training curves, deltas against production, the gate)."""

from __future__ import annotations

import base64
import html
import io
import json
from typing import TYPE_CHECKING, Any

from storage import ObjectStore
from storage.keys import report_key
from storage.registry import ModelMetadata
from workers.training.evaluation import Evaluation, GateDecision

if TYPE_CHECKING:
    from workers.training.label_issues import LabelIssueReport


def confusion_matrix_png(evaluation: Evaluation) -> bytes:
    import matplotlib

    matplotlib.use("Agg")  # no display on a worker
    from matplotlib import pyplot as plt

    names = evaluation.class_names
    size = max(4.0, 0.5 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    matrix = evaluation.confusion_matrix
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    peak = max((max(row) for row in matrix), default=0)
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            color = "white" if count > peak / 2 else "black"
            ax.text(j, i, str(count), ha="center", va="center", color=color, fontsize=8)
    ax.set_title(f"confusion matrix (accuracy {evaluation.accuracy:.4f})")
    return _png(fig)


def training_curves_png(history: dict[str, list[float]]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, (loss, acc) = plt.subplots(1, 2, figsize=(10, 3.5))
    for name, values in history.items():
        target = acc if "accuracy" in name else loss
        target.plot(range(1, len(values) + 1), values, label=name)
    for ax, title in ((loss, "loss"), (acc, "accuracy")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.legend()
    return _png(fig)


def evaluation_json(
    evaluation: Evaluation,
    production: Evaluation | None,
    decision: GateDecision,
    extra: dict[str, Any],
    runtimes: list[dict[str, Any]] | None = None,
) -> bytes:
    document = {
        **extra,
        "runtimes": runtimes or [],
        "evaluation": evaluation.to_dict(),
        "production": production.summary() if production else None,
        "deltas": _deltas(evaluation, production),
        "gate": {"passed": decision.passed, "checks": decision.checks},
    }
    return json.dumps(document, indent=2).encode()


def report_html(
    title: str,
    evaluation: Evaluation,
    production: Evaluation | None,
    decision: GateDecision,
    matrix_png: bytes,
    curves_png: bytes | None,
    runtimes: list[dict[str, Any]] | None = None,
    facts: dict[str, int | str | None] | None = None,
    audited: dict[str, Any] | None = None,
    label_issues: tuple[int, list[tuple[dict[str, Any], bytes | None]]] | None = None,
) -> bytes:
    """The page; ``label_issues`` is (how many were found, the worst with a PNG thumbnail)."""
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td>{_cells(f, production, name)}</tr>"
        for name, f in evaluation.per_class.items()
    )
    deltas = _deltas(evaluation, production)
    summary = "".join(
        f"<tr><td>{name}</td><td>{value:.4f}</td><td>{_signed(deltas.get(name))}</td></tr>"
        for name, value in evaluation.summary().items()
    )
    checks = "".join(
        f"<li class={'pass' if c['passed'] else 'fail'}>{'✔' if c['passed'] else '✘'} "
        f"{html.escape(c['name'])}: {html.escape(c['detail'])}</li>"
        for c in decision.checks
    )
    verdict = "promoted" if decision.passed else "refused — production unchanged"
    curves = f"<h2>Training</h2>{_img(curves_png)}" if curves_png else ""
    data = "".join(
        f"<tr><td>{html.escape(name.replace('_', ' '))}</td><td>{html.escape(str(value))}</td></tr>"
        for name, value in (facts or {}).items()
        if value is not None
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.2em .6em;text-align:right}}
.pass{{color:#070}}
.fail{{color:#b00}}</style></head><body>
<h1>{html.escape(title)}</h1>
<h2>Gate: {verdict}</h2><ul>{checks}</ul>
<h2>Training data</h2><table>{data}</table>
<h2>Summary (test split)</h2><table><tr><th>metric</th><th>candidate</th>
<th>Δ vs production</th></tr>{summary}</table>
<h2>Per class</h2><table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th>
<th>support</th><th>Δ recall</th></tr>{rows}</table>
{_runtimes_html(runtimes or [])}
{_audited_html(audited)}
{_label_issues_html(label_issues)}
<h2>Confusion matrix</h2>{_img(matrix_png)}{curves}</body></html>"""
    return page.encode()


def _audited_html(audited: dict[str, Any] | None) -> str:
    """Production's automatic labels as blind audits measured them (the test split cannot)."""
    if not audited or not audited["auto"]["audited"]:
        return ""

    def row(name: str, e: dict[str, Any]) -> str:
        shown = "—" if e["precision"] is None else f"{e['precision']:.3f}"
        bounds = "" if e["precision"] is None else f"[{e['low']:.3f}, {e['high']:.3f}]"
        return (
            f"<tr><td>{html.escape(name)}</td><td>{e['labels']}</td><td>{e['audited']}</td>"
            f"<td>{shown}</td><td>{bounds}</td></tr>"
        )

    auto = audited["auto"]
    rows = "".join(row(name, e) for name, e in auto["by_class"].items())
    return (
        f"<h2>Automatic labels of production v{audited['model_version']} (blind audits)</h2>"
        "<table><tr><th>class</th><th>labels</th><th>audited</th><th>precision</th>"
        f"<th>95% interval</th></tr>{row('all classes (weighted)', auto)}{rows}</table>"
    )


def _runtimes_html(rows: list[dict[str, Any]]) -> str:
    """One row per runtime and serving format; INT8's verdict (served or refused, and why)."""
    if not rows:
        return ""

    def cell(value: Any, spec: str) -> str:
        return "—" if value is None else format(value, spec)

    body = "".join(
        f"<tr><td>{html.escape(r['runtime'])}</td><td>{html.escape(r['serving_format'])}</td>"
        f"<td>{cell(r['accuracy'], '.4f')}</td><td>{cell(r['macro_f1'], '.4f')}</td>"
        f"<td>{cell(r['agreement'], '.2%')}</td><td>{cell(r['images_per_second'], '.0f')}</td>"
        f"<td>{_verdict(r)}</td></tr>"
        for r in rows
    )
    return (
        "<h2>Runtimes (held-out images)</h2><table><tr><th>runtime</th><th>format</th>"
        "<th>accuracy</th><th>macro F1</th><th>top-1 agreement with FP32</th><th>images/s</th>"
        f"<th>served</th></tr>{body}</table>"
    )


def _label_issues_html(
    found_and_worst: tuple[int, list[tuple[dict[str, Any], bytes | None]]] | None,
) -> str:
    """The training images the out-of-sample predictions doubt most, with thumbnails."""
    if found_and_worst is None:
        return ""
    found, worst = found_and_worst
    body = "".join(
        f"<tr><td>{_img(png, 'height=64') if png else ''}</td>"
        f"<td style=text-align:left>{html.escape(issue['key'])}</td>"
        f"<td>{html.escape(issue['given'])}</td><td>{html.escape(issue['suggested'])}</td>"
        f"<td>{issue['quality']:.3f}</td></tr>"
        for issue, png in worst
    )
    return (
        f"<h2>Likely label errors in training/ ({found} found, queued for review)</h2>"
        "<table><tr><th>image</th><th>key</th><th>folder</th><th>suggested</th>"
        f"<th>label quality</th></tr>{body}</table>"
    )


def _verdict(row: dict[str, Any]) -> str:
    if "approved" not in row:
        return ""
    if row["approved"]:
        return f"<span class=pass>approved: {html.escape(row['reason'])}</span>"
    return f"<span class=fail>refused, FP32 serves: {html.escape(row['reason'])}</span>"


def _deltas(evaluation: Evaluation, production: Evaluation | None) -> dict[str, float]:
    if production is None:
        return {}
    mine, theirs = evaluation.summary(), production.summary()
    return {k: mine[k] - theirs[k] for k in mine}


def _cells(figures: dict[str, float], production: Evaluation | None, name: str) -> str:
    before = production.per_class.get(name, {}).get("recall") if production else None
    delta = figures["recall"] - before if before is not None else None
    return (
        f"<td>{figures['precision']:.3f}</td><td>{figures['recall']:.3f}</td>"
        f"<td>{figures['f1-score']:.3f}</td><td>{int(figures['support'])}</td>"
        f"<td>{_signed(delta)}</td>"
    )


def _signed(value: float | None) -> str:
    return "—" if value is None else f"{value:+.4f}"


def _img(png: bytes, attributes: str = "") -> str:
    data = base64.b64encode(png).decode()
    return f'<img alt="" {attributes} src="data:image/png;base64,{data}">'


def _png(fig: Any) -> bytes:
    from matplotlib import pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def write_version_reports(
    reports: ObjectStore,
    metadata: ModelMetadata,
    judged: tuple[Evaluation, Evaluation | None, GateDecision],
    history: dict[str, list[float]],
    runtimes: list[dict[str, Any]],
    facts: dict[str, Any],
    *,
    audited: dict[str, Any] | None,
    issues: LabelIssueReport | None,
    issues_shown: int,
) -> None:
    """A version's evaluation.json, confusion matrix and HTML report, into ``reports``.

    Args:
        judged: The candidate's evaluation, production's (None for a first model), the gate's.
        facts: Extra evaluation.json fields (training images, devices, audited quality...).
        issues: Label issues found in training/; the worst ``issues_shown`` get thumbnails.
    """
    candidate, production, decision = judged
    name, version = metadata.name, metadata.version
    matrix = confusion_matrix_png(candidate)
    curves = training_curves_png(history) if history else None
    extra: dict[str, Any] = {
        "model": name,
        "version": version,
        "parent_version": metadata.parent_version,
        "training_data_fingerprint": metadata.training_data_fingerprint,
        **facts,
    }
    shown = None
    if issues is not None:
        extra["label_issues"] = [issue.as_dict() for issue in issues.issues]
        extra["label_issue_search"] = issues.summary()
        worst = issues.issues[:issues_shown]
        pairs = zip(worst, issues.thumbnails, strict=False)
        shown = (issues.found, [(issue.as_dict(), png) for issue, png in pairs])
    page_facts = {k: v for k, v in facts.items() if k != "production_label_quality"}
    page = report_html(
        f"{name} v{version}",
        candidate,
        production,
        decision,
        matrix,
        curves,
        runtimes,
        page_facts,
        audited,
        shown,
    )
    files = {
        "evaluation.json": (
            evaluation_json(candidate, production, decision, extra, runtimes),
            "application/json",
        ),
        "confusion_matrix.png": (matrix, "image/png"),
        "report.html": (page, "text/html"),
    }
    for file, (data, content_type) in files.items():
        reports.put(report_key(name, version, file), data, content_type=content_type)
