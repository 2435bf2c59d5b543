"""Write results/fmnist/queue.txt: the study's unfinished cells, the verdicts that need the fewest cells first."""
from pathlib import Path

from mvq.experiments.sweep import expand, load_sweep

HERE = Path("results/fmnist")
cells = {n: expand(load_sweep(HERE / f"{n}.yaml")) for n in ("grid", "healthy", "j_ablation", "longer", "mask_prior")}
def pick(sweep, seed, **labels):
    return [(sweep, c) for c in cells[sweep] if c.seed == seed and all(c.axes.get(k) == v for k, v in labels.items())]
blocks = []
def block(title, seeds, parts):
    lines = [f"# {title}"]
    for seed in seeds:
        for sweep, labels in parts:
            lines += [f"{s} {c.index}" for s, c in pick(sweep, seed, **labels)]
    blocks.append(lines)
for tokens, claim in (("1+1", "C1 and C6 at 1+1, K = 16"), ("4+1", "C1, C2 and C6 at 4+1, K = 16")):
    block(claim, (2, 3, 4), [("grid", {"tokens": tokens, "K": "16"}), ("healthy", {"tokens": tokens, "K": "16"}), ("mask_prior", {"tokens": tokens})])
block("C4 at 1+1 and 4+1: K = 256 (VQ-VAE-2 and MVQVAE; then FSQ-VAE for C5)", (2, 3, 4),
      [(sw, {"tokens": t, "K": "256", "method": m}) for t in ("1+1", "4+1") for sw in ("grid", "healthy") for m in ("vqvae2", "mvqvae")])
block("FSQ-VAE at K = 256 (C5's third column)", (2, 3, 4), [("grid", {"tokens": t, "K": "256", "method": "fsqvae"}) for t in ("1+1", "4+1")])
block("C3: the J ablation, a third seed", (2,), [("j_ablation", {})])
block("16+1 tokens: a third seed (about an hour per cell)", (2,), [(sw, {"tokens": "16+1"}) for sw in ("grid", "healthy")])
block("The longer pair: a third seed (about an hour per cell)", (2,), [("longer", {})])
head = ["# Priority order of the study's cells still to run (issue 24's seeds): the verdicts that need",
        "# the fewest cells first, each block seed by seed. `<sweep> <cell index>` per line (indices of",
        "# `mvq sweep FILE --list`); finished cells are skipped by the sweep itself.",
        "# Regenerate after changing a sweep file: .venv/bin/python results/fmnist/make_queue.py"]
(HERE / "queue.txt").write_text("\n".join(head + [l for b in blocks for l in b]) + "\n")
print(sum(1 for b in blocks for l in b if not l.startswith("#")), "cells queued")
