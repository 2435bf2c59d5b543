"""GAN tokenizers (VQGAN, MVQGAN, FSQGAN) and their training: the adaptive weight through the
decoder, detached fakes, disc_start, exact resume of both optimizers and the discriminator,
LPIPS weights from a file, the offline message, DDP on 2 gloo processes, save/load."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.error import URLError

import pytest
import torch
from conftest import torchrun
from safetensors.torch import load_file
from torch.utils.data import TensorDataset

from mvq.cli import main
from mvq.core.tokens import Tokens
from mvq.losses import perceptual as perceptual_module
from mvq.losses.perceptual import VGG16_FILE, VGG16_URL, WeightsUnavailable, build_lpips
from mvq.tokenizers import MVQGAN, MVQVAE, VQGAN, create_tokenizer, load_tokenizer
from mvq.training import TrainConfig, checkpoint_path, load_checkpoint, train

TINY = dict(channels=8, res_channels=4, disc_channels=8, disc_layers=2, perceptual="none")


def gan(name: str = "mvqgan_fmnist_s4_k16", seed: int = 0, **overrides) -> MVQGAN:
    torch.manual_seed(seed)
    extra = {"num_hypotheses": 8} if name.startswith("mvqgan") else {}
    return create_tokenizer(name, **(TINY | extra | overrides))


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed)) * 2 - 1


DATA = TensorDataset(images(32), torch.zeros(32, dtype=torch.long))  # batch 8: 4 per epoch


def config(**overrides) -> TrainConfig:
    base = dict(batch_size=8, log_every=1, ckpt_every=3, sample_every=100, device="cpu")
    return TrainConfig(**(base | overrides))


def test_adaptive_weight_is_the_ratio_of_gradient_norms_on_the_decoders_last_layer() -> None:
    model = gan("vqgan_fmnist_s4_k16", disc_start=0)  # VQ: the same forward twice
    assert isinstance(model, VQGAN)
    x = images(4)
    loss, logs = model.loss((x, None), step=0)
    last = model.decoder.up[-1].weight  # the ConvTranspose2d onto the image
    assert model.last_layer is last and model.decoder.up[-1].out_channels == 1
    recon, q = model.autoencode(x)
    nll, adv = (x - recon).abs().mean(), -model.gan_loss.discriminator(recon).mean()
    (g_nll,) = torch.autograd.grad(nll, last, retain_graph=True)
    (g_adv,) = torch.autograd.grad(adv, last)
    expected = 0.8 * g_nll.norm() / (g_adv.norm() + 1e-4)
    torch.testing.assert_close(logs["d_weight"], expected)
    torch.testing.assert_close(loss.detach(), nll.detach() + q.loss.detach() + expected * adv)


def test_discriminator_sees_detached_fakes_and_needs_the_generator_pass() -> None:
    model = gan(disc_start=0)
    x = images(4)
    with pytest.raises(RuntimeError, match="generator's pass first"):
        model.loss((x, None), 0, "discriminator")
    model.loss((x, None), 0, "model")
    d_loss, logs = model.loss((x, None), 0, "discriminator")
    d_loss.backward()
    assert set(logs) == {"d_loss", "logits_real", "logits_fake"}
    generator, disc = model.optimizer_groups().values()
    assert all(p.grad is None for p in generator)  # no gradient reaches the tokenizer
    assert all(p.grad is not None for p in disc)
    assert {id(p) for p in generator} | {id(p) for p in disc} == {id(p) for p in model.parameters()}


def test_no_adversarial_gradient_before_disc_start(tmp_path) -> None:
    model = gan(disc_start=3)
    start = {k: v.clone() for k, v in model.gan_loss.discriminator.state_dict().items()}
    runs = []
    model.gan_loss.discriminator.register_forward_hook(lambda *a: runs.append(1))
    result = train(model, DATA, None, config(max_steps=3), tmp_path / "a")
    assert not runs and "g_loss" not in result.train_logs  # steps 0-2: no discriminator at all
    for key, value in model.gan_loss.discriminator.state_dict().items():
        assert torch.equal(value, start[key]), key  # zero-gradient Adam steps leave it
    train(model, DATA, None, config(max_steps=4), tmp_path / "a", resume=True)  # step 3
    assert runs  # from disc_start on, the discriminator runs and learns
    assert not torch.equal(model.gan_loss.discriminator.net[0].weight, start["net.0.weight"])


def test_resume_restores_both_optimizers_and_the_discriminator_bit_exactly(
    tmp_path, device
) -> None:
    """MVQGAN (its masks from the device's RNG), both optimizers and the discriminator: a run
    resumed from step 3's checkpoint ends bit-equal to an uninterrupted one, on the CPU and on
    CUDA (deterministic algorithms)."""
    on = {"device": str(device)}
    full = gan(disc_start=2)
    train(full, DATA, DATA, config(max_steps=7, **on), tmp_path / "full")  # crosses an epoch end
    part = gan(disc_start=2)
    train(part, DATA, DATA, config(max_steps=4, **on), tmp_path / "part")  # checkpoint at step 3
    ckpt = load_checkpoint(checkpoint_path(tmp_path / "part"))
    assert set(ckpt["optimizers"]) == {"model", "discriminator"}
    assert any(k.startswith("gan_loss.discriminator.") for k in ckpt["model"])
    resumed = gan(seed=1, disc_start=2)  # other initial weights: all must come from the file
    train(resumed, DATA, DATA, config(max_steps=7, **on), tmp_path / "part", resume=True)
    for key, value in full.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    a, b = (load_checkpoint(checkpoint_path(tmp_path / r)) for r in ("full", "part"))
    for name in ("model", "discriminator"):
        for i, state in a["optimizers"][name]["state"].items():
            for key, value in state.items():
                assert torch.equal(value, b["optimizers"][name]["state"][i][key]), (name, key)


def test_gan_step_with_lpips_on_the_device(device) -> None:
    """VQGAN's objective on the device with LPIPS (a random VGG backbone: no weights needed):
    L1 + LPIPS, the hinge GAN term with the adaptive weight, then the discriminator's hinge
    loss, each equal to its parts recomputed by hand; on CUDA each also equals the CPU's
    (5e-4 relative: cuDNN's and the CPU's convolutions sum in other orders)."""
    results = {}
    for where in dict.fromkeys([device, torch.device("cpu")]):
        model = gan("vqgan_fmnist_s4_k16", perceptual="lpips", disc_start=0)
        torch.manual_seed(3)  # the random backbone's weights
        model.gan_loss.set_perceptual(build_lpips(random_backbone=True))
        model.to(where).train()
        x = images(4).to(where)
        loss, logs = model.loss((x, None), step=0)
        recon, q = model.autoencode(x)  # VQ: the same forward again
        net = model.gan_loss.perceptual_network(where)
        lpips = net(x.expand(-1, 3, -1, -1), recon.expand(-1, 3, -1, -1)).mean()
        l1 = (x - recon).abs().mean()
        assert logs["lpips"] > 0 and torch.isclose(logs["nll"], l1 + lpips, rtol=1e-5)
        g_loss = -model.gan_loss.discriminator(recon).mean()
        expected = l1 + lpips + q.loss + logs["d_weight"] * g_loss
        assert logs["d_weight"] > 0 and torch.isclose(loss, expected, rtol=1e-5)
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.optimizer_groups()["model"])
        d_loss, d_logs = model.loss((x, None), step=0, name="discriminator")
        real, fake = (model.gan_loss.discriminator(t).mean() for t in (x, recon.detach()))
        assert torch.isclose(d_logs["logits_real"], real) and d_loss > 0
        results[where.type] = torch.stack([loss, d_loss, logs["lpips"], logs["d_weight"]])
    torch.testing.assert_close(results[device.type].cpu(), results["cpu"], rtol=5e-4, atol=1e-6)


def test_gan_runs_refuse_fp16_grad_accum_and_compile(tmp_path) -> None:
    refused = {
        "precision=fp16": {"precision": "fp16"},
        "grad_accum=2": {"grad_accum": 2},
        "compile": {"compile": True},
    }
    for what, overrides in refused.items():
        with pytest.raises(ValueError, match=f"train.{what}.*2 optimizers") as err:
            train(gan(), DATA, None, config(max_steps=1, **overrides), tmp_path / "r")
        assert "\n" not in str(err.value)
    assert not (tmp_path / "r").exists()


def test_saved_gan_tokenizer_is_the_generator_and_decodes_the_same(tmp_path) -> None:
    model = gan()
    x = images(4)
    model(x)  # move BatchNorm statistics
    model.eval()
    model.save_pretrained(tmp_path / "m")
    saved = load_file(str(tmp_path / "m" / "model.safetensors"))
    assert saved and not any(k.startswith("gan_loss.") for k in saved)  # no discriminator
    generator = sum(p.numel() for p in model.optimizer_groups()["model"])
    assert f"| parameters | {generator:,} |" in (tmp_path / "m" / "README.md").read_text()
    loaded = load_tokenizer(tmp_path / "m")
    assert type(loaded) is MVQGAN and loaded.config == model.config
    torch.manual_seed(3)
    tokens = model.encode(x)
    tokens = Tokens(tokens.indices, tokens.secondary, tokens.mask)
    assert torch.equal(model.decode(tokens), loaded.decode(tokens))
    plain = MVQVAE(MVQVAE.config_class(channels=8, res_channels=4))  # same networks, same tokens
    assert loaded.token_layout == plain.token_layout
    assert loaded.bits_per_image == plain.bits_per_image


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory) -> Path:
    """A torchvision-format VGG16 file with random weights, under the expected name."""
    lp = build_lpips(random_backbone=True)
    state = {
        f"features.{k.split('.')[1]}.{k.split('.')[2]}": v for k, v in lp.net.state_dict().items()
    }
    path = tmp_path_factory.mktemp("weights") / VGG16_FILE
    torch.save(state, path)
    return path


def test_lpips_loads_the_backbone_from_the_hub_cache_or_the_env_dir(
    vgg_file, tmp_path, monkeypatch
):
    monkeypatch.delenv("MVQ_WEIGHTS_DIR", raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    os.link(vgg_file, tmp_path / "hub" / "checkpoints" / VGG16_FILE)
    model = gan("vqgan_fmnist_s4_k16", perceptual="lpips", disc_start=0)
    x = images(2)
    loss, logs = model.loss((x, None), step=0)  # builds LPIPS from the hub cache's file
    net = model.gan_loss.perceptual
    conv14 = getattr(net.net.slice3, "14")  # torchvision's features.14 lives in lpips' slice3
    assert torch.equal(conv14.weight, torch.load(vgg_file, weights_only=True)["features.14.weight"])
    assert not any(p.requires_grad for p in net.parameters()) and not net.training
    expected = net(x.expand(-1, 3, -1, -1), model(x).recon.expand(-1, 3, -1, -1)).mean()
    assert "lpips" in logs and torch.isclose(logs["lpips"], expected, rtol=1e-4)
    assert torch.isclose(logs["nll"], logs["l1"] + logs["lpips"])
    assert not any("perceptual" in k or "lpips" in k for k in model.state_dict())
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty"))
    monkeypatch.setenv("MVQ_WEIGHTS_DIR", str(vgg_file.parent))
    assert perceptual_module.resolve_vgg16() == vgg_file  # the env dir comes before the cache


def test_offline_without_the_file_is_one_line_naming_it(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.delenv("MVQ_WEIGHTS_DIR", raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def no_network(*args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(WeightsUnavailable) as err:
        build_lpips()
    message = str(err.value)
    assert "\n" not in message and VGG16_FILE in message and VGG16_URL in message
    assert str(tmp_path / "hub" / "checkpoints") in message and "perceptual=none" in message
    with pytest.raises(WeightsUnavailable, match="do not exist"):
        build_lpips(tmp_path / "nope.pth")
    cfg = tmp_path / "gan.yaml"
    cfg.write_text("model: vqgan_fmnist_s4_k16\ndata: {name: fashion_mnist}\n")
    run = tmp_path / "run"
    capsys.readouterr()
    assert main(["train", "--config", str(cfg), "--out", str(run), "--max-steps", "2"]) == 2
    err_text = capsys.readouterr().err.strip()
    assert err_text.startswith(f"mvq: error: {VGG16_FILE}") and "\n" not in err_text
    assert not run.exists()  # failed before any run directory was written


DDP_SCRIPT = """
import os, sys
from pathlib import Path
import torch
import torch.distributed as dist
sys.path.insert(0, {tests!r})
from test_gan import DATA, config, gan
from mvq.training import train

out, rank = Path(sys.argv[1]), int(os.environ["RANK"])
# One group made here for all runs (a file store: re-initialising on torchrun's TCP store in the
# same process can read the previous group's stale addresses; see test_training.py)
world = int(os.environ["WORLD_SIZE"])
dist.init_process_group("gloo", init_method=f"file://{{out}}/store", rank=rank, world_size=world)

def run(name, steps, resume=False):
    model = gan(seed=100 + rank, disc_start=1)  # different inits: DDP broadcasts rank 0's
    return model, train(model, DATA, None, config(max_steps=steps), out / name, resume=resume)

full, result = run("full", 4)
run("part", 2)
resumed, _ = run("part", 4, resume=True)
dist.destroy_process_group()
torch.save({{"full": full.state_dict(), "resumed": resumed.state_dict(),
            "logs": result.train_logs}}, out / f"rank{{rank}}.pt")
"""


def test_ddp_two_processes_on_gloo(tmp_path) -> None:
    r0, r1 = torchrun(DDP_SCRIPT, tmp_path)
    for name in ("full", "resumed"):
        assert r0[name].keys() == r1[name].keys()
        for key in r0[name]:  # generator and discriminator weights agree across ranks; BatchNorm
            if "running_" not in key:  # statistics hold each rank's last batch (rank 0's saved)
                assert torch.equal(r0[name][key], r1[name][key]), (name, key)
    for r in (r0, r1):
        for key, value in r["full"].items():  # exact resume under DDP, buffers included
            assert torch.equal(value, r["resumed"][key]), key
    logs = r0["logs"]  # the adversarial term ran (autograd.grad under DDP) and was finite
    assert logs["d_weight"] > 0 and torch.isfinite(torch.tensor(logs["discriminator_loss"]))


def test_bf16_and_ema_gan_run_trains_with_finite_weights(tmp_path) -> None:
    model = gan(disc_start=1)
    cfg = config(max_steps=2, precision="bf16", ema_decay=0.5)
    result = train(model, DATA, DATA, cfg, tmp_path, save_model=lambda m, p: m.save_pretrained(p))
    assert result.steps == 2 and "d_weight" in result.train_logs
    assert torch.isfinite(torch.tensor(result.last_val_loss))
    assert type(load_tokenizer(tmp_path / "model")) is MVQGAN
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("path", sorted(Path(__file__).parents[1].glob("configs/recipes/*.yaml")))
def test_recipes_build_their_gan_tokenizer(path: Path) -> None:
    from mvq.training.runconfig import load_run_config
    from mvq.training.tokenizer_job import build_tokenizer, build_train_config

    cfg = load_run_config(path)
    model = build_tokenizer(cfg)
    assert isinstance(model, MVQGAN) and build_train_config(cfg).betas == (0.5, 0.9)
    assert model.config.perceptual == ("none" if "cpu" in path.name else "lpips")
