"""Tokens -> prior -> samples: ``mvq encode``, ``mvq train-prior``, ``mvq sample`` end to end."""

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from torch.utils.data import Dataset

from mvq.cli import main
from mvq.core.token_files import TokenDataset, read_token_meta, tokenizer_identity
from mvq.tokenizers import create_tokenizer
from mvq.tokenizers.apply import encode_dataset

TINY = dict(channels=16, res_channels=8)


class Images(Dataset):
    """A few random 28x28 images with labels 0..9, the (image, label) item format."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.rand(n, 1, 28, 28, generator=g) * 2 - 1
        self.y = torch.arange(n) % 10

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], int(self.y[i])


def make_tokens(tmp_path: Path, arch: str = "mvqvae") -> tuple[Path, Path]:
    """A saved tiny tokenizer and the token directory of 64 + 32 images."""
    torch.manual_seed(0)
    model = create_tokenizer(f"{arch}_fmnist_s4_k16", **TINY)
    model.save_pretrained(tmp_path / f"{arch}_tok")
    identity = tokenizer_identity(model, tmp_path / f"{arch}_tok")
    splits = {"train": Images(64, 0), "val": Images(32, 1)}
    encode_dataset(model, splits, tmp_path / f"{arch}_tokens", identity, {"name": "random"}, 10)
    return tmp_path / f"{arch}_tok", tmp_path / f"{arch}_tokens"


def prior_config(tmp_path: Path, name: str, **model_config) -> Path:
    sizes = {
        "transformer_1p1": dict(
            primary_layers=1,
            primary_heads=2,
            primary_dim=16,
            secondary_layers=1,
            secondary_heads=2,
            secondary_dim=16,
        ),
        "maskgit_small": dict(layers=1, heads=2, dim=16),
        "pixelcnn_small": dict(dim=16, layers=2),
    }[name]
    cfg = {
        "model": name,
        "model_config": sizes | model_config,
        "train": {"batch_size": 16, "log_every": 2, "val_every": 4},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_token_directory_round_trip(tmp_path) -> None:
    tok, tokens = make_tokens(tmp_path)
    meta = read_token_meta(tokens)
    assert meta["splits"] == {"train": 64, "val": 32}
    assert meta["layout"]["primary_vocab"] == 8 and meta["layout"]["mask_bits"] == 16
    ds = TokenDataset(tokens, "train")
    item = ds[3]
    assert item["primary"].shape == (2, 2) and item["secondary"].shape == (1, 1)
    assert item["primary"].dtype == torch.int64 and int(item["label"]) == 3
    from mvq.tokenizers import load_tokenizer

    assert meta["tokenizer"]["sha256"] == tokenizer_identity(load_tokenizer(tok), tok)["sha256"]


@pytest.mark.parametrize("prior", ["transformer_1p1", "maskgit_small", "pixelcnn_small"])
def test_encode_train_prior_sample(prior: str, tmp_path, capsys) -> None:
    tok, tokens = make_tokens(tmp_path)
    run = tmp_path / "prior"
    argv = [
        "train-prior",
        "--tokens",
        str(tokens),
        "--config",
        str(prior_config(tmp_path, prior)),
        "--out",
        str(run),
        "--max-steps",
        "8",
    ]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 8
    # 8 codes per stream: after 8 steps every prior is below the uniform ln 8 = 2.08 (1.79-1.84)
    assert 0 < summary["val_nll_nats_per_token"] < math.log(8)
    bits = summary["nll"] * 5 / math.log(2)  # 4 + 1 tokens, nats/token -> bits/image
    assert summary["bits_per_image"] == pytest.approx(bits, rel=1e-3)  # both rounded to 4 places
    out = tmp_path / "samples"
    argv = [
        "sample",
        "--tokenizer",
        str(tok),
        "--prior",
        str(run / "model"),
        "-n",
        "5",
        "--out",
        str(out),
        "--seed",
        "3",
    ]
    assert main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == [f"{i:05d}.png" for i in range(5)] + [
        "grid.png"
    ]
    first = (out / "00000.png").read_bytes()
    assert main([*argv[:-4], "--out", str(tmp_path / "again"), "--seed", "3"]) == 0
    assert (tmp_path / "again" / "00000.png").read_bytes() == first  # seeds fix the images


def test_sampled_images_have_the_data_shape_and_range(tmp_path) -> None:
    from mvq.priors import create_prior
    from mvq.sampling.pipeline import sample_images
    from mvq.tokenizers import load_tokenizer

    tok, _ = make_tokens(tmp_path)
    tokenizer = load_tokenizer(tok)
    prior = create_prior(
        "maskgit_small",
        primary_grid=(2, 2),
        primary_vocab=8,
        secondary_vocab=8,
        layers=1,
        heads=2,
        dim=16,
    )
    images, tokens = sample_images(tokenizer, prior, 7, seed=1)
    assert images.shape == (7, 1, 28, 28) and images.min() >= -1 and images.max() <= 1
    assert tokens.indices.shape == (7, 2, 2) and tokens.indices.max() < 8
    again, _ = sample_images(tokenizer, prior, 7, seed=1)
    assert torch.equal(images, again)


def test_prior_from_another_tokenizer_is_refused(tmp_path, capsys) -> None:
    tok, tokens = make_tokens(tmp_path, "mvqvae")
    other, _ = make_tokens(tmp_path, "vqvae2")
    run = tmp_path / "prior"
    cfg = prior_config(tmp_path, "transformer_1p1")
    argv = [
        "train-prior",
        "--tokens",
        str(tokens),
        "--config",
        str(cfg),
        "--out",
        str(run),
        "--max-steps",
        "2",
    ]
    assert main(argv) == 0
    capsys.readouterr()
    argv = [
        "sample",
        "--tokenizer",
        str(other),
        "--prior",
        str(run / "model"),
        "--out",
        str(tmp_path / "s"),
    ]
    assert main(argv) == 2
    assert "trained on tokens of another tokenizer" in capsys.readouterr().err


def test_codebook_size_mismatch_is_a_clear_error(tmp_path) -> None:
    from mvq.priors import create_prior

    _, tokens = make_tokens(tmp_path)
    prior = create_prior("transformer_1p1", primary_vocab=4, secondary_vocab=8, primary_grid=(2, 2))
    batch = next(iter(torch.utils.data.DataLoader(TokenDataset(tokens), batch_size=64)))
    with pytest.raises(ValueError, match="prior was built for 4"):
        prior.loss(batch)


def test_conditional_prior_needs_the_tokens_classes(tmp_path, capsys) -> None:
    _, tokens = make_tokens(tmp_path)
    cfg = prior_config(tmp_path, "transformer_1p1", num_classes=5)
    argv = [
        "train-prior",
        "--tokens",
        str(tokens),
        "--config",
        str(cfg),
        "--out",
        str(tmp_path / "p"),
        "--max-steps",
        "2",
    ]
    assert main(argv) == 2
    assert "the tokens carry 10 classes" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()
