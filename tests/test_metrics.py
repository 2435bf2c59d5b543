"""Metrics as small numerical contracts: Fréchet distance, PRD F-scores, the weights resolver,
the Inception / LPIPS wiring and the fd_fmnist classifier."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mvq.metrics import (
    WEIGHTS,
    ClassifierConfig,
    WeightsUnavailable,
    frechet_distance,
    prd_f_scores,
    resolve_weights,
)
from mvq.metrics import weights as weights_module

FMNIST = Path("/usr/share/datasets/fashion-mnist")
needs_fmnist = pytest.mark.skipif(not FMNIST.is_dir(), reason="Fashion-MNIST is not installed")


# --- Fréchet distance -------------------------------------------------------------------------


def test_frechet_distance_of_a_set_with_itself_is_zero() -> None:
    x = np.random.default_rng(0).standard_normal((500, 16)) @ np.diag(np.linspace(0.1, 3, 16))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_equals_the_closed_form_for_two_gaussians() -> None:
    """Diagonal covariances: FD = |mu_a - mu_b|^2 + sum (s_a - s_b)^2 (s = standard deviations)."""
    rng = np.random.default_rng(1)
    d, n = 8, 200_000
    mu_a, mu_b = rng.standard_normal(d), rng.standard_normal(d)
    s_a, s_b = rng.uniform(0.5, 2, d), rng.uniform(0.5, 2, d)
    a = mu_a + s_a * rng.standard_normal((n, d))
    b = mu_b + s_b * rng.standard_normal((n, d))
    expected = np.sum((mu_a - mu_b) ** 2) + np.sum((s_a - s_b) ** 2)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=0.02)


def test_frechet_distance_matches_scipy_sqrtm_for_full_covariances() -> None:
    from scipy.linalg import sqrtm

    from mvq.metrics.frechet import frechet_distance_from_statistics

    rng = np.random.default_rng(2)
    a_half, b_half = rng.standard_normal((6, 6)), rng.standard_normal((6, 6))
    sa, sb = a_half @ a_half.T, b_half @ b_half.T
    mu_a, mu_b = rng.standard_normal(6), rng.standard_normal(6)
    reference = (mu_a - mu_b) @ (mu_a - mu_b) + np.trace(sa + sb - 2 * sqrtm(sa @ sb).real)
    assert frechet_distance_from_statistics(mu_a, sa, mu_b, sb) == pytest.approx(reference)


def test_frechet_distance_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="widths differ"):
        frechet_distance(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="N >= 2"):
        frechet_distance(np.zeros((1, 3)), np.zeros((5, 3)))


# --- PRD F-scores -----------------------------------------------------------------------------


def modes(n: int, which: list[int], seed: int) -> np.ndarray:
    """``n`` points spread evenly over the given modes of 10 well separated Gaussians in 8-d."""
    rng = np.random.default_rng(seed)
    centres = np.eye(10, 8) * 20 + np.eye(10, 8, k=-2) * 20
    labels = np.array(which)[np.arange(n) % len(which)]
    return centres[labels] + rng.standard_normal((n, 8))


def test_prd_of_identical_sets_is_one() -> None:
    x = modes(1000, list(range(10)), 0)
    f8, f1_8 = prd_f_scores(x, x)
    assert f8 > 0.99 and f1_8 > 0.99


def test_prd_of_disjoint_sets_is_zero() -> None:
    f8, f1_8 = prd_f_scores(modes(1000, [0, 1, 2], 0), modes(1000, [5, 6, 7], 1))
    assert f8 < 0.05 and f1_8 < 0.05


def test_prd_of_a_collapsed_generator_is_precise_but_not_recalling() -> None:
    """One mode of ten: its samples are realistic (high F_1/8) but cover little (low F_8)."""
    real = modes(1000, list(range(10)), 0)
    collapsed = modes(1000, [3], 1)
    f8, f1_8 = prd_f_scores(collapsed, real)
    assert f1_8 > 0.8 and f8 < 0.2
    swapped = prd_f_scores(real, collapsed)  # swapping the arguments swaps the two scores
    assert swapped[0] == pytest.approx(f1_8, abs=0.02) and swapped[1] == pytest.approx(f8, abs=0.02)


def test_prd_is_seeded_and_needs_equal_counts() -> None:
    a, b = modes(500, [0, 1, 2, 3], 0), modes(500, [2, 3, 4], 1)
    assert prd_f_scores(a, b, seed=3) == prd_f_scores(a, b, seed=3)
    with pytest.raises(ValueError, match="equally many"):
        prd_f_scores(a, b[:400])


# --- weights resolver -------------------------------------------------------------------------


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """No weights anywhere, and any download fails as it does without a network."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv("MVQ_WEIGHTS_DIR", raising=False)
    monkeypatch.delenv("MVQ_OFFLINE", raising=False)

    def no_network(url: str, destination: Path) -> None:
        raise OSError("<urlopen error [Errno -2] Name or service not known>")

    monkeypatch.setattr(weights_module, "_download", no_network)
    return tmp_path


def test_resolver_finds_an_explicit_file_first(offline) -> None:
    folder = offline / "mine"
    folder.mkdir()
    (folder / WEIGHTS["vgg16"].name).write_bytes(b"x")
    assert resolve_weights(WEIGHTS["vgg16"], folder) == folder / WEIGHTS["vgg16"].name


def test_resolver_reads_the_environment_then_the_hub_cache(offline, monkeypatch) -> None:
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    assert hub == offline / "torch_home" / "hub" / "checkpoints"  # TORCH_HOME semantics
    hub.mkdir(parents=True)
    (hub / WEIGHTS["inception"].name).write_bytes(b"x")
    assert resolve_weights(WEIGHTS["inception"]) == hub / WEIGHTS["inception"].name
    env = offline / "env"
    env.mkdir()
    (env / WEIGHTS["inception"].name).write_bytes(b"y")
    monkeypatch.setenv("MVQ_WEIGHTS_DIR", str(env))
    assert resolve_weights(WEIGHTS["inception"]) == env / WEIGHTS["inception"].name


def test_missing_weights_name_the_file_the_url_and_the_folder(offline, monkeypatch) -> None:
    with pytest.raises(WeightsUnavailable) as err:
        resolve_weights(WEIGHTS["inception"])
    message = str(err.value)
    assert "\n" not in message
    assert WEIGHTS["inception"].name in message and WEIGHTS["inception"].url in message
    assert str(offline / "torch_home" / "hub" / "checkpoints") in message
    assert "Name or service not known" in message
    monkeypatch.setenv("MVQ_OFFLINE", "1")
    monkeypatch.setattr(weights_module, "_download", lambda *a: pytest.fail("downloaded"))
    with pytest.raises(WeightsUnavailable, match="MVQ_OFFLINE is set"):
        resolve_weights(WEIGHTS["vgg16"], offline / "wd")


def test_a_download_lands_in_the_hub_cache(offline, monkeypatch) -> None:
    def fake_download(url: str, destination: Path) -> None:
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_bytes(url.encode())

    monkeypatch.setattr(weights_module, "_download", fake_download)
    path = resolve_weights(WEIGHTS["vgg16"])
    assert path == Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS["vgg16"].name
    assert path.read_bytes() == WEIGHTS["vgg16"].url.encode()


# --- network wiring (random weights saved under the expected names) ----------------------------


def test_lpips_loads_the_resolved_vgg_backbone(offline) -> None:
    from torchvision.models.vgg import cfgs, make_layers

    from mvq.metrics import load_lpips, lpips_distance

    torch.manual_seed(0)
    features = make_layers(cfgs["D"])  # VGG16's conv trunk, torchvision's `features.*` keys
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    torch.save(state, offline / WEIGHTS["vgg16"].name)
    model = load_lpips(offline)
    assert torch.equal(getattr(model.net.slice5, "28").weight, state["features.28.weight"])
    x = torch.rand(3, 1, 28, 28) * 2 - 1
    d = lpips_distance(model, x, x.flip(0))
    assert d.shape == (3,) and d[1] == pytest.approx(0.0, abs=1e-6) and d[0] > 0
    (offline / WEIGHTS["vgg16"].name).write_bytes(b"broken")
    with pytest.raises(ValueError, match="not torchvision's VGG16"):
        load_lpips(offline)


def test_inception_features_from_the_resolved_file(offline, monkeypatch) -> None:
    """A random-weight state dict of the right architecture under the expected file name."""
    from torch_fidelity import feature_extractor_inceptionv3 as fe

    from mvq.metrics import inception_features, load_inception

    monkeypatch.setattr(fe, "load_state_dict_from_url", lambda *a, **k: {})
    monkeypatch.setattr(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, s: None)
    torch.manual_seed(0)
    state = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"]).state_dict()
    monkeypatch.undo()
    monkeypatch.setenv("MVQ_WEIGHTS_DIR", str(offline))
    monkeypatch.setenv("MVQ_OFFLINE", "1")
    torch.save(state, offline / WEIGHTS["inception"].name)
    model = load_inception()
    assert torch.equal(model.Conv2d_1a_3x3.conv.weight, state["Conv2d_1a_3x3.conv.weight"])
    gray = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)
    feats = inception_features(model, gray)
    rgb = inception_features(model, gray.expand(-1, 3, -1, -1).contiguous())
    assert feats.shape == (2, 2048) and feats.dtype == np.float64
    np.testing.assert_array_equal(feats, rgb)  # gray is repeated to three channels


# --- fd_fmnist ---------------------------------------------------------------------------------


@needs_fmnist
def test_fd_fmnist_classifier_is_cached_and_reused(tmp_path, monkeypatch, capsys) -> None:
    import importlib

    from mvq.metrics import fd_fmnist, load_classifier

    fd_module = importlib.import_module("mvq.metrics.fd_fmnist")  # the module, not the function

    config = ClassifierConfig(width=4, feature_dim=16, epochs=1, train_subset=2048)
    first = load_classifier(config, cache=tmp_path)
    assert "training the fd_fmnist classifier once" in capsys.readouterr().err
    meta = json.loads((tmp_path / f"{first.meta['key']}.json").read_text())
    assert meta["feature_layer"].startswith("fc1") and 0.15 < meta["accuracy"] <= 1  # chance: 0.1
    assert meta["config"]["train_subset"] == 2048
    monkeypatch.setattr(fd_module, "train_classifier", lambda *a, **k: pytest.fail("retrained"))
    again = load_classifier(config, cache=tmp_path)
    for key, value in first.model.state_dict().items():
        assert torch.equal(value, again.model.state_dict()[key])
    other = ClassifierConfig(width=4, feature_dim=16, epochs=1, train_subset=1024)
    with pytest.raises(FileNotFoundError, match="no fd_fmnist classifier cached"):
        load_classifier(other, cache=tmp_path, train_if_missing=False)
    x = torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8)
    assert fd_fmnist(again.model, x, x) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match=r"\(N, 1, 28, 28\)"):
        fd_fmnist(again.model, torch.zeros(4, 3, 32, 32, dtype=torch.uint8), x)


@needs_fmnist
@pytest.mark.slow
def test_the_real_classifier_reaches_its_accuracy_contract(tmp_path) -> None:
    """The cached classifier: >= 91% test accuracy (recomputed from its weights), 128-d
    features. Without a cache (CI), the same recipe on a quarter of the data, 2 epochs."""
    from mvq.data import build_dataset
    from mvq.metrics import load_classifier
    from mvq.metrics.fd_fmnist import accuracy, cache_key, cache_root, data_hash

    config = ClassifierConfig()
    cached = (cache_root() / "fd_fmnist" / f"{cache_key(config, data_hash())}.json").is_file()
    if not cached:
        config = ClassifierConfig(epochs=2, train_subset=15_000)
    classifier = load_classifier(config, cache=None if cached else tmp_path)
    test = build_dataset("fashion_mnist", None, "val")
    measured = accuracy(classifier.model, test.images, test.labels)
    assert measured == pytest.approx(classifier.meta["accuracy"], abs=1e-4)
    assert measured >= (0.91 if cached else 0.86)
    assert classifier.meta["feature_dim"] >= 128
