"""`mvq viz`: figure sizes, the composition and dimension contracts, and one-line errors."""

import json

import pytest
import torch
from PIL import Image

from mvq.cli import main
from mvq.core.tokens import Tokens, pack_masks
from mvq.quantizers.base import to_channel_first
from mvq.report.viz import DEFAULT_ALPHAS, compose_images, dimensions, transfer
from mvq.tokenizers import create_tokenizer

PAD, SIDE, SCALE = 2, 28, 3  # grid padding, Fashion-MNIST side, upscaling of 28-px grids


def grid_side(count: int, side: int = SIDE, pad: int = PAD) -> int:
    """Pixels of ``count`` images of ``side`` in a torchvision grid row/column."""
    return count * (side + pad) + pad


@pytest.fixture(scope="module")
def mvq():
    torch.manual_seed(0)
    return create_tokenizer(
        "mvqvae_fmnist_s4_k16", channels=16, res_channels=8, num_hypotheses=8
    ).eval()


def tokens_and_masks(model, generator) -> tuple[Tokens, torch.Tensor]:
    x = torch.rand(1, 1, 28, 28, generator=generator) * 2 - 1
    return model.encode(x), torch.rand(4, 16, generator=generator) < 0.5


@torch.no_grad()
def test_compose_corners_are_the_decoder_of_summed_codes(mvq) -> None:
    g = torch.Generator().manual_seed(1)
    tokens, masks = tokens_and_masks(mvq, g)
    cells = compose_images(mvq, tokens, masks)  # (9, 1, 28, 28): rows top, middle, bottom
    q = mvq.quantizer
    e = to_channel_first(q.primary.codebook[tokens.indices])  # (1, D, 2, 2), computed apart
    code = q.secondary.codebook[tokens.secondary[:, 0, 0]]  # (1, D')
    t = [q.f((code * m.float())[..., None, None]).expand_as(e) for m in masks]  # top, l, r, b
    top, left, right, bottom = t
    expect = {
        0: e + top + left,
        2: e + top + right,
        6: e + bottom + left,
        8: e + bottom + right,
        4: e,
        1: e + top,
        3: e + left,
    }
    for cell, latent in expect.items():
        torch.testing.assert_close(cells[cell : cell + 1], mvq.decoder(latent), msg=f"cell {cell}")
    # a neighbour is exactly the ordinary decoding of its masked configuration
    top_tokens = Tokens(tokens.indices, tokens.secondary, pack_masks(masks[:1]))
    torch.testing.assert_close(cells[1:2], mvq.decode(top_tokens))
    assert (cells[0] - cells[1]).abs().max() > 1e-4  # the corner adds a non-zero term


@torch.no_grad()
def test_dimensions_switch_one_mask_bit(mvq) -> None:
    x = torch.rand(1, 1, 28, 28, generator=torch.Generator().manual_seed(2)) * 2 - 1
    torch.manual_seed(0)
    tokens = mvq.encode(x)
    torch.manual_seed(0)  # the same searched mask inside dimensions()
    rows = dimensions(mvq, x, [3, 11])
    assert rows.shape == (2, len(DEFAULT_ALPHAS), 1, 28, 28)
    mask = torch.tensor([(int(tokens.mask[0, d // 8]) >> (d % 8)) & 1 for d in range(16)])
    for r, d in enumerate([3, 11]):
        for alpha in (0.0, 1.0):
            m = mask.clone()
            m[d] = int(alpha)
            want = mvq.decode(Tokens(tokens.indices, tokens.secondary, pack_masks(m[None].bool())))
            col = DEFAULT_ALPHAS.index(alpha)
            torch.testing.assert_close(rows[r, col : col + 1], want)


@torch.no_grad()
def test_transfer_decodes_image_0s_configurations_with_each_primary_code(mvq) -> None:
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(3)) * 2 - 1
    masks = torch.rand(4, 16, generator=torch.Generator().manual_seed(4)) < 0.5
    torch.manual_seed(0)
    t = mvq.encode(x)
    torch.manual_seed(0)  # the same mask search inside transfer()
    out = transfer(mvq, x, masks)
    assert out.shape == (3, 6, 1, 28, 28)
    torch.testing.assert_close(out[:, 0], x)  # the first column is the image itself
    torch.testing.assert_close(out[0, 1:2], mvq.decode(t[:1]))  # image 0's own configuration
    for p in range(3):
        for j, m in enumerate(masks):
            want = mvq.decode(Tokens(t.indices[p : p + 1], t.secondary[:1], pack_masks(m[None])))
            torch.testing.assert_close(out[p, 2 + j : 3 + j], want)


EXPECTED = {  # kind, --n -> (height, width) of the PNG before upscaling
    ("transfer", 3): (grid_side(3), grid_side(8)),
    ("compose", 2): (grid_side(3) + 16, 2 * (grid_side(3) + 8) + 8),
    ("dimensions", 4): (grid_side(4), grid_side(len(DEFAULT_ALPHAS))),
    ("diversity", 3): (grid_side(2) + 16, 3 * (grid_side(4) + 8) + 8),
    ("reconstructions", 16): (2 * (grid_side(2) + 8) + 8, grid_side(8) + 16),  # 2 blocks of 8
}


def test_every_figure_of_a_trained_run(tiny_mvq_run, tmp_path, capsys) -> None:
    for (kind, n), (h, w) in EXPECTED.items():
        assert (
            main(["viz", str(tiny_mvq_run), "--kind", kind, "--out", str(tmp_path), "--n", str(n)])
            == 0
        )
        image = Image.open(tmp_path / f"{kind}.png")
        assert image.size == (SCALE * w, SCALE * h), kind
    assert (
        main(
            [
                "viz",
                str(tiny_mvq_run / "model"),
                "--kind",
                "codebook",
                "--out",
                str(tmp_path),
                "--n",
                "64",
            ]
        )
        == 0
    )
    assert Image.open(tmp_path / "codebook.png").size == (1386, 352)  # 3 panels
    assert main(["viz", str(tiny_mvq_run), "--kind", "curves", "--out", str(tmp_path)]) == 0
    assert Image.open(tmp_path / "curves.png").size == (1386, 660)  # 2x3 panels
    written = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert written == {"curves": str(tmp_path / "curves.png")}


def test_all_figures_and_bad_dimensions(tiny_mvq_run, tmp_path, capsys) -> None:
    argv = ["viz", str(tiny_mvq_run), "--out", str(tmp_path), "--n", "2", "--kind"]
    assert main([*argv, "all"]) == 0
    assert sorted(p.stem for p in tmp_path.glob("*.png")) == sorted(
        ["transfer", "compose", "dimensions", "diversity", "reconstructions", "codebook", "curves"]
    )
    capsys.readouterr()
    assert main([*argv, "dimensions", "--dims", "3,16"]) == 2
    assert capsys.readouterr().err.strip() == "mvq: error: dimensions [16] out of range: D' = 16"


@pytest.mark.parametrize("kind", ["transfer", "compose", "dimensions", "diversity"])
def test_mvq_figure_of_a_vqvae2_is_a_one_line_error(tiny_vqvae2_model, tmp_path, capsys, kind):
    assert main(["viz", str(tiny_vqvae2_model), "--kind", kind, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"mvq: error: figure '{kind}' needs an MVQVAE")
    assert "VQVAE2" in err and not list(tmp_path.iterdir())


def test_curves_of_a_saved_model_alone_is_a_one_line_error(tiny_vqvae2_model, tmp_path, capsys):
    assert main(["viz", str(tiny_vqvae2_model), "--kind", "curves", "--out", str(tmp_path)]) == 2
    assert "needs a run directory with metrics.csv" in capsys.readouterr().err
    assert main(["viz", str(tmp_path / "none"), "--kind", "curves", "--out", str(tmp_path)]) == 2
    assert "is not a directory" in capsys.readouterr().err
