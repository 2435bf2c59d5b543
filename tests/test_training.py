"""Contracts of the shared trainer: exact resume, atomic checkpoints, NaN stop, run-dir errors,
logs, callbacks, and a 2-process gloo DDP run. Tiny models, runs take a fraction of a second."""

from __future__ import annotations

import csv
import errno
import math
import multiprocessing
import os
import shutil
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import torchrun
from torch import nn
from torch.utils.data import TensorDataset

import mvq.training.trainer as trainer_module
from mvq.core.errors import ConfigError, DiskFullError
from mvq.core.pretrained import PretrainedMixin
from mvq.training import (
    CheckpointError,
    EpochBatchSampler,
    RunDirError,
    RunStopped,
    TrainConfig,
    TrainingDiverged,
    checkpoint_path,
    load_checkpoint,
    train,
)


@dataclass
class TinyConfig:
    width: int = 8


class Tiny(PretrainedMixin, nn.Module):
    """Linear-BN-ReLU-Linear regressor whose loss drops random terms (draws from the torch RNG)."""

    config_class = TinyConfig

    def __init__(self, config: TinyConfig | None = None) -> None:
        super().__init__()
        self.config = config or TinyConfig()
        w = self.config.width
        self.net = nn.Sequential(nn.Linear(4, w), nn.BatchNorm1d(w), nn.ReLU(), nn.Linear(w, 1))
        self.train_calls = 0
        self.nan_at: int | None = None  # training step whose loss is NaN
        self.on_step: dict[int, Callable[[], None]] = {}  # called inside a step's forward

    def loss(self, batch: tuple[torch.Tensor, torch.Tensor]):
        x, y = batch
        pred = self.net(x)
        keep = (torch.rand_like(pred) > 0.25).float()
        loss = ((pred - y) ** 2 * keep).sum() / keep.sum().clamp(min=1)
        if self.training:
            self.train_calls += 1
            if self.train_calls == self.nan_at:
                loss = loss * float("nan")
            self.on_step.get(self.train_calls, lambda: None)()
        return loss, {"usage": keep.mean()}


class OtherTiny(Tiny):
    pass


def raise_interrupt() -> None:
    raise KeyboardInterrupt


class Lin(nn.Module):
    """Linear regressor for the DDP test; ``noisy`` masks predictions at random."""

    def __init__(self, noisy: bool = False) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 1)
        self.noisy = noisy

    def loss(self, batch: tuple[torch.Tensor, torch.Tensor]):
        x, y = batch
        pred = self.lin(x)
        if self.noisy:
            pred = pred * (torch.rand_like(pred) > 0.25)
        return ((pred - y) ** 2).mean(), {"abs": (pred - y).abs().mean().detach()}


def make_data(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return TensorDataset(x, x.sum(1, keepdim=True) + 0.1 * torch.randn(n, 1, generator=g))


TRAIN, VAL = make_data(40, 0), make_data(12, 1)  # batch 8: 5 batches per epoch


def config(**overrides) -> TrainConfig:
    base = {"batch_size": 8, "log_every": 2, "ckpt_every": 4, "sample_every": 100, "device": "cpu"}
    return TrainConfig(**{**base, **overrides})


def fresh(width: int = 8, cls: type[Tiny] = Tiny) -> Tiny:
    torch.manual_seed(0)
    return cls(TinyConfig(width))


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 12-step run (crosses two epoch ends, with validation)."""
    model = fresh()
    result = train(model, TRAIN, VAL, config(max_steps=12), tmp_path_factory.mktemp("ref"))
    return model.state_dict(), result


def test_sampler_order_depends_on_seed_and_epoch_only():
    s = EpochBatchSampler(20, 3, seed=5)
    s.set_epoch(2)
    rng = torch.get_rng_state()
    epoch2 = list(s)
    assert torch.equal(rng, torch.get_rng_state())  # no global RNG drawn
    assert len(epoch2) == 6 and len({i for b in epoch2 for i in b}) == 18
    s.set_epoch(2, start_batch=4)
    assert list(s) == epoch2[4:] and len(s) == 2
    s.set_epoch(3)
    assert list(s) != epoch2
    ranks = [EpochBatchSampler(20, 3, seed=5, rank=r, world_size=2) for r in range(2)]
    single = EpochBatchSampler(20, 6, seed=5)
    for sampler in (*ranks, single):
        sampler.set_epoch(2)
    batches = list(zip(*ranks, single, strict=True))
    assert len(batches) == 3
    for a, b, both in batches:  # the ranks split exactly the single-process global batch
        assert sorted(a + b) == sorted(both)


def test_resume_is_bit_exact(tmp_path, monkeypatch, reference):
    ref_state, ref_result = reference
    part = tmp_path / "part"
    train(fresh(), TRAIN, VAL, config(max_steps=6), part)  # stops mid-epoch 1
    shutil.copytree(part, tmp_path / "copy")
    sampler_state = load_checkpoint(checkpoint_path(part))["sampler_state"]
    assert (sampler_state["epoch"], sampler_state["batch"]) == (1, 1)
    model = fresh(width=8)
    result = train(model, TRAIN, VAL, config(max_steps=12), part, resume=True)
    assert result.steps == 12
    assert_same_state(model.state_dict(), ref_state)
    assert result.last_val_loss == ref_result.last_val_loss
    assert result.best_val_loss == ref_result.best_val_loss
    # The check has teeth: without the restored RNG the resumed weights differ.
    monkeypatch.setattr(trainer_module, "restore_rng", lambda state: None)
    broken = fresh()
    train(broken, TRAIN, VAL, config(max_steps=12), tmp_path / "copy", resume=True)
    assert not torch.equal(broken.net[0].weight, ref_state["net.0.weight"])


def test_ctrl_c_finishes_the_step_checkpoints_and_resumes_exactly(tmp_path, reference):
    model = fresh()
    model.on_step = {7: lambda: os.kill(os.getpid(), signal.SIGINT)}  # a Ctrl-C inside step 7
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when started in the background
    with pytest.raises(KeyboardInterrupt):
        train(model, TRAIN, VAL, config(max_steps=12, ckpt_every=100), tmp_path)
    assert load_checkpoint(checkpoint_path(tmp_path))["step"] == 7
    assert signal.getsignal(signal.SIGINT) is before  # the caller's handler is restored
    resumed = fresh()
    train(resumed, TRAIN, VAL, config(max_steps=12, ckpt_every=100), tmp_path, resume=True)
    assert_same_state(resumed.state_dict(), reference[0])


def test_hard_interrupt_inside_a_step_keeps_the_last_checkpoint(tmp_path):
    model = fresh()
    model.on_step = {7: raise_interrupt}  # the forward of step 7 already moved BatchNorm stats
    with pytest.raises(KeyboardInterrupt):
        train(model, TRAIN, VAL, config(max_steps=12), tmp_path)
    assert load_checkpoint(checkpoint_path(tmp_path))["step"] == 4


def test_hard_interrupt_between_steps_saves_the_last_step(tmp_path, reference):
    def callback(model, step, run_dir, writer):
        raise_interrupt()

    with pytest.raises(KeyboardInterrupt):
        train(
            fresh(),
            TRAIN,
            VAL,
            config(max_steps=12, sample_every=3),
            tmp_path,
            callbacks=[callback],
        )
    assert load_checkpoint(checkpoint_path(tmp_path))["step"] == 3
    resumed = fresh()
    train(resumed, TRAIN, VAL, config(max_steps=12), tmp_path, resume=True)
    assert_same_state(resumed.state_dict(), reference[0])


def test_failed_checkpoint_write_keeps_previous_one(tmp_path, monkeypatch):
    train(fresh(), TRAIN, None, config(max_steps=4), tmp_path)
    path = checkpoint_path(tmp_path)
    before = path.read_bytes()

    def save_then_fail(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", save_then_fail)
    with pytest.raises(OSError, match="disk full"):
        train(fresh(), TRAIN, None, config(max_steps=8), tmp_path, resume=True)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert load_checkpoint(path)["step"] == 4
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temp file left


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, 143), (signal.SIGUSR1, 75)])
def test_sigterm_and_sigusr1_finish_the_step_checkpoint_and_resume_exactly(
    tmp_path, reference, signum, status
):
    model = fresh()
    model.on_step = {7: lambda: os.kill(os.getpid(), signum)}  # 3 steps after step 4's checkpoint
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
    with pytest.raises(RunStopped) as stopped:
        train(model, TRAIN, VAL, config(max_steps=12), tmp_path)
    assert (stopped.value.step, stopped.value.status) == (7, status)
    message = str(stopped.value)
    assert message.startswith(signal.Signals(signum).name) and "step 7" in message
    assert str(checkpoint_path(tmp_path)) in message and f"(exit status {status})" in message
    assert "--resume" in message and "\n" not in message
    assert model.train_calls == 7  # no step after the signal's
    assert load_checkpoint(checkpoint_path(tmp_path))["step"] == 7
    assert {s: signal.getsignal(s) for s in before} == before  # the caller's handlers are back
    resumed = fresh()
    train(resumed, TRAIN, VAL, config(max_steps=12), tmp_path, resume=True)
    assert_same_state(resumed.state_dict(), reference[0])


def test_dataloader_workers_leave_sigterm_to_the_training_process(tmp_path, reference):
    """A scheduler that signals every process of the job also signals the DataLoader workers:
    they must not die mid-batch (the run would end without its checkpoint)."""

    def sigterm_workers() -> None:
        workers = multiprocessing.active_children()
        assert workers  # the loader's worker processes
        for worker in workers:
            os.kill(worker.pid, signal.SIGTERM)

    model = fresh()  # the signal reaches the workers a step before the training process
    model.on_step = {6: sigterm_workers, 7: lambda: os.kill(os.getpid(), signal.SIGTERM)}
    with pytest.raises(RunStopped):
        train(model, TRAIN, VAL, config(max_steps=12, num_workers=1), tmp_path)
    assert load_checkpoint(checkpoint_path(tmp_path))["step"] == 7
    resumed = fresh()
    train(resumed, TRAIN, VAL, config(max_steps=12, num_workers=1), tmp_path, resume=True)
    assert_same_state(resumed.state_dict(), reference[0])


def test_a_stop_signal_while_finishing_lets_the_run_complete(tmp_path):
    def callback(model, step, run_dir, writer):
        if step == 4:  # the end of the run: a signal now changes nothing
            os.kill(os.getpid(), signal.SIGTERM)

    result = train(
        fresh(), TRAIN, None, config(max_steps=4, sample_every=100), tmp_path, callbacks=[callback]
    )
    assert result.steps == 4 and load_checkpoint(checkpoint_path(tmp_path))["step"] == 4


class FullDisk:
    """A file that takes ``room`` bytes, then fails as a full disk does (ENOSPC)."""

    def __init__(self, f, room: int) -> None:
        self.f, self.room = f, room

    def write(self, data) -> int:
        if len(data) > self.room:
            self.f.write(bytes(data[: self.room]))
            self.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


def test_full_disk_while_checkpointing_is_one_line_and_keeps_the_previous_one(
    tmp_path, monkeypatch
):
    train(fresh(width=64), TRAIN, None, config(max_steps=4), tmp_path)
    path = checkpoint_path(tmp_path)
    before = path.read_bytes()
    save = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, f: save(obj, FullDisk(f, 4096)))
    with pytest.raises(DiskFullError) as full:
        train(fresh(width=64), TRAIN, None, config(max_steps=8), tmp_path, resume=True)
    monkeypatch.undo()
    message = str(full.value)
    assert isinstance(full.value.__cause__, RuntimeError)  # torch hid the ENOSPC: it is found
    assert "unexpected pos" in str(full.value.__cause__)
    assert message.startswith(f"no space left on the device of {path} while writing it (")
    assert "(at least " in message and "\n" not in message
    assert "kB to write, 4.1 kB written when it filled up)" in message
    assert message.endswith(f"the previous {path} is unchanged")
    assert path.read_bytes() == before and load_checkpoint(path)["step"] == 4
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temp file left


def test_unreadable_last_checkpoint_resumes_from_the_newest_intact_step_file(
    tmp_path, capsys, reference
):
    train(fresh(), TRAIN, VAL, config(max_steps=8, keep_last=2), tmp_path)
    ckpt_dir = checkpoint_path(tmp_path).parent
    assert sorted(p.name for p in ckpt_dir.glob("step_*")) == [
        "step_00000004.pt",
        "step_00000008.pt",
    ]
    with open(ckpt_dir / "last.pt", "r+b") as f:  # a node died mid-copy: in place, so the
        f.truncate(1000)  # hard-linked step_00000008.pt is cut too
    capsys.readouterr()
    resumed = fresh()
    result = train(resumed, TRAIN, VAL, config(max_steps=12, keep_last=2), tmp_path, resume=True)
    err = capsys.readouterr().err
    assert f"resuming from {ckpt_dir / 'step_00000004.pt'} (step 4)" in err
    assert f"{ckpt_dir / 'last.pt'} is unreadable" in err
    assert result.steps == 12
    assert_same_state(resumed.state_dict(), reference[0])
    assert load_checkpoint(ckpt_dir / "last.pt")["step"] == 12  # written again, whole


def test_only_an_intact_best_checkpoint_is_named_with_how_to_resume_from_it(tmp_path):
    train(fresh(), TRAIN, VAL, config(max_steps=5), tmp_path)  # best.pt: step 5's val
    train(fresh(), TRAIN, None, config(max_steps=8), tmp_path, resume=True)  # no val: no best
    last, best = checkpoint_path(tmp_path), checkpoint_path(tmp_path).with_name("best.pt")
    assert load_checkpoint(best)["step"] == 5 and load_checkpoint(last)["step"] == 8
    last.write_bytes(b"half a checkpoint")
    with pytest.raises(CheckpointError) as err:
        train(fresh(), TRAIN, VAL, config(max_steps=12), tmp_path, resume=True)
    message = str(err.value)
    assert "corrupted or unreadable" in message and "\n" not in message
    assert f"only {best} (step 5) is intact" in message and f"cp {best} {last}" in message
    best.write_bytes(b"also broken")
    with pytest.raises(CheckpointError, match="corrupted or unreadable") as err:
        train(fresh(), TRAIN, VAL, config(max_steps=12), tmp_path, resume=True)
    assert "best.pt" not in str(err.value)  # nothing intact: the plain error


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, reference):
    model = fresh()
    model.nan_at = 7
    with pytest.raises(
        TrainingDiverged, match=r"step 7 \(loss is nan\).*last\.pt \(step 4\)"
    ) as err:
        train(model, TRAIN, VAL, config(max_steps=12), tmp_path / "run")
    assert "\n" not in str(err.value)
    assert "found at the check after step 8" in str(err.value)  # checks every log_every=2
    ckpt = load_checkpoint(checkpoint_path(tmp_path / "run"))
    four = fresh()
    train(four, TRAIN, VAL, config(max_steps=4), tmp_path / "four")
    assert ckpt["step"] == 4
    assert_same_state(ckpt["model"], four.state_dict())


def test_unwritable_run_dir_fails_before_any_work(tmp_path):
    (tmp_path / "a_file").write_text("not a directory")
    model = fresh()
    with pytest.raises(RunDirError, match="a_file/run is not writable"):
        train(model, TRAIN, VAL, config(max_steps=4), tmp_path / "a_file" / "run")
    assert model.train_calls == 0


def test_existing_run_is_not_overwritten(tmp_path):
    train(fresh(), TRAIN, VAL, config(max_steps=4), tmp_path)
    files = {p: p.read_bytes() for p in (checkpoint_path(tmp_path), tmp_path / "metrics.csv")}
    with pytest.raises(RunDirError, match="pass --resume or choose a new --out"):
        train(fresh(), TRAIN, VAL, config(max_steps=4), tmp_path)
    assert all(p.read_bytes() == data for p, data in files.items())


@pytest.mark.parametrize(
    ("model", "overrides", "message"),
    [
        (lambda: fresh(width=6), {}, r"model config differs \(width: 8 -> 6\)"),
        (lambda: fresh(cls=OtherTiny), {}, "holds a Tiny, not a OtherTiny"),
        (fresh, {"batch_size": 4}, r"data order differs \(batch_size was 8, now 4\)"),
        (fresh, {"seed": 1}, r"data order differs \(seed was 0, now 1\)"),
    ],
)
def test_resume_from_another_run_is_a_clear_error(tmp_path, model, overrides, message):
    train(fresh(), TRAIN, None, config(max_steps=2), tmp_path)
    with pytest.raises(CheckpointError, match=message) as err:
        train(model(), TRAIN, None, config(max_steps=4, **overrides), tmp_path, resume=True)
    assert "\n" not in str(err.value)


def test_resume_with_another_number_of_processes_is_refused(tmp_path):
    """A checkpoint of a 2-process run does not resume on 1 process: one line saying so."""
    from mvq.training.checkpoint import check_resumable

    train(fresh(), TRAIN, None, config(max_steps=2), tmp_path)
    ckpt = load_checkpoint(checkpoint_path(tmp_path))
    ckpt["sampler_state"] |= {"world_size": 2, "batch_size": 4}  # as a 2-process run writes it
    key = EpochBatchSampler(len(TRAIN), 8, seed=0).order_key()
    with pytest.raises(CheckpointError, match="written by 2 processes, this run has 1") as err:
        check_resumable(ckpt, checkpoint_path(tmp_path), fresh(), key)
    assert "\n" not in str(err.value)


def test_sync_batchnorm_converts_the_model_under_ddp(tmp_path, monkeypatch):
    """``sync_batchnorm`` makes the BatchNorm layers SyncBatchNorm in place (same parameters),
    only in a multi-process run (DDP is faked here: SyncBatchNorm needs GPUs to run)."""
    from mvq.training.distributed import DistContext

    monkeypatch.setattr(trainer_module, "DistributedDataParallel", lambda module, **kw: module)

    def start(ctx: DistContext, sync: bool) -> Tiny:
        model = fresh()
        params = list(model.parameters())
        run = trainer_module.Trainer(
            model, TRAIN, None, config(max_steps=1, sync_batchnorm=sync), tmp_path, ctx
        )
        run.start(has_checkpoint=False, logs_exist=False)
        run.close()
        assert list(model.parameters()) == params  # what the optimizer holds, unchanged
        return model

    ddp = DistContext(rank=0, world_size=2, device=torch.device("cpu"))
    assert isinstance(start(ddp, sync=True).net[1], nn.SyncBatchNorm)
    assert type(start(ddp, sync=False).net[1]) is nn.BatchNorm1d
    assert type(start(DistContext(), sync=True).net[1]) is nn.BatchNorm1d  # one process


def test_sync_batchnorm_on_cpu_processes_is_refused_before_any_work(tmp_path, monkeypatch):
    from mvq.core.errors import ConfigError

    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it, before the group is joined
    model = fresh()
    with pytest.raises(ConfigError, match="sync_batchnorm needs CUDA GPUs"):
        train(model, TRAIN, None, config(max_steps=2, sync_batchnorm=True), tmp_path / "r")
    assert not (tmp_path / "r").exists() and model.train_calls == 0


def test_resume_without_checkpoint_starts_the_run_and_says_so(tmp_path, capsys):
    result = train(fresh(), TRAIN, None, config(max_steps=4), tmp_path, resume=True)
    assert result.steps == 4 and checkpoint_path(tmp_path).is_file()
    assert "no checkpoint at" in capsys.readouterr().err


def read_rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_csv_tensorboard_and_validation_logs_survive_a_resume(tmp_path):
    model = fresh()
    model.nan_at = 7  # steps 5 and 6 are logged after the step-4 checkpoint, then replayed
    with pytest.raises(TrainingDiverged):
        train(model, TRAIN, VAL, config(max_steps=10), tmp_path)
    result = train(fresh(), TRAIN, VAL, config(max_steps=10), tmp_path, resume=True)
    header, *rows = read_rows(tmp_path / "metrics.csv")
    assert header == ["step", "split", "name", "value"]
    keys = [(int(step), split, name) for step, split, name, _ in rows]
    assert len(keys) == len(set(keys)), "a replayed step was logged twice"
    train_steps = sorted({s for s, split, name in keys if split == "train" and name == "loss"})
    assert train_steps == [2, 4, 6, 8, 10]
    val = {int(s): float(v) for s, split, name, v in rows if (split, name) == ("val", "loss")}
    assert sorted(val) == [5, 10]  # once per epoch
    assert val[10] == result.last_val_loss and result.best_val_loss == min(val.values())
    assert set(result.train_logs) == {"loss", "usage", "grad_norm", "lr"}
    assert result.items_per_second > 0 and math.isfinite(result.items_per_second)
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_callbacks_and_save_model_leave_training_unchanged(tmp_path, reference):
    calls = []

    def callback(model, step, run_dir, writer):
        calls.append((step, model.training, torch.is_grad_enabled(), run_dir))
        writer.add_scalar("cb/noise", torch.rand(()).item(), step)  # draws from the RNG

    model = fresh()
    train(
        model,
        TRAIN,
        VAL,
        config(max_steps=12, sample_every=5),
        tmp_path,
        callbacks=[callback],
        save_model=lambda m, path: m.save_pretrained(path),
    )
    assert calls == [(s, False, False, tmp_path) for s in (5, 10, 12)]
    assert_same_state(model.state_dict(), reference[0])
    assert_same_state(Tiny.from_pretrained(tmp_path / "model").state_dict(), model.state_dict())


def test_epochs_and_config_errors(tmp_path):
    assert train(fresh(), TRAIN, None, config(epochs=2), tmp_path / "ep").steps == 10
    with pytest.raises(ValueError, match="max_steps or epochs"):
        train(fresh(), TRAIN, None, config(), tmp_path / "none")
    assert not (tmp_path / "none").exists()
    with pytest.raises(ValueError, match="precision"):
        config(precision="fp8")


class TinyConv(PretrainedMixin, nn.Module):
    """Conv-BN-ReLU-Conv denoiser: the 4-D weights that ``memory_format`` lays out."""

    config_class = TinyConfig

    def __init__(self, config: TinyConfig | None = None) -> None:
        super().__init__()
        self.config = config or TinyConfig()
        w = self.config.width
        self.net = nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1, bias=False),  # a bias before BN gets only rounding noise
            nn.BatchNorm2d(w),
            nn.ReLU(),
            nn.Conv2d(w, 1, 3, padding=1),
        )
        self.layouts: list[bool] = []  # per step: is the second conv's weight channels-last?

    def loss(self, batch: tuple[torch.Tensor]):
        (x,) = batch
        if self.training:
            w = self.net[3].weight
            self.layouts.append(w.is_contiguous(memory_format=torch.channels_last))
        return ((self.net(x + 0.3 * torch.randn_like(x)) - x) ** 2).mean(), {}


IMAGES = TensorDataset(torch.randn(40, 1, 6, 6, generator=torch.Generator().manual_seed(2)))


def conv_run(tmp_path: Path, fmt: str, steps: int, resume: bool = False) -> TinyConv:
    torch.manual_seed(0)
    model = TinyConv()
    save = lambda m, path: m.save_pretrained(path)  # noqa: E731
    train(
        model,
        IMAGES,
        None,
        config(max_steps=steps, memory_format=fmt),
        tmp_path,
        resume=resume,
        save_model=save,
    )
    return model


def test_channels_last_trains_the_same_model_up_to_rounding_and_resumes_exactly(tmp_path):
    nhwc = conv_run(tmp_path / "nhwc", "channels_last", 8)
    nchw = conv_run(tmp_path / "nchw", "contiguous", 8)
    assert nhwc.layouts == [True] * 8 and nchw.layouts == [False] * 8
    for key, value in nhwc.state_dict().items():  # the same arithmetic, other summation orders
        torch.testing.assert_close(value, nchw.state_dict()[key], rtol=1e-4, atol=1e-5)
    # Back in the layout it is saved and reloaded in: a reload is the model the run returned.
    assert all(p.is_contiguous() for p in nhwc.parameters())
    assert_same_state(
        TinyConv.from_pretrained(tmp_path / "nhwc" / "model").state_dict(), nhwc.state_dict()
    )
    conv_run(tmp_path / "part", "channels_last", 4)
    resumed = conv_run(tmp_path / "part", "channels_last", 8, resume=True)
    assert_same_state(resumed.state_dict(), nhwc.state_dict())
    with pytest.raises(ConfigError, match="memory_format.*channels_last, contiguous"):
        config(memory_format="nhwc")


DDP_SCRIPT = """
import os, sys
from pathlib import Path
import torch
import torch.distributed as dist
sys.path.insert(0, {tests!r})
from test_training import Lin, make_data
from mvq.training import TrainConfig, train

out, rank = Path(sys.argv[1]), int(os.environ["RANK"])
train_set, val_set = make_data(32, 0), make_data(10, 1)

def run(name, steps, noisy, resume=False, **extra):
    torch.manual_seed(100 + rank)  # different inits: DDP must broadcast rank 0's
    model = Lin(noisy)
    cfg = TrainConfig(max_steps=steps, batch_size=8, log_every=1, ckpt_every=2, device="cpu",
                      **extra)
    return model, train(model, train_set, val_set, cfg, out / name, resume=resume)

# train() joins torchrun's group, then destroys it; 2 micro-batches per rank (DDP's no_sync)
plain, result = run("plain", 4, noisy=False, grad_accum=2)
assert not dist.is_initialized()
# A group made by the caller is used and left alone. (A file store: re-initialising on torchrun's
# TCP store in the same process can read the previous group's stale addresses.)
world = int(os.environ["WORLD_SIZE"])
dist.init_process_group("gloo", init_method=f"file://{{out}}/store", rank=rank, world_size=world)
full, _ = run("full", 6, noisy=True, ema_decay=0.5)  # returns with the EMA weights
run("part", 3, noisy=True, ema_decay=0.5)
resumed, _ = run("part", 6, noisy=True, resume=True, ema_decay=0.5)
assert dist.is_initialized()
dist.destroy_process_group()
states = {{"plain": plain.state_dict(), "full": full.state_dict(), "resumed": resumed.state_dict()}}
torch.save({{**states, "val": result.last_val_loss}}, out / f"rank{{rank}}.pt")
"""


def test_ddp_two_processes_on_gloo(tmp_path):
    r0, r1 = torchrun(DDP_SCRIPT, tmp_path)
    for name in ("plain", "full", "resumed"):
        assert_same_state(r0[name], r1[name])  # the ranks agree
    assert_same_state(r0["resumed"], r0["full"])  # exact resume under DDP, per-rank RNG
    ckpt = load_checkpoint(checkpoint_path(tmp_path / "plain"))
    assert ckpt["step"] == 4 and ckpt["sampler_state"]["world_size"] == 2
    assert len(ckpt["rng"]) == 2 and not torch.equal(
        ckpt["rng"][0]["torch"], ckpt["rng"][1]["torch"]
    )
    # Two ranks with 4 items each take the same steps as one process with the global batch of 8.
    torch.manual_seed(100)
    single = Lin()
    cfg = TrainConfig(max_steps=4, batch_size=8, log_every=1, ckpt_every=2, device="cpu")
    result = train(single, make_data(32, 0), make_data(10, 1), cfg, tmp_path / "single")
    for key, value in single.state_dict().items():
        torch.testing.assert_close(r0["plain"][key], value, rtol=1e-5, atol=1e-6)
    assert r0["val"] == pytest.approx(result.last_val_loss, rel=1e-5)


DDP_STOP_SCRIPT = """
import os, signal, sys
from pathlib import Path
import torch
import torch.distributed as dist
sys.path.insert(0, {tests!r})
from test_training import Lin, make_data
from mvq.training import RunStopped, TrainConfig, checkpoint_path, load_checkpoint, train

out, rank, world = Path(sys.argv[1]), int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
dist.init_process_group("gloo", init_method=f"file://{{out}}/store", rank=rank, world_size=world)


def signalled_at(loss, step):
    \"\"\"``loss`` that sends this process SIGTERM inside training step ``step``'s forward.\"\"\"
    calls = []

    def wrapped(batch):
        if torch.is_grad_enabled():
            calls.append(1)
            if len(calls) == step:
                os.kill(os.getpid(), signal.SIGTERM)
        return loss(batch)

    return wrapped


def run(name, signal_at=None, resume=False):
    torch.manual_seed(100 + rank)
    model = Lin(noisy=True)
    if signal_at is not None:
        model.loss = signalled_at(model.loss, signal_at)
    cfg = TrainConfig(max_steps=6, batch_size=8, log_every=4, ckpt_every=2, device="cpu")
    train(model, make_data(32, 0), make_data(10, 1), cfg, out / name, resume=resume)
    return model.state_dict()


full = run("full")
stopped = None
try:
    run("cut", signal_at=3 if rank == 1 else None)  # rank 1 alone is signalled
except RunStopped as stop:
    stopped = [stop.step, stop.status, load_checkpoint(checkpoint_path(out / "cut"))["step"]]
resumed = run("cut", resume=True)
dist.destroy_process_group()
torch.save({{"full": full, "resumed": resumed, "stopped": stopped}}, out / f"rank{{rank}}.pt")
"""


def test_sigterm_to_one_ddp_rank_stops_both_after_the_same_step_and_resumes_exactly(tmp_path):
    r0, r1 = torchrun(DDP_STOP_SCRIPT, tmp_path)
    # step 3 on both ranks, though only rank 1 was signalled; rank 0 wrote that step
    assert r0["stopped"] == r1["stopped"] == [3, 143, 3]
    for r in (r0, r1):
        assert_same_state(r["resumed"], r["full"])
    assert_same_state(r0["resumed"], r1["resumed"])


def test_bf16_autocast_trains_and_moves_dict_batches(tmp_path):
    computed = []  # dtype of a Linear inside each loss call: bf16 only if autocast is on

    class DictTiny(Tiny):
        def loss(self, batch: dict[str, torch.Tensor]):
            assert batch["x"].dtype == torch.float32  # the batch arrives unchanged
            computed.append(self.net[0](batch["x"]).dtype)
            return super().loss((batch["x"], batch["y"]))

    class DictData(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(TRAIN)

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            x, y = TRAIN[i]
            return {"x": x, "y": y}

    torch.manual_seed(0)
    model = DictTiny()
    result = train(model, DictData(), DictData(), config(max_steps=3, precision="bf16"), tmp_path)
    assert result.steps == 3 and math.isfinite(result.last_val_loss)
    assert len(computed) > 3 and set(computed) == {torch.bfloat16}  # train and val steps
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())
