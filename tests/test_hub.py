"""Loading from local folders, run directories and Hugging Face Hub ids (no network), the model
card and ``push_to_hub``."""

import json
from pathlib import Path

import huggingface_hub
import pytest
import torch
from huggingface_hub import constants

from mvq.core.pretrained import CheckpointError, parse_hub_id, resolve_pretrained
from mvq.priors import create_prior, load_prior
from mvq.tokenizers import MVQVAE, create_tokenizer, load_tokenizer

TINY = {"channels": 8, "res_channels": 4}
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def offline_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache in tmp, offline."""
    cache = tmp_path / "hf_cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def fake_cached_repo(cache: Path, repo_id: str, model: torch.nn.Module, ref: str = "main") -> Path:
    """Lay ``model`` out as ``snapshot_download`` leaves a downloaded repository in the cache."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    model.save_pretrained(snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / ref).write_text(COMMIT)
    return snapshot


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("org/name", ("org/name", None)),
        ("org/name@v1.0", ("org/name", "v1.0")),
        ("my-org/tok_8.x@refs/pr/1", ("my-org/tok_8.x", "refs/pr/1")),
        (f"org/name@{COMMIT}", ("org/name", COMMIT)),
        ("runs/x/model", None),  # three parts: a local path
        ("./org/name", None),
        ("/abs/path", None),
        ("~/models", None),
        ("name", None),
        ("org/na--me", None),
        ("org/../name", None),
        ("org/name@", None),
    ],
)
def test_hub_id_parsing(text: str, expected: tuple[str, str | None] | None) -> None:
    assert parse_hub_id(text) == expected


def test_local_folder_and_run_directory_win(tmp_path: Path, monkeypatch) -> None:
    torch.manual_seed(0)
    model = create_tokenizer("vqvae2_fmnist_s4_k16", **TINY)
    model.save_pretrained(tmp_path / "org" / "name" / "model")
    monkeypatch.chdir(tmp_path)  # "org/name" exists locally: it is not looked up on the Hub
    assert resolve_pretrained("org/name") == Path("org/name/model")
    loaded = load_tokenizer("org/name")
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_hub_id_found_in_the_local_cache(offline_cache: Path) -> None:
    torch.manual_seed(0)
    model = create_tokenizer("mvqvae_fmnist_s4_k16", **TINY)
    snapshot = fake_cached_repo(offline_cache, "someone/tiny-mvq", model)
    fake_cached_repo(
        offline_cache,
        "someone/tiny-prior",
        create_prior("transformer_1p1", primary_vocab=8, secondary_vocab=8, primary_grid=(1, 1)),
    )
    assert resolve_pretrained("someone/tiny-mvq") == snapshot
    assert resolve_pretrained(f"someone/tiny-mvq@{COMMIT}") == snapshot
    for loaded in (load_tokenizer("someone/tiny-mvq"), MVQVAE.from_pretrained("someone/tiny-mvq")):
        for key, value in model.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value), key
    assert type(load_prior("someone/tiny-prior")).__name__ == "TransformerPrior"


def test_hub_id_offline_and_not_cached_is_one_line(offline_cache: Path) -> None:
    with pytest.raises(CheckpointError) as info:
        load_tokenizer("someone/missing@v2")
    message = str(info.value)
    assert "\n" not in message
    for fragment in (
        "someone/missing@v2",
        "not in the local Hugging Face cache",
        "hf download someone/missing --revision v2",
        "local path",
    ):
        assert fragment in message, message
    with pytest.raises(CheckpointError, match="does not exist; pass a saved model folder"):
        load_tokenizer("no/such/folder")


def test_connection_error_is_the_same_message(offline_cache: Path, monkeypatch) -> None:
    def unreachable(*args: object, **kwargs: object) -> str:
        raise huggingface_hub.errors.LocalEntryNotFoundError("connection refused")

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", unreachable)
    with pytest.raises(CheckpointError, match="not in the local Hugging Face cache"):
        resolve_pretrained("someone/missing")


def test_model_card_and_metrics(tmp_path: Path) -> None:
    model = create_tokenizer("mvqvae_fmnist_s4_k16", **TINY)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "eval.json").write_text(json.dumps({"mse": 0.0123, "fid": None}))
    model.save_pretrained(tmp_path / "run" / "model", data={"name": "fashion_mnist"})
    card = (tmp_path / "run" / "model" / "README.md").read_text()
    for fragment in (
        "library_name: mvq",
        "`MVQVAE`",
        "| bits per image | 31 |",
        "16-bit mask",
        "name: fashion_mnist",
        "| mse | 0.0123 |",
        '"num_hypotheses": 256',
        "load_tokenizer(",
    ):
        assert fragment in card, fragment
    assert "fid" not in card
    reloaded = load_tokenizer(tmp_path / "run" / "model")
    reloaded.save_pretrained(tmp_path / "again")  # the data set and metrics travel along
    assert "| mse | 0.0123 |" in (tmp_path / "again" / "README.md").read_text()


def test_push_to_hub_uploads_the_saved_folder(tmp_path: Path, monkeypatch) -> None:
    calls: dict[str, object] = {}

    class FakeApi:
        def __init__(self, token: str | None = None) -> None:
            calls["token"] = token

        def create_repo(self, repo_id: str, private: bool | None, exist_ok: bool) -> None:
            calls["created"] = (repo_id, private, exist_ok)

        def upload_folder(self, *, repo_id: str, folder_path: Path, **kwargs: object) -> str:
            calls["files"] = sorted(p.name for p in Path(folder_path).iterdir())
            calls["card"] = (Path(folder_path) / "README.md").read_text()
            return f"https://huggingface.co/{repo_id}/commit/abc"

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    model = create_tokenizer("fsqvae_fmnist_s4_k16", **TINY)
    info = model.push_to_hub("me/tiny-fsq", metrics={"mse": 0.5}, private=True, token="t")
    assert info == "https://huggingface.co/me/tiny-fsq/commit/abc"
    assert calls["created"] == ("me/tiny-fsq", True, True) and calls["token"] == "t"
    assert calls["files"] == ["README.md", "config.json", "model.safetensors"]
    assert 'load_tokenizer("me/tiny-fsq")' in calls["card"] and "| mse | 0.5 |" in calls["card"]
    with pytest.raises(CheckpointError, match="not a Hub repository id"):
        model.push_to_hub("runs/x/model")
