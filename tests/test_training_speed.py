"""Training at speed, tested on CPU: bf16/fp16 autocast (fp16 with a GradScaler), TF32,
torch.compile, gradient accumulation, warm-up + cosine lr, EMA weights, host syncs only at
checks, and the preemption-safe checkpoints (keep_last, best.pt, ckpt_minutes, weights_only,
--resume before the first checkpoint). Every switch keeps exact resume."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_training import (
    TRAIN,
    VAL,
    Lin,
    Tiny,
    TinyConfig,
    assert_same_state,
    config,
    fresh,
    raise_interrupt,
    read_rows,
)

import mvq.training.trainer as trainer_module
from mvq.cli import main
from mvq.training import (
    CheckpointError,
    TrainConfig,
    TrainingDiverged,
    checkpoint_path,
    load_checkpoint,
    train,
)
from mvq.training.batch import split_batch
from mvq.training.ema import make_ema, update_ema
from mvq.training.precision import tf32_mode
from mvq.training.schedule import lr_at


class Boosted(Tiny):
    """Tiny whose loss is multiplied by 1e6 at one training step: fp16 gradients overflow."""

    boost_at: int | None = None

    def loss(self, batch):
        loss, logs = super().loss(batch)
        if self.training and self.train_calls == self.boost_at:
            loss = loss * 1e6
        return loss, logs


def fresh_boosted(boost_at: int | None = 3) -> Boosted:
    """A fresh Boosted model; its own call counter picks the step, so a model resumed after
    step ``boost_at`` must not be boosted again (None)."""
    torch.manual_seed(0)
    model = Boosted(TinyConfig(8))
    model.boost_at = boost_at
    return model


def stop_at(step: int):
    """A callback that hard-interrupts the run between steps at ``step``."""

    def callback(model, s, run_dir, writer):
        if s == step:
            raise_interrupt()

    return callback


def final_state(run_dir: Path) -> dict:
    return load_checkpoint(checkpoint_path(run_dir))


def assert_same_checkpoint(a: dict, b: dict) -> None:
    """Weights, EMA, optimizer moments and scaler of two checkpoints are bit-equal."""
    assert_same_state(a["model"], b["model"])
    assert (a["ema"] is None) == (b["ema"] is None)
    if a["ema"] is not None:
        assert_same_state(a["ema"], b["ema"])
    for name, opt in a["optimizers"].items():
        other = b["optimizers"][name]
        assert opt["param_groups"] == other["param_groups"]
        for key, state in opt["state"].items():
            assert_same_state(state, other["state"][key])
    assert a["scaler"] == b["scaler"]


SWITCHES = {
    "bf16": {"precision": "bf16"},
    "fp16": {"precision": "fp16"},
    "cosine": {"lr_schedule": "cosine", "warmup_steps": 3, "min_lr": 1e-5},
    "ema": {"ema_decay": 0.9},
    "grad_accum": {"grad_accum": 2},
    "fused_adam": {"fused_optimizer": True},
    "all": {
        "precision": "bf16",
        "lr_schedule": "cosine",
        "warmup_steps": 2,
        "ema_decay": 0.8,
        "grad_accum": 4,
        "keep_last": 2,
        "log_every": 3,
    },
}


@pytest.mark.parametrize("name", list(SWITCHES))
def test_every_switch_resumes_bit_exactly(tmp_path, name, device):
    overrides = SWITCHES[name] | {"device": str(device)}
    make = fresh_boosted if name == "fp16" else fresh
    train(make(), TRAIN, VAL, config(max_steps=12, **overrides), tmp_path / "full")
    with pytest.raises(KeyboardInterrupt):  # between steps 7 and 8, after the step-4 checkpoint
        cfg = config(max_steps=12, sample_every=7, **overrides)
        train(make(), TRAIN, VAL, cfg, tmp_path / "cut", callbacks=[stop_at(7)])
    assert final_state(tmp_path / "cut")["step"] == 7
    # the overflow of step 3 is behind the resumed run (its model counts calls from 0 again;
    # re-boosting at its third call matched on the CPU only because step 10 overflows there too)
    resumed = functools.partial(fresh_boosted, None) if name == "fp16" else fresh
    train(resumed(), TRAIN, VAL, config(max_steps=12, **overrides), tmp_path / "cut", resume=True)
    full, cut = final_state(tmp_path / "full"), final_state(tmp_path / "cut")
    assert full["step"] == cut["step"] == 12
    assert_same_checkpoint(full, cut)
    if "ema_decay" in overrides:  # the EMA is its own state, not a copy of the weights
        assert not torch.equal(full["ema"]["net.0.weight"], full["model"]["net.0.weight"])
    if name == "fp16":  # overflowing steps were skipped, the scale lowered, the run went on
        assert full["scaler"]["scale"] < 2.0**16
        assert all(torch.isfinite(v).all() for v in full["model"].values())


def test_fused_adam_is_the_same_update_up_to_rounding(tmp_path):
    loop, fused = fresh(), fresh()
    train(loop, TRAIN, None, config(max_steps=6), tmp_path / "loop")
    train(fused, TRAIN, None, config(max_steps=6, fused_optimizer=True), tmp_path / "fused")
    state = torch.load(checkpoint_path(tmp_path / "fused"), weights_only=True)
    assert all(g["fused"] for g in state["optimizers"]["model"]["param_groups"])
    moved = 0.0
    for (name, a), b in zip(loop.state_dict().items(), fused.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)
        moved = max(moved, (a.float() - fresh().state_dict()[name].float()).abs().max().item())
    assert moved > 1e-3  # six steps changed the weights far more than the tolerance


def test_fp16_skips_overflowing_steps_instead_of_diverging(tmp_path):
    boosted = fresh_boosted()
    train(boosted, TRAIN, None, config(max_steps=3, precision="fp16"), tmp_path / "a")
    plain = fresh()
    train(plain, TRAIN, None, config(max_steps=2, precision="fp16"), tmp_path / "b")
    # Step 3's update was skipped: the weights are those after step 2 (BatchNorm stats moved).
    assert torch.equal(boosted.net[0].weight, plain.net[0].weight)
    with pytest.raises(TrainingDiverged):  # fp32 has no scaler: an Inf gradient diverges
        boosted = fresh_boosted()
        boosted.boost_at, boosted.nan_at = None, 3
        train(boosted, TRAIN, None, config(max_steps=3, precision="fp16"), tmp_path / "c")


def test_grad_accum_equals_the_whole_batch(tmp_path):
    sizes = []

    class Counting(Lin):
        def loss(self, batch):
            sizes.append(len(batch[0]))
            return super().loss(batch)

    states = {}
    for accum in (1, 2, 4):
        torch.manual_seed(0)
        model = Counting()
        train(model, TRAIN, VAL, config(max_steps=6, grad_accum=accum), tmp_path / f"a{accum}")
        states[accum] = model.state_dict()
        assert sizes[0] == 8 // accum
        sizes.clear()
    for accum in (2, 4):
        for key, value in states[1].items():
            torch.testing.assert_close(states[accum][key], value, rtol=1e-6, atol=1e-7)
    assert not torch.equal(states[1]["lin.weight"], Lin().lin.weight)


def test_split_batch_keeps_the_structure():
    batch = {"x": torch.arange(8), "pair": (torch.ones(8, 2), "tag")}
    parts = split_batch(batch, 4)
    assert [p["x"].tolist() for p in parts] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert parts[3]["pair"][0].shape == (2, 2) and parts[3]["pair"][1] == "tag"
    assert split_batch(batch, 1)[0] is batch
    with pytest.raises(ValueError, match="does not split into 3"):
        split_batch(batch, 3)


def test_lr_schedule_warmup_then_cosine(tmp_path):
    lrs = [lr_at(s, 10, 1.0, "cosine", warmup=2, min_lr=0.1) for s in range(10)]
    assert lrs[:3] == [0.5, 1.0, 1.0] and lrs[-1] == pytest.approx(0.1)
    assert all(a > b for a, b in zip(lrs[2:], lrs[3:], strict=False))
    assert [lr_at(s, 10, 1.0, "constant", warmup=4) for s in (0, 3, 9)] == [0.25, 1.0, 1.0]
    cfg = config(max_steps=6, lr_schedule="cosine", warmup_steps=2, min_lr=1e-5, log_every=1)
    train(fresh(), TRAIN, None, cfg, tmp_path)
    logged = [
        float(v) for _, split, name, v in read_rows(tmp_path / "metrics.csv")[1:] if name == "lr"
    ]
    assert logged == pytest.approx([lr_at(s, 6, 5e-4, "cosine", 2, 1e-5) for s in range(6)])
    ckpt = final_state(tmp_path)
    assert ckpt["optimizers"]["model"]["param_groups"][0]["lr"] == pytest.approx(1e-5)


def test_ema_update_is_the_moving_average():
    model = Tiny()
    ema = make_ema(model)
    assert not ema.training and not any(p.requires_grad for p in ema.parameters())
    before = ema.net[0].weight.clone()
    with torch.no_grad():
        model.net[0].weight.add_(1.0)
        model.net[1].running_mean.fill_(3.0)
    update_ema(ema, model, 0.9)
    torch.testing.assert_close(ema.net[0].weight, 0.9 * before + 0.1 * model.net[0].weight)
    assert torch.equal(ema.net[1].running_mean, model.net[1].running_mean)  # buffers copied


def test_ema_weights_are_validated_saved_and_returned(tmp_path):
    model = fresh()
    cfg = config(max_steps=10, ema_decay=0.8)
    result = train(
        model, TRAIN, VAL, cfg, tmp_path / "ema", save_model=lambda m, path: m.save_pretrained(path)
    )
    ckpt = final_state(tmp_path / "ema")
    assert_same_state(model.state_dict(), ckpt["ema"])  # train returns with the EMA weights
    assert_same_state(Tiny.from_pretrained(tmp_path / "ema" / "model").state_dict(), ckpt["ema"])
    plain = fresh()
    train(plain, TRAIN, VAL, config(max_steps=10), tmp_path / "plain")
    assert_same_state(ckpt["model"], plain.state_dict())  # the EMA does not change training
    # The validation loss is the EMA model's (same seeded noise as the trainer's validation).
    trainer_module.seed_everything(0)
    model.eval()
    x, y = VAL.tensors  # two batches, 8 + 4, in order (no DataLoader: it draws a seed)
    with torch.no_grad():
        losses = [
            (model.loss((x[i : i + 8], y[i : i + 8]))[0].item(), len(x[i : i + 8])) for i in (0, 8)
        ]
    expected = sum(loss * n for loss, n in losses) / len(VAL)
    assert result.last_val_loss == pytest.approx(expected, rel=1e-6)
    assert result.last_val_loss != pytest.approx(final_val(tmp_path / "plain"), rel=1e-4)


def final_val(run_dir: Path) -> float:
    rows = read_rows(run_dir / "metrics.csv")[1:]
    return [float(v) for _, split, name, v in rows if (split, name) == ("val", "loss")][-1]


def test_host_waits_only_at_checks_and_a_nan_between_them_still_stops(tmp_path, monkeypatch):
    checked = []
    original = trainer_module.Trainer._check

    def counting(self, timed):
        checked.append(self.step)
        return original(self, timed)

    monkeypatch.setattr(trainer_module.Trainer, "_check", counting)
    cfg = config(max_steps=12, log_every=6, ckpt_every=100, val_every=100)
    train(fresh(), TRAIN, None, cfg, tmp_path / "quiet")
    assert checked == [6, 12, 12]  # the log steps and the end; none in between
    checked.clear()
    model = fresh()
    model.nan_at = 6  # after the step-4 checkpoint, before the check at step 8
    cfg = config(max_steps=12, log_every=100, ckpt_every=4, val_every=100)
    with pytest.raises(
        TrainingDiverged,
        match=r"at step 6 \(loss is nan\), found at the check "
        r"after step 8;.*last\.pt \(step 4\)",
    ):
        train(model, TRAIN, None, cfg, tmp_path / "nan")
    assert checked == [4, 8]
    four = fresh()
    train(four, TRAIN, None, config(max_steps=4), tmp_path / "four")
    assert_same_state(final_state(tmp_path / "nan")["model"], four.state_dict())


def test_run_killed_before_its_first_checkpoint_resumes_to_the_same_weights(tmp_path, capsys):
    reference = fresh()
    train(reference, TRAIN, VAL, config(max_steps=8, ckpt_every=100), tmp_path / "ref")
    killed = fresh()
    killed.on_step = {6: raise_interrupt}  # inside step 6: no checkpoint can be written
    with pytest.raises(KeyboardInterrupt):
        train(killed, TRAIN, VAL, config(max_steps=8, ckpt_every=100), tmp_path / "run")
    assert not checkpoint_path(tmp_path / "run").exists()
    assert (tmp_path / "run" / "metrics.csv").is_file()
    capsys.readouterr()
    model = fresh()  # the scheduler requeues the same command, with --resume
    train(model, TRAIN, VAL, config(max_steps=8, ckpt_every=100), tmp_path / "run", resume=True)
    assert "no checkpoint at" in capsys.readouterr().err
    assert_same_state(model.state_dict(), reference.state_dict())
    keys = [(r[0], r[1], r[2]) for r in read_rows(tmp_path / "run" / "metrics.csv")[1:]]
    assert len(keys) == len(set(keys)) and keys == [
        (r[0], r[1], r[2]) for r in read_rows(tmp_path / "ref" / "metrics.csv")[1:]
    ]  # the killed attempt's rows are gone


def test_keep_last_best_and_timed_checkpoints(tmp_path):
    cfg = config(max_steps=12, ckpt_every=2, keep_last=2)
    train(fresh(), TRAIN, VAL, cfg, tmp_path / "k")
    ckpt_dir = tmp_path / "k" / "checkpoints"
    names = sorted(p.name for p in ckpt_dir.iterdir())
    assert names == ["best.pt", "last.pt", "step_00000010.pt", "step_00000012.pt"]
    assert (ckpt_dir / "last.pt").samefile(ckpt_dir / "step_00000012.pt")
    val = {
        int(s): float(v)
        for s, split, name, v in read_rows(tmp_path / "k" / "metrics.csv")[1:]
        if (split, name) == ("val", "loss")
    }
    best = load_checkpoint(ckpt_dir / "best.pt")
    assert best["step"] == min(val, key=val.get) and best["best_val_loss"] == min(val.values())
    # ckpt_minutes: once the time is up (here: at once) a single process checkpoints after the
    # step (a DDP run at its next check), and the timer restarts.
    cfg = config(max_steps=4, ckpt_every=100, keep_last=10, log_every=2, ckpt_minutes=1e-9)
    train(fresh(), TRAIN, None, cfg, tmp_path / "t")
    steps = sorted(p.name for p in (tmp_path / "t" / "checkpoints").glob("step_*.pt"))
    assert steps == [f"step_{s:08d}.pt" for s in (1, 2, 3, 4)]
    cfg = config(max_steps=4, ckpt_every=100, keep_last=10, log_every=2, ckpt_minutes=60)
    train(fresh(), TRAIN, None, cfg, tmp_path / "h")
    assert [p.name for p in (tmp_path / "h" / "checkpoints").glob("step_*.pt")] == [
        "step_00000004.pt"  # an hour never passed: only the end
    ]


class Trap:
    """Unpickling this calls ``Path.touch``: code a malicious checkpoint would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_checkpoints_load_weights_only_and_refuse_code(tmp_path):
    train(fresh(), TRAIN, None, config(max_steps=4, ema_decay=0.5, precision="fp16"), tmp_path)
    path = checkpoint_path(tmp_path)
    plain = torch.load(path, weights_only=True)  # tensors, numbers, strings, lists, dicts
    assert isinstance(plain["rng"][0]["python"]["state"], torch.Tensor)
    marker = tmp_path / "pwned"
    ckpt = {**plain, "config": Trap(marker)}
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="corrupted or unreadable"):
        train(fresh(), TRAIN, None, config(max_steps=8), tmp_path, resume=True)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"precision": "fp8"}, "precision must be one of fp32, bf16, fp16, got 'fp8'"),
        ({"lr_schedule": "linear"}, "lr_schedule must be one of constant, cosine"),
        ({"grad_accum": 3}, "does not split into grad_accum=3"),
        ({"ema_decay": 1.5}, r"ema_decay must be in \(0, 1\)"),
        ({"tf32": "yes"}, "tf32 must be true or false"),
        ({"fused_optimizer": 1}, "fused_optimizer must be true or false"),
        ({"keep_last": 0}, "keep_last must be an integer >= 1"),
        ({"min_lr": 1.0}, "min_lr must be in"),
    ],
)
def test_bad_train_values_are_clear_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{"batch_size": 8, **overrides})


def test_bad_precision_on_the_command_line_is_one_line_exit_2(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("model: mvqvae_fmnist_s4_k16\ndata: {name: fashion_mnist}\n")
    argv = [
        "train",
        "--config",
        str(cfg),
        "--out",
        str(tmp_path / "r"),
        "--set",
        "train.precision=fp8",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "precision must be one of fp32, bf16, fp16" in err
    assert not (tmp_path / "r").exists()


def test_compiled_training_matches_eager_and_resumes(tmp_path, monkeypatch):
    # aot_eager traces forward and backward as inductor does, without minutes of C++ builds.
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    torch.manual_seed(0)
    eager = Lin()
    train(eager, TRAIN, None, config(max_steps=8), tmp_path / "eager")
    torch.manual_seed(0)
    train(Lin(), TRAIN, None, config(max_steps=4, compile=True), tmp_path / "compiled")
    torch.manual_seed(0)
    compiled = Lin()
    train(
        compiled, TRAIN, None, config(max_steps=8, compile=True), tmp_path / "compiled", resume=True
    )
    assert_same_state(compiled.state_dict(), eager.state_dict())


class _StrideCheckFails(torch.autograd.Function):
    """Identity whose backward fails as inductor's assert_size_stride did on an H200."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        raise AssertionError(
            "expected size 128==128, stride 196==1 at dim=1\n"
            "Error in op: torch.ops.aten.convolution_backward.default"
        )


def failing_compile(message_ok: bool = True):
    """A stand-in for torch.compile whose graph fails its first backward like inductor's
    stride check (or, ``message_ok=False``, with an unrelated AssertionError)."""

    def compile_(module, **kwargs):
        def forward(*args):
            loss, logs = module(*args)
            if not message_ok:
                raise AssertionError("a bug of ours")
            return _StrideCheckFails.apply(loss), logs

        return forward

    return compile_


def test_a_compiled_step_failing_inductors_stride_check_falls_back_to_eager(
    tmp_path, monkeypatch, capsys
):
    """The first compiled step's backward fails (as torch 2.11's did on CUDA): the step is
    undone (BatchNorm statistics and RNG included) and redone eagerly; the run equals an
    eager run bit for bit and says so once. Another AssertionError keeps its traceback."""
    train(fresh(), TRAIN, VAL, config(max_steps=6), tmp_path / "eager")
    monkeypatch.setattr(torch, "compile", failing_compile())
    train(fresh(), TRAIN, VAL, config(max_steps=6, compile=True), tmp_path / "fallback")
    err = capsys.readouterr().err
    assert err.count("failed inductor's stride check") == 1 and "pytorch#171622" in err
    assert_same_checkpoint(final_state(tmp_path / "eager"), final_state(tmp_path / "fallback"))
    monkeypatch.setattr(torch, "compile", failing_compile(message_ok=False))
    with pytest.raises(AssertionError, match="a bug of ours"):
        train(fresh(), TRAIN, VAL, config(max_steps=6, compile=True), tmp_path / "bug")


def test_tf32_switch_is_scoped():
    matmul = torch.backends.cuda.matmul
    before = (matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    with tf32_mode(True):
        assert matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    assert (matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before


def test_mvq_quantizer_stays_fp32_under_autocast():
    from mvq.tokenizers import create_tokenizer

    model = create_tokenizer("mvqvae_fmnist_s4_k16", channels=16, res_channels=8, num_hypotheses=4)
    seen = []
    model.quantizer.register_forward_pre_hook(
        lambda module, args: seen.append((torch.is_autocast_enabled("cpu"), args[0].dtype))
    )
    x = torch.rand(2, 1, 28, 28) * 2 - 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = model.loss(x)
    assert seen == [(False, torch.float32)] and torch.isfinite(loss)


FAULTS = """
import resource, torch
from mvq.core.host_memory import keep_freed_memory
from mvq.tokenizers import create_tokenizer
torch.manual_seed(0); torch.set_num_threads(1)
model = create_tokenizer("vqvae2_fmnist_s4_k16").train()
x = torch.rand(16, 1, 28, 28)
def faults_per_step():
    for i in range(7):
        if i == 2:
            start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        loss, _ = model.loss((x, None)); loss.backward()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start) / 5
print(faults_per_step(), keep_freed_memory(), faults_per_step())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_kept_host_memory_stops_the_page_faults_of_each_step():
    """glibc's defaults hand a step's activations back to the OS and fault them in again
    (thousands of page faults per tokenizer step); ``keep_freed_memory``, which ``train`` and
    every ``mvq`` command call, keeps them mapped. In a fresh process: glibc's defaults first."""
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if thp.is_file() and "[always]" in thp.read_text():
        pytest.skip("transparent huge pages always on: few faults either way")
    env = {**os.environ, "MVQ_KEEP_FREED_MEMORY": "1"}
    out = subprocess.run(
        [sys.executable, "-c", FAULTS], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    before, kept, after = float(out[0]), out[1], float(out[2])
    assert kept == "True"
    assert before > 1000 and after < before / 5, (before, after)
