"""``mvq eval`` end to end on a tiny trained tokenizer and prior, and its one-line errors.

A tiny fd_fmnist classifier (trained in seconds on a subset, cached in a temporary folder)
stands in for the real one; no weights for FID/LPIPS and no network, as on this machine.
"""

import csv
import json
import math
import re
import shlex
from pathlib import Path

import pytest
import torch
from conftest import expect_error
from torch.utils.data import Subset
from torchvision.utils import save_image

from mvq.cli import main
from mvq.eval.evaluate import load_fd_classifier
from mvq.metrics import ClassifierConfig, load_classifier
from mvq.metrics import weights as weights_module

FMNIST = Path("/usr/share/datasets/fashion-mnist")
pytestmark = pytest.mark.skipif(not FMNIST.is_dir(), reason="Fashion-MNIST is not installed")
README = Path(__file__).resolve().parents[1] / "README.md"
TINY = {"channels": 16, "res_channels": 8}


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory):
    config = ClassifierConfig(width=4, feature_dim=16, epochs=1, train_subset=2048)
    return load_classifier(config, cache=tmp_path_factory.mktemp("classifier"))


@pytest.fixture(autouse=True)
def offline(tiny_classifier, tmp_path, monkeypatch):
    """No Inception/VGG weights, no network, the tiny classifier."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv("MVQ_WEIGHTS_DIR", raising=False)
    monkeypatch.setenv("MVQ_OFFLINE", "1")
    monkeypatch.setattr(weights_module, "_download", lambda *a: pytest.fail("network"))
    monkeypatch.setattr("mvq.eval.evaluate.load_fd_classifier", lambda *a: tiny_classifier)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """A tiny MVQVAE trained 20 steps, its tokens, a tiny transformer prior trained 20 steps,
    and an untrained VQ-VAE-2 (another tokenizer)."""
    from mvq.core.token_files import tokenizer_identity
    from mvq.data import build_dataset
    from mvq.tokenizers import create_tokenizer
    from mvq.tokenizers.apply import encode_dataset
    from mvq.training.prior_job import train_prior
    from mvq.training.runconfig import RunConfig
    from mvq.training.tokenizer_job import train_tokenizer

    root = tmp_path_factory.mktemp("models")
    data = {"name": "fashion_mnist"}
    train = {"max_steps": 20, "log_every": 10, "sample_every": 20, "val_batches": 1}
    cfg = RunConfig("mvqvae_fmnist_s4_k16", TINY | {"num_hypotheses": 8}, data, train)
    model, _ = train_tokenizer(cfg, root / "tok")
    tok = root / "tok" / "model"
    splits = {
        s: Subset(build_dataset("fashion_mnist", None, s), range(256)) for s in ("train", "val")
    }
    encode_dataset(model, splits, root / "tokens", tokenizer_identity(model, tok), data, 10)
    sizes = dict(
        primary_layers=1,
        primary_heads=2,
        primary_dim=16,
        secondary_layers=1,
        secondary_heads=2,
        secondary_dim=16,
    )
    prior_cfg = RunConfig("transformer_1p1", sizes, {}, {"max_steps": 20, "batch_size": 16})
    train_prior(prior_cfg, root / "tokens", root / "prior")
    torch.manual_seed(1)
    create_tokenizer("vqvae2_fmnist_s4_k16", **TINY).save_pretrained(root / "other")
    return {"tok": tok, "prior": root / "prior" / "model", "other": root / "other"}


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_reconstruction_metrics_end_to_end(models, tmp_path, capsys) -> None:
    out = tmp_path / "eval"
    argv = [
        "eval",
        "--tokenizer",
        models["tok"],
        "--data",
        "fashion_mnist",
        "--split",
        "test",
        "-n",
        300,
        "--out",
        out,
    ]
    code, printed, _ = run(argv, capsys)
    assert code == 0
    result = json.loads((out / "eval.json").read_text())
    for name in (
        "mse",
        "psnr",
        "ssim",
        "fd_fmnist",
        "fd_fmnist_floor",
        "usage_primary",
        "usage_secondary",
        "perplexity_primary",
        "perplexity_secondary",
        "random_mask_mse",
        "random_mask_ssim",
        "random_mask_fd_fmnist",
    ):
        assert math.isfinite(result[name]), name
    assert result["bits_per_image"] == 31  # 4 log2(8) + log2(8) + 16 mask bits
    assert 0 < result["usage_primary"] <= 1 and 1 <= result["perplexity_primary"] <= 8
    assert -1 <= result["ssim"] <= 1 and result["psnr"] > 0
    assert 10 * math.log10(4 / result["mse"]) <= result["psnr"] + 1e-6  # Jensen: mean of PSNRs
    assert set(result["unavailable"]) == {"lpips", "fid", "random_mask_lpips", "random_mask_fid"}
    assert "weights-inception-2015-12-05-6726825d.pth" in result["unavailable"]["fid"]
    assert "vgg16-397923af.pth" in result["unavailable"]["lpips"]
    meta = result["meta"]
    assert meta["split"] == "val" and meta["n"] == 300 and meta["device"] == "cpu"
    assert meta["fd_fmnist_classifier"]["feature_layer"].startswith("fc1")
    assert "| fd_fmnist |" in printed and "| fid | unavailable:" in printed
    assert run(argv, capsys)[0] == 0  # a second run appends a row
    rows = list(csv.DictReader((out / "eval.csv").open()))
    assert len(rows) == 2 and float(rows[1]["mse"]) == pytest.approx(result["mse"])


def test_metrics_by_name_and_vqvae2_has_no_random_mask(models, tmp_path, capsys) -> None:
    out = tmp_path / "eval"
    argv = ["eval", "--tokenizer", models["other"], "-n", 100, "--out", out]
    assert run([*argv, "--metrics", "mse,usage,fd_fmnist"], capsys)[0] == 0
    result = json.loads((out / "eval.json").read_text())
    metrics = {k for k in result if k not in ("meta", "unavailable")}
    assert metrics == {"mse", "usage_primary", "usage_secondary", "fd_fmnist", "fd_fmnist_floor"}
    assert result["unavailable"] == {}
    assert run(argv, capsys)[0] == 0  # by default: random_mask listed as not applicable
    assert "no mask" in json.loads((out / "eval.json").read_text())["unavailable"]["random_mask"]
    expect_error(
        capsys, [*argv[:-1], tmp_path / "e", "--metrics", "random_mask"], "no mask", tmp_path / "e"
    )


def test_sample_metrics_end_to_end(models, tmp_path, capsys) -> None:
    out = tmp_path / "eval"
    argv = [
        "eval",
        "--tokenizer",
        models["tok"],
        "--prior",
        models["prior"],
        "-n",
        200,
        "--out",
        out,
    ]
    assert run(argv, capsys)[0] == 0
    result = json.loads((out / "eval.json").read_text())
    assert result["sample_fd_fmnist"] > 0 and 0 <= result["sample_f8"] <= 1
    assert 0 <= result["sample_f1_8"] <= 1
    nats = result["prior_nll_nats_per_token"]
    assert 0 < nats < math.log(8) * 1.5  # near or below uniform over 8 codes after 20 steps
    assert result["prior_bits_per_image"] == pytest.approx(5 * nats / math.log(2), rel=1e-6)
    assert {"sample_fid", "sample_f8_inception", "sample_f1_8_inception"} <= set(
        result["unavailable"]
    )
    assert result["meta"]["n"] == 200 and result["meta"]["reference_images"] == 200


def write_pngs(images: torch.Tensor, folder: Path) -> Path:
    folder.mkdir(parents=True)
    for i, img in enumerate(images):
        save_image(img, folder / f"{i:05d}.png")  # gray tensors are written as equal RGB
    return folder


def test_image_folder_real_images_beat_noise(tmp_path, capsys) -> None:
    from mvq.data import build_dataset

    real = build_dataset("fashion_mnist", None, "train").images[:300].float() / 255
    noise = torch.rand(300, 1, 28, 28)
    results = {}
    for name, images in (("real", real), ("noise", noise)):
        folder = write_pngs(images, tmp_path / name)
        assert run(["eval", "--images", folder, "--out", tmp_path / f"e_{name}"], capsys)[0] == 0
        results[name] = json.loads((tmp_path / f"e_{name}" / "eval.json").read_text())
    assert results["real"]["sample_fd_fmnist"] < 0.2 * results["noise"]["sample_fd_fmnist"]
    assert results["real"]["sample_f8"] > results["noise"]["sample_f8"]


def test_the_shipped_classifier_by_default_another_one_named(
    tiny_classifier, tmp_path, capsys, monkeypatch
) -> None:
    """Default: mvq's shipped classifier, named in eval.json and the table; the study's copy of
    it gives the same numbers; another classifier is named as not the shipped one."""
    from mvq.data import build_dataset
    from mvq.metrics.fd_fmnist import SHIPPED_KEY

    monkeypatch.setattr("mvq.eval.evaluate.load_fd_classifier", load_fd_classifier)  # the real one
    folder = write_pngs(
        build_dataset("fashion_mnist", None, "val").images[:100] / 255, tmp_path / "images"
    )
    study = Path(__file__).resolve().parents[1] / "results/fmnist/cache/fd_fmnist"
    results, printed = {}, {}
    for name, spec in (
        ("default", None),
        ("study", study / "ea6ed89205813a6a.json"),
        ("tiny", tiny_classifier.meta["source"]),
    ):
        argv = ["eval", "--images", folder, "--metrics", "fd_fmnist", "--out", tmp_path / name]
        code, printed[name], _ = run(argv + (["--fd-classifier", spec] if spec else []), capsys)
        assert code == 0
        results[name] = json.loads((tmp_path / name / "eval.json").read_text())
    used = results["default"]["meta"]["fd_fmnist_classifier"]
    assert used["id"] == SHIPPED_KEY and used["shipped"] and used["accuracy"] == 0.9177
    line = f"fd_fmnist classifier: mvq's shipped {SHIPPED_KEY} (test accuracy 91.77%)"
    assert line in printed["default"]
    assert results["study"]["sample_fd_fmnist"] == results["default"]["sample_fd_fmnist"]
    assert results["study"]["meta"]["fd_fmnist_classifier"]["id"] == SHIPPED_KEY
    other = results["tiny"]["meta"]["fd_fmnist_classifier"]
    assert not other["shipped"] and other["id"] == tiny_classifier.meta["key"] != SHIPPED_KEY
    assert f"NOT mvq's shipped {SHIPPED_KEY}" in printed["tiny"]
    out = tmp_path / "e"
    expect_error(
        capsys,
        ["eval", "--images", folder, "--fd-classifier", tmp_path / "none.json", "--out", out],
        "no such classifier record",
        out,
    )
    (tmp_path / "broken.json").write_text("{}")  # a record without weights beside it
    expect_error(
        capsys,
        ["eval", "--images", folder, "--fd-classifier", tmp_path / "broken.json", "--out", out],
        "broken.safetensors not found",
        out,
    )


def test_bad_inputs_are_one_line_and_write_nothing(models, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    big = write_pngs(torch.rand(3, 1, 32, 32), tmp_path / "big")
    expect_error(capsys, ["eval", "--images", big, "--out", out], "32x32", out)
    colour = write_pngs(torch.rand(3, 3, 28, 28), tmp_path / "colour")
    expect_error(capsys, ["eval", "--images", colour, "--out", out], "colour image", out)
    (tmp_path / "empty").mkdir()
    expect_error(capsys, ["eval", "--images", tmp_path / "empty", "--out", out], "no images", out)
    argv = ["eval", "--tokenizer", models["other"], "--prior", models["prior"], "--out", out]
    expect_error(capsys, argv, "trained on tokens of another tokenizer", out)
    expect_error(
        capsys,
        ["eval", "--tokenizer", models["tok"], "--metrics", "fdi", "--out", out],
        "unknown metric 'fdi' (did you mean 'fid'?)",
        out,
    )
    expect_error(
        capsys,
        ["eval", "--tokenizer", models["tok"], "--metrics", "fid", "--out", out],
        "weights-inception-2015-12-05-6726825d.pth",
        out,
    )
    argv = ["eval", "--tokenizer", models["tok"], "--metrics", "prior_nll", "--out", out]
    expect_error(capsys, argv, "does not apply", out)
    expect_error(
        capsys, ["eval", "--tokenizer", models["tok"], "--data", "cifar10", "--out", out], "", out
    )


def readme_eval_commands() -> list[list[str]]:
    block = re.search(r"## Evaluate.*?```bash\n(.*?)```", README.read_text(), flags=re.S)
    assert block, "README has an Evaluate section with a bash block"
    return [
        shlex.split(line) for line in block.group(1).splitlines() if line.startswith("mvq eval")
    ]


def test_readme_eval_commands_run(models, tmp_path, capsys, monkeypatch) -> None:
    """The README's three `mvq eval` forms, with its paths pointed at the tiny models."""
    from mvq.data import build_dataset

    commands = readme_eval_commands()
    assert len(commands) >= 3
    images = build_dataset("fashion_mnist", None, "train").images[:120].float() / 255
    write_pngs(images, tmp_path / "runs" / "samples")
    paths = {"runs/mvq_s4/model": str(models["tok"]), "runs/prior/model": str(models["prior"])}
    monkeypatch.chdir(tmp_path)
    for argv in commands:
        argv = [paths.get(a, a) for a in argv[1:]]
        if "-n" in argv:
            argv[argv.index("-n") + 1] = "150"  # fewer samples than the README's 10,000
        elif "--images" not in argv:
            argv += ["-n", "150"]
        assert run(argv, capsys)[0] == 0, argv
        out = Path(argv[argv.index("--out") + 1])
        assert (out / "eval.json").is_file() and (out / "eval.csv").is_file()


def test_the_metric_table_is_consistent_with_the_forms_groups() -> None:
    """Every metric's group is one its forms take; every group a form takes has a metric of
    that form (``random_mask`` through the random-mask copies); names are unique."""
    from mvq.eval.metrics_table import FORM_GROUPS, METRICS, group_of, parse_metrics

    assert len({m.name for m in METRICS}) == len(METRICS)
    for m in METRICS:
        for form in m.forms:
            assert m.group in FORM_GROUPS[form], (m.name, form)
        assert group_of(m.name) == m.group
    for form, groups in FORM_GROUPS.items():
        have = {m.group for m in METRICS if form in m.forms}
        have |= {"random_mask" for m in METRICS if form in m.forms and m.random_mask}
        assert set(groups) == have, form
    assert parse_metrics("random_mask_fid,usage_primary", "reconstruction") == (
        "fid",
        "random_mask",
        "usage",
    )
    assert parse_metrics("prd", "images") == ("f_scores",)


def test_pixel_metrics_ssim_is_torchmetrics_and_leaves_onednn_on() -> None:
    """SSIM runs its Gaussian filter on ATen's convolutions (faster on a CPU): same values as
    torchmetrics on oneDNN's, and oneDNN is on again after the block."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    from mvq.eval.forms import pixel_metrics

    g = torch.Generator().manual_seed(0)
    target = torch.rand(40, 1, 28, 28, generator=g) * 2 - 1
    recon = (target + 0.2 * torch.randn(target.shape, generator=g)).clamp(-1, 1)
    before = torch.backends.mkldnn.enabled
    got = pixel_metrics(recon, target, None, batch_size=16)
    assert torch.backends.mkldnn.enabled == before
    want = structural_similarity_index_measure(
        (recon + 1) / 2, (target + 1) / 2, data_range=1.0, reduction="none"
    )
    assert got["ssim"] == pytest.approx(float(want.mean()), abs=1e-6)
    assert 0.2 < got["ssim"] < 0.95  # noisy copies: neither identical nor unrelated
