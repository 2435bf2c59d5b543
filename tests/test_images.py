"""Your own images: a grayscale and an RGB folder train; ``mvq reconstruct``, ``mvq tokenize``
and ``mvq decode`` end to end; their bad inputs are one line, exit 2, nothing written."""

import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import expect_error
from PIL import Image

from mvq.cli import main
from mvq.core.token_files import load_token_file, save_token_file
from mvq.tokenizers import load_tokenizer

TINY = {"channels": 8, "res_channels": 4, "num_hypotheses": 4}
README = Path(__file__).resolve().parents[1] / "README.md"


def image_folder(root: Path, mode: str, sizes: tuple[tuple[int, int], ...]) -> Path:
    """``train/`` and ``val/`` of random images of several sizes in ``mode`` (L or RGB)."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 3)):
        for i in range(n):
            w, h = sizes[i % len(sizes)]
            shape = (h, w) if mode == "L" else (h, w, 3)
            path = root / split / ("sub" if i % 2 else "") / f"im{i}.{'jpg' if i % 3 else 'png'}"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)
    return root


def train_on(tmp_path: Path, folder: Path, name: str, **data: object) -> Path:
    """Train a tiny MVQVAE (28×28 variant) for 2 steps on ``folder``; returns the run dir."""
    cfg = {
        "model": "mvqvae_fmnist_s4_k16",
        "model_config": TINY,
        "data": {"name": "folder", "root": str(folder), **data},
        "train": {"batch_size": 4, "val_batches": 1, "sample_every": 100},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = tmp_path / name
    assert main(["train", "--config", str(path), "--out", str(run), "--max-steps", "2"]) == 0
    return run


@pytest.fixture(scope="module")
def gray_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A grayscale folder of 40×30 and 20×20 images and the tokenizer trained on it."""
    tmp = tmp_path_factory.mktemp("gray")
    folder = image_folder(tmp / "images", "L", ((40, 30), (20, 20)))
    return folder, train_on(tmp, folder, "run")


def test_grayscale_folder_trains_a_one_channel_tokenizer(gray_run) -> None:
    folder, run = gray_run
    model = load_tokenizer(run)  # a run directory stands for its model/
    assert (model.config.in_channels, model.config.image_size) == (1, 28)
    card = (run / "model" / "README.md").read_text()
    assert "name: folder" in card and "folder: images" in card and "train_images: 8" in card


def test_rgb_folder_trains_and_channels_can_be_set(tmp_path: Path, capsys) -> None:
    folder = image_folder(tmp_path / "images", "RGB", ((33, 50),))
    run = train_on(tmp_path, folder, "rgb")
    assert load_tokenizer(run).config.in_channels == 3
    run = train_on(tmp_path, folder, "as_gray", channels=1)
    assert load_tokenizer(run).config.in_channels == 1
    cfg = tmp_path / "as_gray.yaml"
    argv = ["train", "--config", str(cfg), "--out", str(tmp_path / "bad"), "--max-steps", "1"]
    expect_error(capsys, [*argv, "--set", "data.channels=2"], "data.channels must be 1")
    expect_error(
        capsys,
        [*argv, "--set", "model_config.in_channels=3"],
        "model_config.in_channels=3 but the folder data gives 1-channel",
    )
    assert not (tmp_path / "bad").exists()


def test_reconstruct_tokenize_decode_end_to_end(gray_run, tmp_path: Path) -> None:
    folder, run = gray_run
    tok = ["--tokenizer", str(run), "--device", "cpu"]
    assert (
        main(
            [
                "reconstruct",
                *tok,
                "--images",
                str(folder),
                "--out",
                str(tmp_path / "rec"),
                "--batch-size",
                "3",
            ]
        )
        == 0
    )
    names = sorted(
        p.relative_to(tmp_path / "rec").as_posix() for p in (tmp_path / "rec").rglob("*.*")
    )
    assert names == sorted(
        p.relative_to(folder).with_suffix(".png").as_posix() for p in folder.rglob("*.*")
    )
    with Image.open(tmp_path / "rec" / "train" / "sub" / "im1.png") as im:
        assert (im.mode, im.size) == ("L", (28, 28))

    out = tmp_path / "val.safetensors"
    assert main(["tokenize", *tok, "--images", str(folder / "val"), "--out", str(out)]) == 0
    tokens = load_token_file(out)
    assert tokens.names == ["im0.png", "im2.jpg", "sub/im1.jpg"]
    assert tokens.tokens.indices.shape == (3, 2, 2) and tokens.tokens.mask.shape == (3, 2)
    assert main(["decode", *tok, "--tokens", str(out), "--out", str(tmp_path / "dec")]) == 0
    val = tmp_path / "rec_val"  # same images, same seed: the same masks are chosen
    assert main(["reconstruct", *tok, "--images", str(folder / "val"), "--out", str(val)]) == 0
    for name in ("im0.png", "im2.png", "sub/im1.png"):  # decoding the tokens = reconstructing
        assert np.array_equal(
            np.asarray(Image.open(tmp_path / "dec" / name)), np.asarray(Image.open(val / name))
        ), name


def test_token_file_round_trip(tmp_path: Path) -> None:
    from mvq.core.tokens import TokenLayout, Tokens

    layout = TokenLayout(300, (2, 2), 8, mask_bits=16)
    tokens = Tokens(
        torch.randint(0, 300, (2, 2, 2)),
        torch.randint(0, 8, (2, 1, 1)),
        torch.randint(0, 256, (2, 2), dtype=torch.uint8),
    )
    identity = {"class": "MVQVAE", "config": {}, "sha256": "ab" * 32}
    save_token_file(tmp_path / "t.safetensors", tokens, ["a.png", "b/c.jpg"], identity, layout)
    back = load_token_file(tmp_path / "t.safetensors")
    assert back.names == ["a.png", "b/c.jpg"] and back.tokenizer == identity
    assert back.layout["primary_vocab"] == 300
    for a, b in (
        (back.tokens.indices, tokens.indices),
        (back.tokens.secondary, tokens.secondary),
        (back.tokens.mask, tokens.mask),
    ):
        assert torch.equal(a, b)


def test_bad_inputs_are_one_line_and_write_nothing(gray_run, tmp_path: Path, capsys) -> None:
    folder, run = gray_run
    other = tmp_path / "other"
    model = load_tokenizer(run)
    torch.nn.init.zeros_(next(model.parameters()))
    model.save_pretrained(other)
    tokens = tmp_path / "t.safetensors"
    tok = ["--tokenizer", str(run)]
    assert main(["tokenize", *tok, "--images", str(folder / "val"), "--out", str(tokens)]) == 0
    out = tmp_path / "out"
    cases = [
        (["decode", "--tokenizer", str(other), "--tokens", str(tokens)], "another tokenizer"),
        (
            ["decode", *tok, "--tokens", str(run / "model" / "model.safetensors")],
            "not an mvq token file",
        ),
        (["decode", *tok, "--tokens", str(tmp_path / "none.safetensors")], "does not exist"),
        (["reconstruct", *tok, "--images", str(tmp_path / "nope")], "does not exist"),
        (["reconstruct", *tok, "--images", str(folder), "--device", "gpu0"], "--device gpu0"),
        (["reconstruct", *tok, "--images", str(folder), "--batch-size", "0"], "--batch-size"),
        (
            ["reconstruct", "--tokenizer", str(tmp_path / "none"), "--images", str(folder)],
            "does not exist",
        ),
        (["reconstruct", "--tokenizer", str(folder), "--images", str(folder)], "not a saved model"),
    ]
    for argv, fragment in cases:
        expect_error(capsys, [*argv, "--out", str(out)], fragment)
        assert not out.exists(), argv
    expect_error(
        capsys,
        ["tokenize", *tok, "--images", str(folder), "--out", str(out / "t.pt")],
        "must end in .safetensors",
    )
    expect_error(
        capsys,
        ["reconstruct", *tok, "--images", str(folder), "--out", str(folder / "rec")],
        "inside --images",
    )
    assert not out.exists() and not (folder / "rec").exists()
    (folder / "train" / "broken.png").write_bytes(b"not a png")
    try:
        expect_error(
            capsys,
            ["reconstruct", *tok, "--images", str(folder), "--out", str(out)],
            "cannot read image",
        )
    finally:
        (folder / "train" / "broken.png").unlink()
    assert not out.exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    expect_error(
        capsys,
        ["reconstruct", *tok, "--images", str(folder), "--out", str(tmp_path / "full")],
        "not an empty folder",
    )


def test_readme_train_on_your_own_images(tmp_path: Path, monkeypatch) -> None:
    """The README section's config and commands, as written, on a small folder (2 steps)."""
    section = README.read_text().split("## Train on your own images")[1].split("\n## ")[0]
    config = re.search(r"```yaml\n(.*?)```", section, flags=re.S)[1]
    commands = re.search(r"```bash\n(.*?)```", section, flags=re.S)[1].strip().splitlines()
    assert len(config.splitlines()) + len(commands) <= 8 and "name: folder" in config
    monkeypatch.chdir(tmp_path)
    image_folder(tmp_path / "my_images", "RGB", ((48, 36), (32, 32)))
    (tmp_path / "my_run.yaml").write_text(config)
    quick = ["--max-steps", "2", "--batch-size", "4", "--set", "train.val_batches=1"]
    quick += [f"--set=model_config.{k}={v}" for k, v in TINY.items()]
    for line in commands:
        argv = shlex.split(line)
        assert argv[0] == "mvq", line
        assert main(argv[1:] + (quick if argv[1] == "train" else [])) == 0, line
    assert load_tokenizer("runs/mine").config.in_channels == 3
    assert len(list(Path("runs/mine_recon").rglob("*.png"))) == 3
    assert load_token_file("runs/mine_val.safetensors").names == [
        "im0.png",
        "im2.jpg",
        "sub/im1.jpg",
    ]
    assert sorted(p.name for p in Path("runs/mine_decoded").rglob("*.png")) == [
        "im0.png",
        "im1.png",
        "im2.png",
    ]


def test_one_pixel_rule_round_trips_and_matches_save_image(tmp_path) -> None:
    """``mvq.core.pixels``: uint8 -> [-1, 1] -> uint8 is the identity, floats are clamped, and the
    PNGs of ``mvq reconstruct`` hold what ``save_image`` writes and the metrics compare."""
    import numpy as np
    from PIL import Image
    from torchvision.utils import save_image

    from mvq.core.pixels import float_to_uint8, to_unit, uint8_to_float
    from mvq.tokenizers.apply import save_png

    v = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(float_to_uint8(uint8_to_float(v)), v)
    edges = torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0])
    assert float_to_uint8(edges).tolist() == [0, 0, 128, 255, 255]  # clamped
    x = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2.2 - 1.1
    save_png(x, tmp_path / "ours.png")
    save_image(to_unit(x), tmp_path / "tv.png")
    ours = np.asarray(Image.open(tmp_path / "ours.png"))
    assert np.array_equal(ours, np.asarray(Image.open(tmp_path / "tv.png")))
    assert np.array_equal(ours, float_to_uint8(x).permute(1, 2, 0).numpy())
