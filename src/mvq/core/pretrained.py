"""Save and load models as ``config.json`` + ``model.safetensors`` (diffusers-style).

A model that mixes in ``PretrainedMixin`` owns a dataclass config in ``self.config`` and is
built by ``cls(config)``. Writes are atomic: files go to a temporary directory that is renamed
into place, so an interrupted save never leaves a half-written model. Every save also writes a
model card ``README.md`` (``mvq.core.model_card``).

Where a model is read from (``resolve_pretrained``): an existing local path wins (a run
directory stands for its ``model/``); otherwise ``org/name`` or ``org/name@revision`` is a
Hugging Face Hub id, fetched with ``huggingface_hub.snapshot_download`` into the Hugging Face
cache (from the cache alone when ``HF_HUB_OFFLINE=1``). ``push_to_hub`` uploads a model.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, ClassVar, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from mvq.core.errors import DiskFullError, MVQError, disk_full_cause

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_VERSION = 1
RUN_MODEL_DIR = "model"  # where a run directory keeps its trained model
_HUB_ID = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<revision>[\w./-]+))?")

M = TypeVar("M", bound="PretrainedMixin")


class CheckpointError(MVQError, ValueError):
    """A saved model or checkpoint is missing, corrupted or belongs to another model."""


def config_from_dict(config_cls: type, values: dict[str, Any], where: str = "config") -> Any:
    """Build dataclass ``config_cls`` from ``values``; unknown keys are a clear error."""
    from mvq.core.registry import closest_hint

    names = [f.name for f in dataclasses.fields(config_cls)]
    for key in values:
        if key not in names:
            raise CheckpointError(
                f"{where}: unknown key '{key}' for {config_cls.__name__}{closest_hint(key, names)}"
            )
    kwargs = {}
    for f in dataclasses.fields(config_cls):
        if f.name in values:
            v = values[f.name]
            kwargs[f.name] = tuple(v) if isinstance(v, list) else v
    return config_cls(**kwargs)


def atomic_write_dir(target: Path, write: Any, size: int | None = None) -> None:
    """Call ``write(tmpdir)`` then move ``tmpdir`` onto ``target`` (replacing it).

    A failure leaves the previous ``target`` intact and removes ``tmpdir``; running out of space
    is a one-line ``DiskFullError`` (``size``: the bytes ``write`` writes, when known).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private; the result is an ordinary directory
    existed = target.exists()
    try:
        write(tmp)
        if existed:
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException as err:
        written = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file())
        shutil.rmtree(tmp, ignore_errors=True)
        if disk_full_cause(err) is not None:
            raise DiskFullError.writing(target, size, written, existed) from err
        raise


def atomic_write_file(
    path: str | os.PathLike,
    write: Callable[[BinaryIO], object] | bytes | str,
    size: int | None = None,
) -> None:
    """Call ``write(f)`` on a binary temporary file beside ``path``, fsync, rename over ``path``.

    The one atomic file writer of mvq: a failure or crash at any point leaves the previous
    ``path`` intact and no temporary file. Running out of space (ENOSPC or EDQUOT, also when
    torch's writer hides it behind a ``RuntimeError``) is a one-line ``DiskFullError`` naming
    ``path`` and ``size``: the bytes to write when ``write`` is bytes or str (its length), else
    the caller's lower bound (None: unknown).
    """
    path, at_least = Path(path), callable(write)
    if not callable(write):
        data = write.encode() if isinstance(write, str) else write
        size, write = len(data), lambda f: f.write(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    existed = path.exists()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; the result is an ordinary file
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        written = _size_or_none(tmp)
        Path(tmp).unlink(missing_ok=True)
        if disk_full_cause(err) is not None:
            raise DiskFullError.writing(path, size, written, existed, at_least) from err
        raise
    if os.name == "posix":  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _umask() -> int:
    """This process's umask (read by setting it, then setting it back)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _size_or_none(path: str | os.PathLike) -> int | None:
    """The size of file ``path`` on disk, None when it cannot be read."""
    try:
        return os.stat(path).st_size
    except OSError:
        return None


class PretrainedMixin:
    """Adds ``save_pretrained``/``from_pretrained`` to an ``nn.Module`` with a dataclass config."""

    config_class: ClassVar[type]
    config: Any
    pretrained_exclude: ClassVar[tuple[str, ...]] = ()
    """State-dict key prefixes of training-only parts (a GAN's discriminator): not saved, and
    left as built when loading; training checkpoints still hold them."""

    def pretrained_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights ``save_pretrained`` writes: ``state_dict`` without ``pretrained_exclude``."""
        state = self.state_dict()  # type: ignore[attr-defined]
        return {k: v for k, v in state.items() if not k.startswith(self.pretrained_exclude)}

    def save_pretrained(
        self,
        directory: str | os.PathLike,
        extra_files: dict[str, str] | None = None,
        *,
        data: dict[str, Any] | None = None,
        metrics: dict[str, float] | None = None,
        repo_id: str | None = None,
    ) -> Path:
        """Write ``config.json``, ``model.safetensors``, the model card ``README.md`` (and
        ``extra_files``, name -> text) to ``directory`` atomically.

        Args:
            directory: the folder to write (replaced if it exists).
            extra_files: more files, name -> text.
            data: what the model was trained on, for the card (kept in config.json, so a
                loaded model keeps it); default: what it was loaded with.
            metrics: evaluation numbers for the card; default: an ``eval.json`` in
                ``directory`` or its parent, else what it was loaded with.
            repo_id: the Hub id, for the card's loading example.
        """
        from mvq.core.model_card import CARD_NAME, numeric, read_metrics, render_model_card

        known = getattr(self, "card_info", {})
        data = data if data is not None else known.get("data")
        metrics = numeric(metrics or read_metrics(Path(directory)) or known.get("metrics") or {})
        meta = {
            "class": type(self).__name__,
            "format_version": FORMAT_VERSION,
            "config": dataclasses.asdict(self.config),
            "card": {"data": data, "metrics": metrics},
        }
        state = {k: v.detach().contiguous().cpu() for k, v in self.pretrained_state_dict().items()}
        card = render_model_card(self, repo_id, data, metrics)
        files = {
            CONFIG_NAME: (json.dumps(meta, indent=2) + "\n").encode(),
            WEIGHTS_NAME: safetensors_bytes(state),
            CARD_NAME: card.encode(),
        }
        files |= {name: text.encode() for name, text in (extra_files or {}).items()}

        def write(tmp: Path) -> None:
            for name, data in files.items():
                (tmp / name).write_bytes(data)

        atomic_write_dir(Path(directory), write, size=sum(map(len, files.values())))
        return Path(directory)

    def push_to_hub(
        self,
        repo_id: str,
        *,
        extra_files: dict[str, str] | None = None,
        data: dict[str, Any] | None = None,
        metrics: dict[str, float] | None = None,
        private: bool | None = None,
        token: str | None = None,
        revision: str | None = None,
        commit_message: str | None = None,
    ) -> Any:
        """Save to a temporary folder (``save_pretrained``) and upload it to the Hugging Face
        Hub repository ``repo_id`` (created if missing); returns the ``CommitInfo``.

        ``token`` defaults to the one ``huggingface-cli login`` / ``hf auth login`` stored.
        """
        from huggingface_hub import HfApi

        if parse_hub_id(repo_id) != (repo_id, None):
            raise CheckpointError(f"'{repo_id}' is not a Hub repository id; use org/name")
        api = HfApi(token=token)
        with tempfile.TemporaryDirectory(prefix="mvq-push-") as tmp:
            folder = self.save_pretrained(
                Path(tmp) / "model", extra_files, data=data, metrics=metrics, repo_id=repo_id
            )
            api.create_repo(repo_id, private=private, exist_ok=True)
            message = commit_message or f"Upload {type(self).__name__} with mvq"
            return api.upload_folder(
                repo_id=repo_id, folder_path=folder, revision=revision, commit_message=message
            )

    @classmethod
    def from_pretrained(cls: type[M], directory: str | os.PathLike, **overrides: Any) -> M:
        """Rebuild the model saved in ``directory``, in eval mode (call ``.train()`` to train);
        a wrong or broken save is a clear error.

        ``directory``: a saved model folder, a run directory with ``model/``, or a Hugging Face
        Hub id ``org/name[@revision]`` (see ``resolve_pretrained``).
        """
        directory = resolve_pretrained(directory)
        meta = read_pretrained_meta(directory)
        if meta["class"] != cls.__name__:
            raise CheckpointError(
                f"{directory} holds a {meta['class']}, not a {cls.__name__}: "
                f"load it with {meta['class']}.from_pretrained or mvq.load_pretrained"
            )
        config = config_from_dict(cls.config_class, {**meta["config"], **overrides}, str(directory))
        model = cls(config)  # type: ignore[call-arg]
        try:
            state = load_file(str(Path(directory) / WEIGHTS_NAME))
        except (SafetensorError, OSError) as err:
            raise CheckpointError(
                f"{directory}/{WEIGHTS_NAME} is unreadable ({err}); re-save it"
            ) from err
        problem = state_mismatch(state, model.pretrained_state_dict())
        if problem:
            raise CheckpointError(
                f"{directory}: weights do not match the config ({problem}); "
                "config.json and model.safetensors come from different models"
            )
        model.load_state_dict(state, strict=not cls.pretrained_exclude)  # type: ignore[attr-defined]
        model.card_info = meta.get("card") or {}  # kept for the next save's model card
        return model.eval()  # type: ignore[attr-defined]


def parse_hub_id(text: str) -> tuple[str, str | None] | None:
    """``(repo_id, revision)`` when ``text`` reads ``org/name`` or ``org/name@revision``, else
    None (absolute, ``./`` or ``~`` paths and anything with more parts are local paths)."""
    match = _HUB_ID.fullmatch(text)
    if match is None or ".." in text or "--" in match["repo"] or match["repo"].endswith(".git"):
        return None
    return match["repo"], match["revision"]


def resolve_pretrained(name: str | os.PathLike) -> Path:
    """The local folder holding the model ``name`` names.

    An existing local path wins (a run directory whose ``model/`` holds the model stands for
    it); otherwise a Hub id ``org/name[@revision]`` is fetched into (or found in) the Hugging
    Face cache. Anything else, or a Hub id that cannot be had, is a one-line ``CheckpointError``.
    """
    path = Path(name).expanduser()
    if path.exists():
        run_model = path / RUN_MODEL_DIR
        if not (path / CONFIG_NAME).exists() and (run_model / CONFIG_NAME).is_file():
            return run_model
        return path
    hub = parse_hub_id(str(name))
    if hub is None:
        raise CheckpointError(
            f"{name} is not a saved model: it does not exist; pass a saved model folder (e.g. "
            "runs/x/model), a run directory, or a Hugging Face Hub id org/name[@revision]"
        )
    return download_from_hub(*hub)


def _hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (read now, not at import) forbids network access."""
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE", "")
    return value.upper() in {"1", "ON", "YES", "TRUE"} or bool(constants.HF_HUB_OFFLINE)


def download_from_hub(repo_id: str, revision: str | None = None) -> Path:
    """The snapshot folder of Hub repository ``repo_id`` (downloaded or already cached)."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    at = f"@{revision}" if revision else ""
    try:
        return Path(snapshot_download(repo_id, revision=revision, local_files_only=_hub_offline()))
    except LocalEntryNotFoundError as err:
        get = f"hf download {repo_id}" + (f" --revision {revision}" if revision else "")
        raise CheckpointError(
            f"'{repo_id}{at}' is not a local folder and the Hugging Face Hub id {repo_id}{at} is "
            f"not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) while the Hub "
            f"cannot be reached (offline or no connection): fetch it where there is network "
            f"with `{get}` (`huggingface-cli download` in older versions) or pass a local path"
        ) from err
    except RevisionNotFoundError as err:
        raise CheckpointError(f"the Hub repository {repo_id} has no revision '{revision}'") from err
    except RepositoryNotFoundError as err:
        raise CheckpointError(
            f"the Hub repository {repo_id} does not exist or is private or gated: check the id, "
            "or log in with `hf auth login`"
        ) from err
    except HfHubHTTPError as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"downloading {repo_id}{at} from the Hub failed: {first}") from err


def state_mismatch(saved: dict[str, torch.Tensor], current: dict[str, torch.Tensor]) -> str:
    """Describe how two state dicts differ (missing/unexpected keys, shapes); "" if they fit."""
    missing = [k for k in current if k not in saved]
    unexpected = [k for k in saved if k not in current]
    shapes = [
        f"{k}: {tuple(saved[k].shape)} vs {tuple(v.shape)}"
        for k, v in current.items()
        if k in saved and saved[k].shape != v.shape
    ]
    parts = [
        f"{label} {items[:3]}"
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shapes", shapes))
        if items
    ]
    return "; ".join(parts)


def read_pretrained_meta(directory: str | os.PathLike) -> dict[str, Any]:
    """Read and check ``config.json`` of a saved model."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{directory} is not a saved model: {CONFIG_NAME} is missing")
    try:
        meta = json.loads(path.read_text())
        meta["class"], meta["config"]  # noqa: B018
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path} is corrupted ({err}); re-save the model") from err
    return meta


def load_state_safely(path: str | os.PathLike) -> dict[str, Any]:
    """``torch.load`` a training checkpoint, turning a broken file into a ``CheckpointError``."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - torch raises many types for a broken file
        raise CheckpointError(f"checkpoint {path} is corrupted or unreadable ({err})") from err
