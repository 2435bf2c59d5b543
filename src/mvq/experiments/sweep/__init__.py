"""Sweeps: a grid of tokenizer (and prior) runs with one budget, resumable (``mvq sweep``): the
sweep file (``spec``), its grid of cells (``grid``), their stages and markers (``stages``), the
subprocess runner (``runner``), the tables (``tables``) and the command (``command``).

A sweep file names the axes of a grid; every cell is trained, optionally encoded and given a
prior, evaluated with ``mvq eval``, and collected into one table::

    name: fmnist_grid                 # title of the tables (default: the file's stem)
    out: runs/sweeps/fmnist_grid      # output folder (default runs/sweeps/<stem>; --out wins)
    configs:                          # base run configs; other keys are this entry's axis labels
      - {config: configs/vqvae2_fmnist_s1_k16.yaml, method: vqvae2, tokens: 1+1, K: 16,
         prior: configs/priors/transformer_1p1.yaml}
      - {config: configs/mvqvae_fmnist_s1_k16.yaml, method: mvqvae, tokens: 1+1, K: 16,
         prior: configs/priors/transformer_1p1.yaml, set: [model_config.num_hypotheses=64]}
    overrides:                        # more axes: axis -> label -> --set overrides
      variant:
        paper: {}
        healthy: {model_config.ema: true, model_config.dead_code_threshold: 1.0}
    exclude: [{method: mvqvae, variant: healthy}]   # drop cells matching all given labels
    seeds: [0, 1]                     # the last axis, `seed`
    budget: {max_steps: 3750, batch_size: 32}       # train.* of every cell: one budget
    set: [train.val_batches=20]       # overrides of every cell (before the axes' ones)
    device: cuda                      # --device of every stage (default: each command's own)
    prior: {max_steps: 2000, set: []} # optional; `config` here: a template like
                                      # configs/priors/transformer_{K}.yaml, else each entry's
    eval: {split: val, n: 10000, metrics: [mse, fd_fmnist], sample_metrics: [fd_fmnist]}
                                      # optional (absent or null: no eval stages); data:
                                      # default the config's data.name

Cells are configs x overrides x seeds (in that order, seeds fastest). Each cell lives in
``OUT/cells/<axis=label__...>/`` and runs the stages ``train`` (``mvq train``), ``encode``
(``mvq encode``) and ``prior`` (``mvq train-prior``) when the sweep has a prior, and ``eval``
(``mvq eval`` of the reconstructions, into ``eval/``) and, with a prior, ``sample_eval`` (``mvq
eval --prior``, into ``eval_samples/``) when it has an eval section, each as a subprocess with
a log in ``logs/``. The table row merges both ``eval.json``.

A stage is finished when its marker ``markers/<stage>.json`` exists (written atomically after
the stage succeeded, with its wall time and summary). A rerun skips finished stages, resumes an
interrupted training stage from its checkpoint (``--resume``) or restarts it in an empty
folder, and refuses a cell folder whose finished stages were made by another spec. Relative
config paths resolve against the current directory, then against the sweep file's folder.

SIGTERM and SIGUSR1 to the sweep are passed on to its running stages (a training stage
checkpoints the step it is at), no stage starts after them, the stopped cells are recorded as
interrupted (not failed), and the sweep exits with the signal's status (143, 75; see
``mvq.training.interrupt``); the same command resumes them.
"""

from mvq.experiments.sweep.command import add_arguments, sweep_command
from mvq.experiments.sweep.grid import expand
from mvq.experiments.sweep.runner import last_json_object, repo_commit, run_cell, run_sweep
from mvq.experiments.sweep.spec import Cell, SweepConfig, SweepError, load_sweep
from mvq.experiments.sweep.stages import (
    STAGE_PROGRAM,
    cell_stages,
    file_lock,
    first_stage_to_run,
    pending,
)
from mvq.experiments.sweep.tables import collect, summary_tables

__all__ = [
    "STAGE_PROGRAM",
    "Cell",
    "SweepConfig",
    "SweepError",
    "add_arguments",
    "cell_stages",
    "collect",
    "expand",
    "file_lock",
    "first_stage_to_run",
    "last_json_object",
    "load_sweep",
    "pending",
    "repo_commit",
    "run_cell",
    "run_sweep",
    "summary_tables",
    "sweep_command",
]
