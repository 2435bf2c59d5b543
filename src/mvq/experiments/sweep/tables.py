"""Tables of a sweep: one row per finished cell (``collect`` reads the cells' ``eval.json``
and markers), and mean ± std over seeds per group; pure functions from rows (``{column:
value}`` dicts, axes first) to CSV and markdown text."""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from pathlib import Path
from typing import Any

from mvq.experiments.sweep.spec import EVAL_STAGES, Cell, SweepConfig
from mvq.experiments.sweep.stages import (
    cell_stages,
    file_lock,
    pending,
    read_marker,
    skipped_backfill,
    write_atomic,
)

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


# --- collecting -------------------------------------------------------------------------------


def _eval_values(path: Path) -> dict[str, Any]:
    """Numbers of an ``eval.json`` and the names of its unavailable metrics."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        return {"unavailable": f"eval.json unreadable ({type(err).__name__})"}
    if not isinstance(data, dict):
        return {"unavailable": "eval.json is not an object"}
    from mvq.metrics.fd_fmnist import classifier_label

    row: dict[str, Any] = {k: v for k, v in data.items() if is_number(v)}
    meta = data.get("meta") if isinstance(data.get("meta"), dict) else {}
    if other := classifier_label(meta.get("fd_fmnist_classifier")):
        row["fd_classifier"] = other  # not mvq's shipped classifier: named in the tables
    unavailable = data.get("unavailable")
    if isinstance(unavailable, dict) and unavailable:
        row["unavailable"] = ";".join(sorted(unavailable))
    return row


def cell_row(sweep: SweepConfig, cell: Cell) -> dict[str, Any] | None:
    """The table row of a finished cell (None while any stage is unfinished)."""
    cell_dir = sweep.out / "cells" / cell.name
    stages = cell_stages(sweep, cell, cell_dir)
    if pending(cell_dir, stages):
        return None
    skipped = skipped_backfill(cell_dir, stages)
    stages = [s for s in stages if s.name not in skipped]
    row: dict[str, Any] = {"cell": cell.index, **cell.axes}
    sampled: list[dict[str, Any]] = []  # one per sampling seed
    for stage in stages:  # reconstruction metrics, then the sample form's
        if stage.name in EVAL_STAGES or stage.backfill:
            values = _eval_values(stage.out / "eval.json")
            gone = [row.get("unavailable"), values.pop("unavailable", None)]
            if other := values.pop("fd_classifier", None):
                row["fd_classifier"] = other
            if stage.name == "eval":
                row |= values
            else:
                sampled.append(values)
                row |= {
                    f"{k}_sampling_seed{stage.spec.get('seed', 0)}": v
                    for k, v in values.items()
                    if k.startswith("sample_")
                }
            if any(gone):
                row["unavailable"] = ";".join(sorted({n for g in gone if g for n in g.split(";")}))
    if sampled:  # the sample metrics of the cell: their mean over the sampling seeds
        row |= {
            k: sum(v[k] for v in sampled) / len(sampled)
            for k in sampled[0]
            if is_number(sampled[0][k]) and all(k in v for v in sampled)
        }
        row["sampling_seeds"] = len(sampled)
    for stage in stages:
        marker = read_marker(cell_dir, stage.name) or {}
        summary = marker.get("summary") or {}
        if stage.name == "train":
            row |= {
                f"train_{k}": summary[k]
                for k in ("steps", "images_per_s", "val_loss")
                if is_number(summary.get(k))
            }
        if stage.name == "prior":
            row |= {
                f"prior_train_{k}": v
                for k, v in summary.items()
                if k in ("steps", "val_nll_nats_per_token") and is_number(v)
            }
        row[f"{stage.name}_wall_s"] = marker.get("wall_s")
    row["total_wall_s"] = round(sum(row[f"{s.name}_wall_s"] or 0.0 for s in stages), 3)
    return row


def collect(sweep: SweepConfig, cells: list[Cell]) -> list[dict[str, Any]]:
    """Write ``results.csv/.md`` and ``summary.csv/.md`` in ``sweep.out`` from finished cells."""
    with file_lock(sweep.out / ".collect.lock", wait=True):
        rows = [row for cell in cells if (row := cell_row(sweep, cell)) is not None]
        axes = sweep.axis_names
        columns = order_columns(axes, rows)
        title = f"Sweep {sweep.name}: {len(rows)} of {len(cells)} cells finished."
        if others := sorted({str(r["fd_classifier"]) for r in rows if r.get("fd_classifier")}):
            title += f" fd_fmnist of classifier {', '.join(others)}, not mvq's shipped one."
        write_atomic(sweep.out / "results.csv", to_csv(columns, rows))
        write_atomic(sweep.out / "results.md", to_markdown(columns, rows, title))
        summary_csv, summary_md = summary_tables(axes, rows, f"{title} Mean ± std over seeds.")
        write_atomic(sweep.out / "summary.csv", summary_csv)
        write_atomic(sweep.out / "summary.md", summary_md)
    return rows
