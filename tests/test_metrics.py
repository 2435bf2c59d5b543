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


def test_eval_feature_extractors_on_the_device(device) -> None:
    """What ``mvq eval`` runs on ``--device``: the fd_fmnist classifier's features (in batches
    of 7) and LPIPS distances (random VGG backbone, gray images, batches of 3) equal one CPU
    pass over all images in eval mode (BatchNorm's running statistics); 1e-5 relative on
    CUDA, where TF32 is off and cuDNN sums in another order."""
    from mvq.metrics import load_lpips, lpips_distance
    from mvq.metrics.fd_fmnist import FMNISTClassifier, classifier_features, images_to_input

    torch.manual_seed(0)
    classifier = FMNISTClassifier(ClassifierConfig(width=4, feature_dim=16))
    images = torch.randint(0, 256, (20, 1, 28, 28), dtype=torch.uint8)
    classifier(images_to_input(images))  # train mode: moves the running statistics
    classifier.eval()
    with torch.no_grad():
        expected = classifier.features(images_to_input(images)).double().numpy()
    features = classifier_features(classifier.to(device), images, batch_size=7)
    assert features.dtype == np.float64 and features.shape == (20, 16) and features.any()
    np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-6)
    lpips = load_lpips(random_backbone=True)  # cpu
    a, b = (
        torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(s)) * 2 - 1 for s in (1, 2)
    )
    with torch.no_grad():
        expected = lpips(a.expand(-1, 3, -1, -1), b.expand(-1, 3, -1, -1)).flatten()
    d = lpips_distance(lpips.to(device), a, b, batch_size=3)
    assert d.device.type == "cpu" and d.shape == (5,) and (d > 0).all()
    torch.testing.assert_close(d, expected, rtol=1e-5, atol=1e-6)


# --- fd_fmnist ---------------------------------------------------------------------------------


@needs_fmnist
def test_fd_fmnist_classifier_is_cached_and_reused(tmp_path, monkeypatch, capsys) -> None:
    import importlib

    from mvq.metrics import fd_fmnist, load_classifier

    fd_module = importlib.import_module("mvq.metrics.fd_fmnist")  # the module, not the function

    config = ClassifierConfig(width=4, feature_dim=16, epochs=1, train_subset=2048)
    first = load_classifier(config, cache=tmp_path)
    assert "training an fd_fmnist classifier" in capsys.readouterr().err
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


# the shipped classifier: the one the replication study measured with (results/fmnist/cache/)
STUDY_CACHE = Path(__file__).resolve().parents[1] / "results" / "fmnist" / "cache" / "fd_fmnist"
STUDY_KEY = "ea6ed89205813a6a"  # its key under the earlier scheme (hash of the data files' bytes)
SHIPPED_ACCURACY = 0.9177
# fd_fmnist of fixed subsets of the test split under the shipped classifier (computed once,
# 2026-12-04, torch 2.14.1 on an AMD EPYC CPU; 1 and 2 threads gave the same digits)
KNOWN_FD = {"even_vs_odd": 0.4918015491, "first_half_vs_second_rolled_2px": 34.3592103848}


def test_the_shipped_classifier_is_the_one_the_study_measured_with() -> None:
    """Same weights file (SHA-256) as the study's cache, so the same features bit for bit."""
    import hashlib

    from mvq.metrics import classifier_features, load_classifier_file, shipped_classifier
    from mvq.metrics.fd_fmnist import SHIPPED_KEY, classifier_identity, shipped_record

    record = shipped_record()
    study = STUDY_CACHE / f"{STUDY_KEY}.safetensors"
    assert record["key"] == SHIPPED_KEY and record["earlier_keys"] == [STUDY_KEY]
    assert record["weights_sha256"] == hashlib.sha256(study.read_bytes()).hexdigest()
    assert record["accuracy"] == SHIPPED_ACCURACY
    assert record["accuracy"] == json.loads(study.with_suffix(".json").read_text())["accuracy"]
    shipped, cached = shipped_classifier(), load_classifier_file(study.with_suffix(".json"))
    x = torch.randint(
        0, 256, (300, 1, 28, 28), generator=torch.Generator().manual_seed(0), dtype=torch.uint8
    )
    np.testing.assert_array_equal(
        classifier_features(shipped.model, x), classifier_features(cached.model, x)
    )
    assert classifier_identity(shipped.meta)["id"] == SHIPPED_KEY
    from_study = classifier_identity(cached.meta)  # found under the study's key, same weights
    assert from_study["id"] == SHIPPED_KEY and from_study["shipped"]
    assert from_study["key"] == STUDY_KEY


def test_the_shipped_classifier_is_package_data() -> None:
    """pyproject's package-data names both shipped files, so wheels and installs carry them."""
    import fnmatch

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    from mvq.metrics.fd_fmnist import SHIPPED_DIR, SHIPPED_KEY

    root = Path(__file__).resolve().parents[1]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["mvq"]
    for suffix in (".json", ".safetensors"):
        name = f"metrics/{SHIPPED_DIR}/{SHIPPED_KEY}{suffix}"
        assert (root / "src" / "mvq" / name).is_file(), name
        assert any(fnmatch.fnmatch(name, p) for p in patterns), name


def test_tables_name_every_classifier_but_the_shipped_one() -> None:
    from mvq.metrics.fd_fmnist import SHIPPED_KEY, classifier_label, shipped_record

    sha = shipped_record()["weights_sha256"]
    assert classifier_label(None) is None
    assert classifier_label({"id": SHIPPED_KEY, "weights_sha256": sha, "accuracy": 0.9177}) is None
    other = {"id": "0123456789abcdef", "weights_sha256": "0" * 64, "accuracy": 0.9158}
    assert classifier_label(other) == "0123456789abcdef (accuracy 0.9158)"
    # eval.json written before the weights' hash was recorded: key and accuracy must both match
    assert classifier_label({"key": STUDY_KEY, "accuracy": SHIPPED_ACCURACY}) is None
    assert (
        classifier_label({"key": STUDY_KEY, "accuracy": 0.9158}) == f"{STUDY_KEY} (accuracy 0.9158)"
    )


def test_a_damaged_or_missing_classifier_file_is_one_clear_error(tmp_path) -> None:
    from mvq.metrics import ClassifierError, load_classifier_file
    from mvq.metrics.fd_fmnist import shipped_record

    weights = (STUDY_CACHE / f"{STUDY_KEY}.safetensors").read_bytes()
    (tmp_path / "c.json").write_text(json.dumps(shipped_record()))
    damaged = bytearray(weights)
    damaged[-1] ^= 1
    (tmp_path / "c.safetensors").write_bytes(bytes(damaged))
    with pytest.raises(ClassifierError, match="damaged") as err:
        load_classifier_file(tmp_path / "c.json")
    assert "\n" not in str(err.value)
    (tmp_path / "c.safetensors").unlink()
    with pytest.raises(ClassifierError, match=r"c\.safetensors not found"):
        load_classifier_file(tmp_path / "c")
    (tmp_path / "c.safetensors").write_bytes(weights)
    record = shipped_record() | {"config": {"width": 8}}  # not the weights' architecture
    (tmp_path / "c.json").write_text(json.dumps(record | {"weights_sha256": None}))
    with pytest.raises(ClassifierError, match="not an fd_fmnist classifier mvq can load"):
        load_classifier_file(tmp_path / "c.safetensors")


@pytest.mark.real_data
def test_the_key_hashes_the_decoded_images_not_the_files(tmp_path) -> None:
    """torchvision's unpacked files and Debian's .gz files: one key, the shipped classifier."""
    import gzip

    from mvq.metrics import ClassifierConfig, load_classifier
    from mvq.metrics.fd_fmnist import (
        SHIPPED_KEY,
        cache_key,
        data_hash,
        images_digest,
        shipped_record,
    )

    raw = tmp_path / "FashionMNIST" / "raw"  # torchvision's layout, uncompressed
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        (raw / name).write_bytes(gzip.decompress((FMNIST / f"{name}.gz").read_bytes()))
    digest = data_hash(tmp_path)
    assert digest == data_hash(None) == shipped_record()["train_data_sha256"]
    assert cache_key(ClassifierConfig(), digest) == SHIPPED_KEY
    found = load_classifier(root=tmp_path, cache=tmp_path / "cache", train_if_missing=False)
    assert found.meta["source"] == "shipped" and not (tmp_path / "cache").exists()
    images = torch.zeros(2, 1, 28, 28, dtype=torch.uint8)
    other = images.clone()
    other[1, 0, 5, 5] = 1
    labels = torch.tensor([3, 4])
    assert images_digest(images, labels) != images_digest(other, labels)
    assert images_digest(images, labels) != images_digest(images, labels.flip(0))


@pytest.mark.real_data
def test_the_shipped_classifier_accuracy_and_a_known_fd_fmnist_value() -> None:
    """Its recorded test accuracy, recomputed on the test split; fd_fmnist of fixed subsets."""
    from mvq.data import build_dataset
    from mvq.metrics import fd_fmnist, shipped_classifier
    from mvq.metrics.fd_fmnist import accuracy, images_digest, shipped_record

    test = build_dataset("fashion_mnist", None, "val")
    assert images_digest(test.images, test.labels) == shipped_record()["test_data_sha256"]
    classifier = shipped_classifier()
    assert classifier.meta["accuracy"] == SHIPPED_ACCURACY
    assert accuracy(classifier.model, test.images, test.labels) == pytest.approx(
        SHIPPED_ACCURACY, abs=1.5e-4
    )  # 9177 of 10,000, one image either way for another CPU's rounding
    x = test.images
    values = {
        "even_vs_odd": fd_fmnist(classifier.model, x[0::2], x[1::2]),
        "first_half_vs_second_rolled_2px": fd_fmnist(
            classifier.model, x[:5000], torch.roll(x[5000:], 2, dims=-1)
        ),
    }
    assert values == pytest.approx(KNOWN_FD, rel=1e-4)


@needs_fmnist
@pytest.mark.slow
def test_the_recipe_trains_a_classifier_that_reaches_its_accuracy(tmp_path) -> None:
    """The shipped recipe on a quarter of the data, 2 epochs: >= 86% test accuracy, 128-d
    features, recorded with its key and weights' hash."""
    from mvq.data import build_dataset
    from mvq.metrics import load_classifier, load_classifier_file
    from mvq.metrics.fd_fmnist import SHIPPED_KEY, accuracy

    config = ClassifierConfig(epochs=2, train_subset=15_000)
    classifier = load_classifier(config, cache=tmp_path)
    assert classifier.meta["key"] != SHIPPED_KEY and len(classifier.meta["weights_sha256"]) == 64
    test = build_dataset("fashion_mnist", None, "val")
    measured = accuracy(classifier.model, test.images, test.labels)
    assert measured == pytest.approx(classifier.meta["accuracy"], abs=1e-4)
    assert measured >= 0.86
    assert classifier.meta["feature_dim"] >= 128
    again = load_classifier_file(classifier.meta["source"])
    assert again.meta["weights_sha256"] == classifier.meta["weights_sha256"]
