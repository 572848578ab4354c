"""What leaves the review store for people outside it: a session as CSV (one row per item, safe to open in a
spreadsheet) and the agreement summary between model and reviewer (agreement rate, Cohen's kappa, confusion).

Separate from the store because it is reporting, not recording: the store opens the transaction and checks the
session exists, these functions read and shape. pandas is imported only when a summary is made, so the writer
processes and the page that only records verdicts never load it.
"""
from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence

from sqlalchemy import Row, func, select
from sqlalchemy.orm import Session

from covid_models.metrics import cohen_kappa
from covid_models.reviews.records import VERDICTS, ReviewSummary
from covid_models.reviews.schema import ItemRow, SessionRow, VerdictRow

CSV_COLUMNS = (
    "session", "reviewer", "model", "position", "file", "image_sha256", "predicted_label",
    "covid_probability", "threshold", "verdict", "reviewer_label", "note", "decided_at", "kind",
)
HELD_BACK_LABEL = "held back (out of distribution)"  # the CSV's model reading of a held-back image
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")

# (model label, reviewer label, number of items) for every pair of labels in a session
LabelPairs = Sequence[Row[tuple[str, str, int]]]


def session_csv(session: Session, row: SessionRow) -> str:
    """The session `row` as CSV, one row per item (verdict columns empty while unreviewed); one column query."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    info = row.as_info()
    rows = session.execute(
        select(ItemRow.position, ItemRow.display_name, ItemRow.image_hash, ItemRow.predicted_label,
               ItemRow.covid_probability, ItemRow.operating_threshold, VerdictRow.verdict,
               VerdictRow.reviewer_label, VerdictRow.note, VerdictRow.decided_at, ItemRow.held_back,
               ItemRow.kind)
        .outerjoin(VerdictRow, VerdictRow.item_id == ItemRow.id)
        .where(ItemRow.session_id == info.id)
        .order_by(ItemRow.position)
    )
    for (position, name, digest, predicted, probability, threshold, verdict, label, note, decided, held,
         kind) in rows:
        writer.writerow([
            info.id, _csv_cell(info.reviewer), _csv_cell(info.model_name), position, _csv_cell(name), digest,
            HELD_BACK_LABEL if held else _csv_cell(predicted), "" if held else repr(probability),
            repr(threshold), verdict or "",
            _csv_cell(label or ""), _csv_cell(note or ""), decided.isoformat() if decided else "", kind,
        ])
    return buffer.getvalue()


def _csv_cell(value: str) -> str:
    """Neutralise text a spreadsheet would run as a formula (file names and notes are user input)."""
    return "'" + value if value.startswith(_FORMULA_PREFIXES) else value


def summary_counts(session: Session, session_id: int) -> tuple[int, dict[str, int], LabelPairs]:
    """The SQL counts a summary is made of: items, verdicts by kind, and (model, reviewer) label pairs."""
    n_items = session.scalar(select(func.count()).where(ItemRow.session_id == session_id)) or 0
    joined = select(VerdictRow).join(ItemRow, ItemRow.id == VerdictRow.item_id).where(
        ItemRow.session_id == session_id).subquery()
    by_verdict = dict(session.execute(
        select(joined.c.verdict, func.count()).group_by(joined.c.verdict)).all())
    pairs = session.execute(
        select(ItemRow.predicted_label, VerdictRow.reviewer_label, func.count())
        .join(VerdictRow, VerdictRow.item_id == ItemRow.id)
        .where(ItemRow.session_id == session_id, VerdictRow.reviewer_label.is_not(None))
        .group_by(ItemRow.predicted_label, VerdictRow.reviewer_label)
    ).all()
    return n_items, by_verdict, pairs


def summarise(session_id: int, n_items: int, by_verdict: dict[str, int], pairs: LabelPairs) -> ReviewSummary:
    """Agreement, Cohen's kappa and the confusion table between model and reviewer, from `summary_counts`."""
    import pandas as pd  # here: writer processes and the page that only records verdicts never need it

    counts = {verdict: int(by_verdict.get(verdict, 0)) for verdict in VERDICTS}
    decided = counts["agree"] + counts["disagree"]
    classes = sorted({model for model, _, _ in pairs} | {reviewer for _, reviewer, _ in pairs})
    n_labelled = sum(count for _, _, count in pairs)

    kappa: float | None = None
    explanation: str | None = None
    if not pairs:
        explanation = "no reviewed image has a reviewer label yet (agree, or disagree with a label)"
    elif len(classes) < 2:
        explanation = (
            f"every labelled image is {classes[0]!r} for both model and reviewer: with a single class, "
            "chance agreement is 100% and kappa is undefined"
        )
    else:
        model_labels = [model for model, _, count in pairs for _ in range(count)]
        reviewer_labels = [reviewer for _, reviewer, count in pairs for _ in range(count)]
        value = cohen_kappa(model_labels, reviewer_labels, classes)
        if math.isfinite(value):
            kappa = value
        else:
            explanation = "kappa is undefined for these labels (chance agreement is 100%)"

    confusion = pd.DataFrame(0, index=pd.Index(classes, name="model"), columns=pd.Index(classes, name="reviewer"))
    for model, reviewer, count in pairs:
        confusion.loc[model, reviewer] = count
    return ReviewSummary(
        session_id=session_id,
        n_items=n_items,
        n_reviewed=sum(counts.values()),
        verdict_counts=counts,
        agreement_rate=counts["agree"] / decided if decided else None,
        kappa=kappa,
        kappa_explanation=explanation,
        n_labelled=n_labelled,
        confusion=confusion,
    )
