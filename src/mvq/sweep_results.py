"""Tables of a sweep: one row per finished cell, and mean ± std over seeds per group.

Pure functions from rows (``{column: value}`` dicts, axes first) to CSV and markdown text;
``mvq.sweep`` builds the rows from the cells' ``eval/eval.json`` and stage markers.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from typing import Any

# metrics of ``mvq eval``'s eval.json, in the order the tables show them; others follow sorted
METRIC_ORDER = (
    "mse",
    "psnr",
    "ssim",
    "lpips",
    "fid",
    "fd_fmnist",
    "fd_fmnist_floor",
    "usage_primary",
    "usage_secondary",
    "perplexity_primary",
    "perplexity_secondary",
    "bits_per_image",
    "sample_fd_fmnist",
    "sample_f8",
    "sample_f1_8",
    "prior_nll_nats_per_token",
    "prior_bits_per_image",
)
TRAIN_ORDER = (
    "train_steps",
    "train_images_per_s",
    "train_val_loss",
    "prior_train_steps",
    "prior_train_val_nll_nats_per_token",
)


def is_number(value: Any) -> bool:
    """True for ints and floats (not booleans)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def order_columns(axes: list[str], rows: list[dict[str, Any]]) -> list[str]:
    """``cell``, the axes, eval metrics, train summary, wall times, then ``unavailable``."""
    seen = {k for row in rows for k in row}
    known = [*METRIC_ORDER, *TRAIN_ORDER]
    rest = sorted(seen - set(known) - set(axes) - {"cell", "unavailable"})
    metrics = [k for k in METRIC_ORDER if k in seen]
    metrics += [k for k in rest if k.startswith("random_mask_")]
    others = [k for k in rest if not k.startswith("random_mask_") and not k.endswith("_wall_s")]
    stage_order = ["train_wall_s", "encode_wall_s", "prior_wall_s", "eval_wall_s", "total_wall_s"]
    walls = sorted(
        (k for k in rest if k.endswith("_wall_s")),
        key=lambda k: stage_order.index(k) if k in stage_order else len(stage_order),
    )
    train = [k for k in TRAIN_ORDER if k in seen]
    tail = ["unavailable"] if "unavailable" in seen else []
    return ["cell", *axes, *metrics, *others, *train, *walls, *tail]


def format_value(value: Any) -> str:
    """Numbers with 4 significant digits (integers whole), everything else as text."""
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


def to_csv(columns: list[str], rows: list[dict[str, Any]]) -> str:
    """CSV text with full precision."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in columns})
    return buffer.getvalue()


def to_markdown(columns: list[str], rows: list[dict[str, Any]], title: str = "") -> str:
    """A markdown table (``|`` in values escaped), with an optional title line."""
    head = f"{title}\n\n" if title else ""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = (format_value(row.get(k)).replace("|", "\\|") for k in columns)
        lines.append("| " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value) of the finite values."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return math.nan, math.nan
    return statistics.fmean(finite), statistics.stdev(finite) if len(finite) > 1 else 0.0


def summarize(
    axes: list[str], rows: list[dict[str, Any]], over: str = "seed"
) -> tuple[list[str], list[dict[str, Any]], list[dict[str, str]]]:
    """Group rows by the axes other than ``over``; mean and std of every numeric column.

    Returns the group axes, one CSV row per group (``<col>_mean``, ``<col>_std``, ``n``) and
    one markdown row per group (``mean ± std``).
    """
    keys = [a for a in axes if a != over]
    numeric = [
        c
        for c in order_columns(axes, rows)
        if c not in ("cell", *axes) and any(is_number(r.get(c)) for r in rows)
    ]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row.get(k) for k in keys), []).append(row)
    csv_rows, md_rows = [], []
    for label, members in groups.items():
        flat: dict[str, Any] = dict(zip(keys, label, strict=True)) | {"n": len(members)}
        pretty: dict[str, str] = {k: str(v) for k, v in flat.items()}
        for col in numeric:
            values = [float(r[col]) for r in members if is_number(r.get(col))]
            if not values:
                continue
            mean, std = mean_std(values)
            flat |= {f"{col}_mean": mean, f"{col}_std": std}
            pretty[col] = format_value(mean) + (
                f" ± {format_value(std)}" if len(values) > 1 else ""
            )
        csv_rows.append(flat)
        md_rows.append(pretty)
    return keys, csv_rows, md_rows


def summary_tables(axes: list[str], rows: list[dict[str, Any]], title: str = "") -> tuple[str, str]:
    """``summary.csv`` and ``summary.md`` text: mean ± std over seeds per group."""
    keys, csv_rows, md_rows = summarize(axes, rows)
    numeric = [
        c
        for c in order_columns(axes, rows)
        if c not in ("cell", *axes) and any(c in r for r in md_rows)
    ]
    csv_columns = [*keys, "n", *(f"{c}_{s}" for c in numeric for s in ("mean", "std"))]
    md = to_markdown([*keys, "n", *numeric], md_rows, title)
    return to_csv(csv_columns, csv_rows), md
