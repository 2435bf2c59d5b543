"""The model card (``README.md``) written next to every saved model.

The card says what the model is (class, config), what it was trained on, its rate and token
layout (tokenizers), its metrics when known, and how to load it. On the Hugging Face Hub it is
the repository's front page; its YAML header tags it as an mvq model.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

CARD_NAME = "README.md"
EVAL_NAME = "eval.json"


def read_metrics(directory: Path) -> dict[str, float]:
    """Numbers of an ``eval.json`` in ``directory`` or in its parent (a run directory); {} if
    there is none or it is unreadable."""
    for path in (directory / EVAL_NAME, directory.parent / EVAL_NAME):
        try:
            values = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(values, dict):
            return numeric(values)
    return {}


def numeric(values: dict[str, Any]) -> dict[str, float]:
    """The finite numeric entries of ``values`` (booleans and nested values dropped)."""
    return {
        k: v
        for k, v in values.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }


def _layout_line(layout: Any) -> str:
    """One sentence describing a tokenizer's ``TokenLayout``."""
    h, w = layout.primary_grid
    h2, w2 = layout.secondary_grid
    text = (
        f"{h}×{w} primary tokens over {layout.primary_vocab} entries + {h2}×{w2} secondary "
        f"over {layout.secondary_vocab}"
    )
    if getattr(layout, "mask_codebook_size", 0):
        return text + f" + the index of one of {layout.mask_codebook_size} fixed masks"
    return text + (f" + a {layout.mask_bits}-bit mask" if layout.mask_bits else "")


def _facts(model: Any, data: dict[str, Any] | None) -> list[tuple[str, str]]:
    """(name, value) rows of the card's summary table."""
    rows = [("class", f"`{type(model).__name__}` ({type(model).__module__})")]
    if data:
        rows.append(("data set", ", ".join(f"{k}: {v}" for k, v in data.items())))
    if hasattr(model, "bits_per_image") and hasattr(model, "token_layout"):
        c = model.config
        rows.append(("images", f"{c.in_channels} × {c.image_size} × {c.image_size}, in [-1, 1]"))
        rows.append(("bits per image", f"{model.bits_per_image:g}"))
        rows.append(("token layout", _layout_line(model.token_layout)))
    saved = set(model.pretrained_state_dict())  # a GAN's discriminator is not saved
    params = sum(p.numel() for name, p in model.named_parameters() if name in saved)
    rows.append(("parameters", f"{params:,}"))
    return rows


def _load_snippet(model: Any, repo_id: str | None) -> str:
    """Python that loads the model back."""
    name = repo_id or "path/to/this/folder"
    if hasattr(model, "token_layout"):
        return (
            "from mvq.tokenizers import load_tokenizer\n\n"
            f'tokenizer = load_tokenizer("{name}")  # a folder or a Hub id org/name[@revision]\n'
            "tokens = tokenizer.encode(images)  # images (B, C, H, W) in [-1, 1]\n"
            "recon = tokenizer.decode(tokens)\n"
        )
    cls = type(model).__name__
    package = ".".join(type(model).__module__.split(".")[:2])  # mvq.tokenizers, mvq.priors
    return f'from {package} import {cls}\n\nmodel = {cls}.from_pretrained("{name}")\n'


def render_model_card(
    model: Any,
    repo_id: str | None = None,
    data: dict[str, Any] | None = None,
    metrics: dict[str, float] | None = None,
) -> str:
    """The ``README.md`` text for ``model`` (an nn.Module with a dataclass ``config``).

    Args:
        model: the model being saved.
        repo_id: its Hub id when pushed, used in the loading example.
        data: what it was trained on (e.g. ``{"name": "fashion_mnist", "image_size": 28}``).
        metrics: evaluation numbers (e.g. ``mvq eval``'s ``eval.json``).
    """
    title = repo_id or type(model).__name__
    lines = ["---", "library_name: mvq", "tags:", "- mvq", "- image-tokenizer", "---", ""]
    lines += [f"# {title}", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in _facts(model, data)]
    if metrics:
        lines += ["", "## Metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.6g} |" for k, v in sorted(metrics.items())]
    config = json.dumps(dataclasses.asdict(model.config), indent=2)
    lines += ["", "## Config", "", "```json", config, "```", ""]
    lines += ["## Load it", "", "```python", _load_snippet(model, repo_id).rstrip(), "```", ""]
    return "\n".join(lines)
