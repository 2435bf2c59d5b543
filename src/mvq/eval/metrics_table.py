"""What ``mvq eval`` is asked and what it writes: the one table of metrics (``METRICS``: name,
group, forms), ``--metrics`` parsed against it, the unavailable ones with their reasons, and
``eval.json`` / ``eval.csv`` / the printed table."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from mvq.core.errors import MVQError
from mvq.core.pretrained import atomic_write_file
from mvq.core.registry import closest_hint

R, S, I = "reconstruction", "samples", "images"  # the three forms of mvq eval


@dataclass(frozen=True)
class Metric:
    """One name of ``eval.json``: the ``--metrics`` group that asks for it, the forms that
    compute it, and whether it is the random-mask decoding's copy of a reconstruction metric
    (asked by its group together with ``random_mask``)."""

    name: str
    group: str
    forms: tuple[str, ...]
    random_mask: bool = False


PIXEL = ("mse", "psnr", "ssim", "lpips", "fid", "fd_fmnist")  # decoded-image metrics
# Every metric, in the order eval.json and the tables show them.
METRICS = (
    *(Metric(name, name, (R,)) for name in PIXEL),
    Metric("fd_fmnist_floor", "fd_fmnist", (R, S, I)),
    Metric("usage_primary", "usage", (R,)),
    Metric("usage_secondary", "usage", (R,)),
    Metric("perplexity_primary", "perplexity", (R,)),
    Metric("perplexity_secondary", "perplexity", (R,)),
    Metric("bits_per_image", "bits_per_image", (R, S)),
    *(Metric(f"random_mask_{name}", name, (R,), random_mask=True) for name in PIXEL),
    Metric("sample_fid", "fid", (S, I)),
    Metric("sample_fd_fmnist", "fd_fmnist", (S, I)),
    Metric("sample_f8", "f_scores", (S, I)),
    Metric("sample_f1_8", "f_scores", (S, I)),
    Metric("sample_f8_inception", "f_scores", (S, I)),
    Metric("sample_f1_8_inception", "f_scores", (S, I)),
    Metric("prior_nll_nats_per_token", "prior_nll", (S,)),
    Metric("prior_bits_per_image", "prior_nll", (S,)),
)
METRIC = {m.name: m for m in METRICS}
ORDER = tuple(METRIC)
# The groups ``--metrics`` takes per form, in the order its messages list them.
FORM_GROUPS = {
    R: ("mse", "psnr", "ssim", "lpips", "fid", "fd_fmnist", "usage", "perplexity",
        "bits_per_image", "random_mask"),
    S: ("fid", "fd_fmnist", "f_scores", "prior_nll", "bits_per_image"),
    I: ("fid", "fd_fmnist", "f_scores"),
}  # fmt: skip
ALIASES = {"prd": "f_scores"}  # other names --metrics accepts for a group


class EvalError(MVQError, ValueError):
    """Bad input to ``mvq eval``; one line, exit status 2."""


@dataclass
class EvalRequest:
    """What ``mvq eval`` was asked (the command line, typed)."""

    out: Path
    tokenizer: Path | None = None
    prior: Path | None = None
    images: Path | None = None
    data: str = "fashion_mnist"
    split: str = "test"
    root: str | None = None
    n: int | None = None
    metrics: str | None = None
    device: str = "auto"
    weights_dir: str | None = None
    batch_size: int = 250
    seed: int = 0
    fd_classifier: str = "shipped"  # or "local", or a classifier record's path

    @property
    def form(self) -> str:
        """``reconstruction``, ``samples`` or ``images``."""
        if self.images is not None:
            return "images"
        return "samples" if self.prior is not None else "reconstruction"


@dataclass
class Networks:
    """The metric networks that could be loaded, and why the others could not."""

    lpips: nn.Module | None = None
    inception: nn.Module | None = None
    classifier: object | None = None  # mvq.metrics.CachedClassifier
    missing: dict[str, str] = field(default_factory=dict)


def parse_metrics(text: str | None, form: str) -> tuple[str, ...] | None:
    """Groups asked by ``--metrics`` (None: all); unknown or inapplicable names are errors.
    A metric's name asks for its group (a random-mask metric also for ``random_mask``)."""
    if text is None:
        return None
    allowed, every = FORM_GROUPS[form], {g for groups in FORM_GROUPS.values() for g in groups}
    groups = []
    for name in (t.strip() for t in text.split(",") if t.strip()):
        metric = METRIC.get(name)
        group = metric.group if metric else ALIASES.get(name, name)
        if group not in every:
            known = every | set(ALIASES) | {m.name for m in METRICS if not m.random_mask}
            raise EvalError(
                f"unknown metric '{name}'{closest_hint(name, sorted(known))}; "
                f"metrics: {', '.join(allowed)}"
            )
        if group not in allowed:
            raise EvalError(
                f"metric '{name}' does not apply to the {form} form of mvq eval; "
                f"it computes {', '.join(allowed)}"
            )
        groups += [group, "random_mask"] if metric and metric.random_mask else [group]
    if not groups:
        raise EvalError("--metrics is empty; name at least one metric")
    return tuple(dict.fromkeys(groups))


META_COLUMNS = ("time", "form", "tokenizer", "prior", "images", "data", "split", "n")


def group_of(name: str) -> str:
    """The ``--metrics`` group an eval.json name belongs to (a name mvq does not know: itself)."""
    metric = METRIC.get(name)
    return metric.group if metric else name


def select(metrics: dict[str, float], groups: tuple[str, ...]) -> dict[str, float]:
    """The metrics of the asked groups (``random_mask_X`` needs both random_mask and X)."""
    wanted = set(groups)
    if "random_mask" in wanted and not wanted & set(PIXEL):
        wanted |= {"mse", "psnr", "ssim"}  # `--metrics random_mask` alone: its cheap metrics
    return {
        name: value
        for name, value in metrics.items()
        if group_of(name) in wanted
        and (name not in METRIC or not METRIC[name].random_mask or "random_mask" in wanted)
    }


def unavailable(
    form: str, groups: tuple[str, ...], nets: Networks, static: dict[str, str], has_mask: bool
) -> dict[str, str]:
    """``{eval.json name: reason}`` for every asked metric that cannot run."""
    out = dict(static)
    prefix = "" if form == "reconstruction" else "sample_"
    for group, reason in nets.missing.items():
        if group in groups:
            out[f"{prefix}{group}"] = reason
            if form == "reconstruction" and has_mask and "random_mask" in groups:
                out[f"random_mask_{group}"] = reason
    if form != "reconstruction" and "f_scores" in groups:
        if "fd_fmnist" in nets.missing:
            out["sample_f8"] = out["sample_f1_8"] = nets.missing["fd_fmnist"]
        if "fid" in groups and "fid" in nets.missing:
            reason = nets.missing["fid"]
            out["sample_f8_inception"] = out["sample_f1_8_inception"] = reason
    return out


def check_asked(asked: tuple[str, ...] | None, missing: dict[str, str], nets: Networks) -> None:
    """A metric asked by name that cannot run is an error (the first one's reason)."""
    if asked is None:
        return
    for group in asked:
        if group == "f_scores" and nets.classifier is None and nets.inception is None:
            raise EvalError(f"f_scores cannot run: {nets.missing.get('fd_fmnist', 'no features')}")
        reason = nets.missing.get(group) or next(
            (r for name, r in missing.items() if group_of(name) == group), None
        )
        if reason is not None and group != "f_scores":
            raise EvalError(f"{group} cannot run: {reason}")


def write_outputs(out: Path, result: dict) -> None:
    """``eval.json`` (atomically) and one more row of ``eval.csv`` (columns grow as needed)."""
    atomic_write_file(out / "eval.json", json.dumps(result, indent=2) + "\n")
    meta = result["meta"]
    row = {k: meta.get(k) for k in META_COLUMNS} | {
        k: v for k, v in result.items() if k not in ("meta", "unavailable")
    }
    path = out / "eval.csv"
    rows, columns = [], list(META_COLUMNS) + [k for k in ORDER if k in row]
    if path.is_file():
        reader = csv.DictReader(io.StringIO(path.read_text()))
        rows, columns = list(reader), list(reader.fieldnames or [])
        columns += [k for k in row if k not in columns]
    columns += [k for k in row if k not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows([*rows, {k: "" if v is None else v for k, v in row.items()}])
    atomic_write_file(path, buffer.getvalue())


def format_table(result: dict) -> str:
    """A Markdown table: every metric, then every unavailable one with its reason."""
    meta = result["meta"]
    source = meta.get("tokenizer") or meta.get("images")
    lines = [
        f"mvq eval ({meta['form']}): {source}"
        + (f" + prior {meta['prior']}" if meta.get("prior") else "")
        + f" vs {meta['data']} {meta['split']} ({meta['reference_images']} images), "
        f"n={meta['n']}, {meta['device']}, {meta['seconds']:.1f} s",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    if meta.get("fd_fmnist_classifier"):
        from mvq.metrics.fd_fmnist import describe_classifier

        lines.insert(1, describe_classifier(meta["fd_fmnist_classifier"]))
    for name, value in result.items():
        if name not in ("meta", "unavailable"):
            lines.append(f"| {name} | {value:.6g} |")
    for name, reason in result["unavailable"].items():
        lines.append(f"| {name} | unavailable: {reason} |")
    return "\n".join(lines)


def ordered(metrics: dict[str, float]) -> dict[str, float]:
    """Metrics in the documented order (others after)."""
    known = {k: metrics[k] for k in ORDER if k in metrics}
    return known | {k: v for k, v in metrics.items() if k not in known}
