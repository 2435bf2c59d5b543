"""One static HTML page of a run, or of a folder of runs side by side (``mvq report``).

The page is self-contained: every image is embedded as a base64 ``data:`` URI, the CSS is
inline, there is no JavaScript and no network reference, so it opens offline from anywhere.
For each run it shows the saved model's config and the training config, the final training
and validation metrics (``metrics.csv``), every ``mvq eval`` result found (``eval.json``),
the curves, and for a tokenizer the figures of ``mvq.report.viz`` (reconstructions, codebook usage;
for MVQ also transfer, composition, dimensions and diversity) and the PNG grids in the run
(``samples/``, ``grid.png``). A folder of runs (``mvq demo``'s ``runs/demo``, a sweep) gets
an overview first: its Markdown/CSV tables (``metrics.md``, ``results.md``/``results.csv``),
its top-level PNGs and a comparison table of the runs.

    mvq report RUN_DIR [--out FILE]      # default FILE: RUN_DIR/report.html
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mvq.core.pretrained import atomic_write_file
from mvq.report.viz import (
    VizOptions,
    available_kinds,
    load_source_model,
    make_figure,
    read_metrics,
    resolve_source,
    upscale,
)

# Figures the page shows for a tokenizer, with their captions
CAPTIONS = {
    "curves": "Training (lines) and validation (markers) curves from metrics.csv.",
    "reconstructions": "Validation images (odd rows) and their reconstructions from the tokens "
    "(even rows), as in the paper's Fig. 7.",
    "codebook": "How often each code is used over the first 2,000 validation images "
    "(and, for MVQ, how often each mask bit is on).",
    "transfer": "Fig. 6a/9: row 1 is an image and its secondary code under 7 masks (the first "
    "is its searched mask); each next row decodes the same masked configurations with another "
    "image's primary code.",
    "compose": "Fig. 6b, per image: centre D(e), the primary code alone; the four orthogonal "
    "neighbours add one masked configuration each, D(e + f(e'⊙m_i)); the corners add the two "
    "of their neighbours, D(e + f(e'⊙m_a) + f(e'⊙m_b)).",
    "dimensions": "Fig. 2: one row per secondary dimension (the 8 most visible, on the image of "
    "16 where they show most); the weight of that mask bit runs 0 (off), 0.25, ..., 1 (on), "
    "..., 2, the rest of the image's searched mask fixed.",
    "diversity": "Fig. 8: each 2x4 block is one code vector (e, e') under 8 random masks.",
}
REPORT_CODEBOOK_IMAGES = 2000
SKIP_DIRS = {"tb", "checkpoints", "model", "eval"}


@dataclass
class Run:
    """What the page says about one run directory.

    Attributes:
        path: the run directory; ``name`` its path relative to the report's root.
        model_class: class saved in ``model/config.json`` (None before training ended).
        model_config: the saved model's config; ``train_config`` the checkpoint's.
        final: {split: {metric: last value}} from ``metrics.csv``; ``steps`` the last step.
        evals: ``(path, eval.json object)`` for each ``mvq eval`` output found in the run.
    """

    path: Path
    name: str
    model_class: str | None = None
    model_config: dict[str, Any] = field(default_factory=dict)
    train_config: dict[str, Any] = field(default_factory=dict)
    final: dict[str, dict[str, float]] = field(default_factory=dict)
    steps: int | None = None
    evals: list[tuple[Path, dict[str, Any]]] = field(default_factory=list)


def is_run(path: Path) -> bool:
    """A training run (``metrics.csv``) or a saved model (``config.json`` / ``model/``)."""
    return any((path / p).is_file() for p in ("metrics.csv", "model/config.json", "config.json"))


def find_runs(root: Path, depth: int = 3) -> list[Path]:
    """``root`` if it is a run, else the runs below it (sorted, not inside other runs)."""
    if is_run(root):
        return [root]
    if depth == 0:
        return []
    runs: list[Path] = []
    for child in sorted(p for p in root.iterdir() if p.is_dir() and p.name not in SKIP_DIRS):
        runs += find_runs(child, depth - 1)
    return runs


def final_metrics(path: Path) -> tuple[dict[str, dict[str, float]], int | None]:
    """Last value of every metric per split, and the last step, from ``metrics.csv``."""
    if not path.is_file():
        return {}, None
    series = read_metrics(path)
    final: dict[str, dict[str, float]] = {}
    for (split, name), (_, values) in series.items():
        final.setdefault(split, {})[name] = values[-1]
    steps = max((s[-1] for s, _ in series.values()), default=None)
    return final, steps


def find_evals(path: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Every ``eval.json`` under ``path`` (``mvq eval`` output), unreadable ones skipped."""
    found = []
    for file in sorted(path.rglob("eval.json")):
        try:
            data = json.loads(file.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(data, dict):
            found.append((file, data))
    return found


def train_config(path: Path) -> dict[str, Any]:
    """The ``TrainConfig`` stored in the run's checkpoint ({} without a readable one)."""
    from mvq.core.pretrained import CheckpointError
    from mvq.training import checkpoint_path, load_checkpoint

    if not checkpoint_path(path).is_file():
        return {}
    try:
        return dict(load_checkpoint(checkpoint_path(path)).get("config") or {})
    except CheckpointError:
        return {}


def read_run(path: Path, root: Path) -> Run:
    """Collect the config, final metrics and eval results of one run directory."""
    source = resolve_source(path)
    run = Run(path, str(path.relative_to(root)) if path != root else path.name)
    if source.model_dir is not None:
        meta = json.loads((source.model_dir / "config.json").read_text())
        run.model_class, run.model_config = meta["class"], dict(meta["config"])
        tokenizer = source.model_dir / "tokenizer.json"  # a prior: the tokenizer of its tokens
        if tokenizer.is_file():
            ident = json.loads(tokenizer.read_text())
            sha = str(ident.get("sha256", ""))[:12]
            run.model_config["tokenizer"] = f"{ident.get('class')} (weights sha256 {sha}...)"
    run.train_config = train_config(path)
    run.final, run.steps = final_metrics(path / "metrics.csv")
    run.evals = find_evals(path)
    return run


# -- HTML pieces ------------------------------------------------------------------------------
def esc(value: object) -> str:
    """HTML-escaped text."""
    return html.escape(str(value))


def fmt(value: object) -> str:
    """Numbers with 4 significant digits (integers as they are), anything else as text."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return esc(json.dumps(value) if isinstance(value, list | dict) else value)
    if isinstance(value, int):
        return str(value)
    if math.isfinite(value) and value.is_integer() and abs(value) < 1e6:
        return str(int(value))
    return f"{value:.4g}"


def table(headers: list[str], rows: list[list[object]], numeric: bool = True) -> str:
    """An HTML table; cells are formatted with ``fmt`` when ``numeric``."""
    cell = fmt if numeric else esc
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def kv_table(values: dict[str, object]) -> str:
    """A two-column key/value table."""
    return table(["key", "value"], [[k, v] for k, v in values.items()])


def png_uri(data: bytes) -> str:
    """PNG bytes as a ``data:`` URI."""
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def figure_uri(figure: Any, image_size: int) -> str:
    """A viz grid (Tensor, upscaled) or a matplotlib Figure as a PNG ``data:`` URI."""
    from torch import Tensor
    from torchvision.utils import save_image

    buf = io.BytesIO()
    if isinstance(figure, Tensor):
        save_image(upscale(figure, image_size), buf, format="png")
    else:
        figure.savefig(buf, format="png", dpi=100)
    return png_uri(buf.getvalue())


def img(uri: str, caption: str, pixels: bool = True, width: int | None = None) -> str:
    """A figure with an embedded image and its caption; ``pixels``: an image grid, drawn with
    sharp pixels (a plot is smoothed instead); ``width``: display width in CSS pixels."""
    cls = " class='grid'" if pixels else ""
    cls += f" width='{width}'" if width else ""
    return (
        f'<figure><img{cls} src="{uri}" alt="{esc(caption)}">'
        f"<figcaption>{esc(caption)}</figcaption></figure>"
    )


def markdown_html(text: str) -> str:
    """The tables and paragraphs of a simple Markdown file (``metrics.md``, ``results.md``)."""
    out, rows, para = [], [], []

    def flush() -> None:
        if rows:
            out.append(table(rows[0], rows[1:], numeric=False))
            rows.clear()
        if para:
            out.append(f"<p>{esc(' '.join(para))}</p>")
            para.clear()

    for line in text.splitlines():
        line = line.strip()
        if line.startswith("|"):
            if para:
                flush()
            cells = [c.strip() for c in line.strip("|").split("|")]
            if not all(set(c) <= set("-: ") for c in cells):  # skip the |---| separator
                rows.append(cells)
        elif line:
            if rows:
                flush()
            para.append(line.lstrip("#").strip())
        else:
            flush()
    flush()
    return "".join(out)


def csv_html(path: Path, max_rows: int = 200) -> str:
    """A CSV file (e.g. a sweep's ``results.csv``) as a table."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return ""
    return table(rows[0], rows[1 : max_rows + 1], numeric=False)


def eval_html(path: Path, data: dict[str, Any], root: Path) -> str:
    """An ``mvq eval`` result: metrics, the metrics it could not compute and why, its meta."""
    metrics = {k: v for k, v in data.items() if k not in ("unavailable", "meta")}
    parts = [f"<h4>mvq eval: {esc(path.relative_to(root))}</h4>"]
    if metrics:
        parts.append(table(["metric", "value"], [[k, v] for k, v in metrics.items()]))
    unavailable = data.get("unavailable") or {}
    if isinstance(unavailable, dict) and unavailable:
        rows = [[k, v] for k, v in unavailable.items()]
        parts.append("<p>Not computed:</p>" + table(["metric", "reason"], rows, numeric=False))
    meta = data.get("meta")
    if isinstance(meta, dict) and meta:
        parts.append("<details><summary>meta</summary>" + kv_table(meta) + "</details>")
    return "".join(parts)


# -- sections ---------------------------------------------------------------------------------
REPORT_KINDS = (
    "curves",
    "reconstructions",
    "codebook",
    "transfer",
    "compose",
    "dimensions",
    "diversity",
)


def figures_html(run: Run) -> str:
    """The ``mvq.report.viz`` figures that apply to the run, drawn now and embedded."""
    from mvq.data import DataError

    source = resolve_source(run.path)
    model = load_source_model(source, "cpu")
    size = model.config.image_size if model is not None else 28
    parts = []
    for kind in (k for k in REPORT_KINDS if k in available_kinds(source, model)):
        n = REPORT_CODEBOOK_IMAGES if kind == "codebook" else None
        try:
            figure = make_figure(kind, source, model, VizOptions(n=n))
        except DataError as err:  # the data set is not on this machine: say so, go on
            parts.append(f"<p class='note'>{esc(kind)}: not drawn ({esc(err)})</p>")
            continue
        pixels = kind not in ("curves", "codebook")
        parts.append(img(figure_uri(figure, size), f"{kind}: {CAPTIONS[kind]}", pixels))
    return "".join(parts)


def run_images(run: Run, root: Path) -> list[tuple[str, Path]]:
    """PNG grids of a run: its latest training reconstructions, sample grids (``grid.png``)
    and, in a demo folder, the ``samples_<run>.png`` beside it."""
    found: list[tuple[str, Path]] = []
    recon = sorted((run.path / "samples").glob("recon_*.png"))
    if recon:
        caption = (
            f"training reconstructions at the last logged step ({recon[-1].name}): "
            "top row validation images, bottom row reconstructions"
        )
        found.append((caption, recon[-1]))
    for grid in sorted(run.path.rglob("grid.png")):
        found.append((f"samples: {grid.relative_to(root)}", grid))
    beside = run.path.parent / f"samples_{run.path.name}.png"
    if beside.is_file() and beside.parent != root:  # else the overview shows it
        found.append((f"samples of the prior trained on its tokens ({beside.name})", beside))
    return found


def config_html(run: Run) -> str:
    """The saved model's config and the training config, side by side."""
    parts = []
    if run.model_config:
        parts.append(
            f"<div><h4>model: {esc(run.model_class)}</h4>{kv_table(run.model_config)}</div>"
        )
    if run.train_config:
        parts.append(f"<div><h4>training</h4>{kv_table(run.train_config)}</div>")
    return f"<div class='cols'>{''.join(parts)}</div>" if parts else ""


def metrics_html(run: Run) -> str:
    """Final value of each metric, one column per split."""
    if not run.final:
        return "<p class='note'>No metrics.csv.</p>"
    splits = sorted(run.final, key=lambda s: (s != "train", s))
    names = list(dict.fromkeys(n for s in splits for n in run.final[s]))
    rows = [[n, *(run.final[s].get(n, "") for s in splits)] for n in names]
    return f"<p>Last logged values, step {run.steps}.</p>" + table(["metric", *splits], rows)


def display_width(png: Path) -> int | None:
    """Three times the width of a grid of small images (< 100 pixels high), else None."""
    from PIL import Image

    with Image.open(png) as image:
        width, height = image.size
    return 3 * width if height < 100 else None


def run_section(run: Run, root: Path) -> str:
    """One run: config, metrics, eval tables, figures and the PNG grids found."""
    kind = run.model_class or "run in progress (no model/ yet)"
    title = f"<h2>{esc(run.name)} <small>{esc(kind)}</small></h2>"
    parts = [
        f"<section id='{anchor(run.name)}'>{title}",
        f"<p class='path'>{esc(run.path)}</p>",
        config_html(run),
        "<h3>Metrics</h3>",
        metrics_html(run),
    ]
    parts += [eval_html(p, d, root) for p, d in run.evals]
    parts.append("<h3>Figures</h3>" + figures_html(run))
    images = run_images(run, root)
    if images:
        parts.append("<h3>Images in the run</h3>")
        parts += [
            img(png_uri(p.read_bytes()), caption, width=display_width(p)) for caption, p in images
        ]
    return "".join(parts) + "</section>"


def anchor(name: str) -> str:
    """An id for a run's section."""
    return "run-" + "".join(c if c.isalnum() or c in "_-" else "-" for c in name)


COMPARE = (
    ("train", "loss"),
    ("val", "loss"),
    ("val", "rec"),
    ("val", "nll"),
    ("val", "bits_per_image"),
)


def comparison_html(runs: list[Run]) -> str:
    """One row per run: model, steps, final train/val figures and ``mvq eval`` numbers."""
    metrics = [m for m in COMPARE if any(m[0] in r.final and m[1] in r.final[m[0]] for r in runs)]
    evals = [r.evals[0][1] if r.evals else {} for r in runs]
    numeric = lambda v: isinstance(v, int | float) and not isinstance(v, bool)  # noqa: E731
    keys = list(dict.fromkeys(k for e in evals for k, v in e.items() if numeric(v)))[:10]
    headers = ["run", "model", "steps", *(f"{s} {n}" for s, n in metrics), *keys]
    rows = []
    for run, ev in zip(runs, evals, strict=True):
        link = f"<a href='#{anchor(run.name)}'>{esc(run.name)}</a>"
        cells = [run.model_class or "", run.steps if run.steps is not None else ""]
        cells += [run.final.get(s, {}).get(n, "") for s, n in metrics]
        cells += [ev.get(k, "") for k in keys]
        rows.append("<tr><td>" + link + "</td>" + "".join(f"<td>{fmt(c)}</td>" for c in cells))
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{'</tr>'.join(rows)}</tr></tbody></table>"


def overview_html(root: Path, runs: list[Run]) -> str:
    """A folder of runs: its tables (metrics.md, results.md/.csv), top-level PNGs, comparison."""
    parts = ["<section id='overview'><h2>Overview</h2>"]
    for name in ("metrics.md", "results.md"):
        if (root / name).is_file():
            parts.append(f"<h3>{name}</h3>" + markdown_html((root / name).read_text()))
    if (root / "results.csv").is_file() and not (root / "results.md").is_file():
        parts.append("<h3>results.csv</h3>" + csv_html(root / "results.csv"))
    parts += [eval_html(p, d, root) for p, d in find_evals(root) if not under_runs(p, runs)]
    if len(runs) > 1:
        parts.append("<h3>Runs side by side</h3>" + comparison_html(runs))
    for png in sorted(root.glob("*.png")):
        parts.append(img(png_uri(png.read_bytes()), f"{png.name}: {demo_caption(png.name)}"))
    return "".join(parts) + "</section>"


def demo_caption(name: str) -> str:
    """What the PNGs ``mvq demo`` writes show (empty for other files)."""
    if name == "reconstructions.png":
        return "rows: test images, VQ-VAE-2 reconstructions, MVQVAE reconstructions"
    if name.startswith("samples_"):
        return f"images sampled from the prior trained on {name[8:-4]}'s tokens, decoded by it"
    return ""


def under_runs(path: Path, runs: list[Run]) -> bool:
    """Whether ``path`` lies inside one of the runs (shown in that run's section)."""
    return any(run.path in path.parents for run in runs)


CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d1d1f;
 margin:0;background:#f6f7f9}
main{max-width:1180px;margin:0 auto;padding:1.5em 2em 4em}
header{background:#23395d;color:#fff;padding:1.2em 2em}header h1{margin:0;font-size:1.5em}
header p{margin:.3em 0 0;opacity:.85}
nav{background:#fff;border-bottom:1px solid #dde;padding:.6em 2em;position:sticky;top:0}
nav a{margin-right:1.2em;color:#23395d;text-decoration:none}
section{background:#fff;border:1px solid #e2e4ea;border-radius:8px;padding:1em 1.6em;
 margin:1.4em 0}
h2 small{font-weight:normal;color:#667;font-size:.7em;margin-left:.5em}
table{border-collapse:collapse;margin:.6em 0 1em;font-size:.9em}
th,td{border:1px solid #dde;padding:.25em .6em;text-align:left}
th{background:#eef1f6}td{font-variant-numeric:tabular-nums}
.cols{display:flex;gap:2em;flex-wrap:wrap;align-items:flex-start}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}
img.grid{image-rendering:pixelated}
figcaption{color:#445;font-size:.88em;max-width:900px}
.path,.note{color:#778;font-size:.85em}details{margin:.5em 0}
"""


def page(title: str, subtitle: str, nav: list[tuple[str, str]], body: str) -> str:
    """The whole HTML document (inline CSS, no script, no external reference)."""
    links = "".join(f"<a href='#{a}'>{esc(t)}</a>" for a, t in nav)
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{esc(title)}</title><link rel='icon' href='data:,'><style>{CSS}</style></head>"
        f"<body><header><h1>{esc(title)}</h1><p>{esc(subtitle)}</p></header>"
        f"<nav>{links}</nav><main>{body}</main></body></html>\n"
    )


def write_report(path: str | Path, out: str | Path | None = None) -> Path:
    """Write the HTML page of a run or a folder of runs; returns its path.

    Args:
        path: a run directory, a saved model, or a folder holding runs (a demo, a sweep).
        out: the HTML file to write (default ``path/report.html``).
    """
    from mvq.report.viz import VizError

    root = Path(path)
    if not root.is_dir():
        raise VizError(f"{root} is not a directory: pass a run directory or a folder of runs")
    runs = [read_run(p, root) for p in find_runs(root)]
    single = len(runs) == 1 and runs[0].path == root
    if not runs and not any(root.glob("*.png")) and not find_evals(root):
        raise VizError(f"{root} holds no runs (metrics.csv or model/), PNGs or eval.json")
    body = "" if single else overview_html(root, runs)
    body += "".join(run_section(run, root) for run in runs)
    nav = [] if single else [("overview", "Overview")]
    nav += [(anchor(r.name), r.name) for r in runs]
    what = "run" if single else f"{len(runs)} runs"
    subtitle = (
        f"{what} in {root.resolve()}; written by mvq report, {time.strftime('%Y-%m-%d %H:%M')}"
    )
    target = Path(out) if out is not None else root / "report.html"
    atomic_write_file(target, page(f"mvq report: {root.resolve().name}", subtitle, nav, body))
    return target
