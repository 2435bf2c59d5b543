"""The errors mvq raises for input it cannot use, under one base class ``MVQError``.

The ``mvq`` command prints an ``MVQError`` as one line ``mvq: error: ...`` (exit status 2);
any other exception is a bug and keeps its traceback. Each subclass also derives from the
built-in type a Python caller would catch (``ValueError``, ``KeyError``, ...). A full disk while
writing any file is a ``DiskFullError`` naming the file and the size being written.

Errors owned by one module live there (``CheckpointError`` in ``mvq.core.pretrained``,
``DataError`` in ``mvq.data``, ``RunDirError`` and ``TrainingDiverged`` in ``mvq.training``,
``EvalError``, ``VizError``, ``SweepError``); the shared ones live here.
"""

from __future__ import annotations

import errno
import os

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class MVQError(Exception):
    """Base of every error mvq raises for bad input: a file, a name, a value or a device.

    Its message is one line that names the problem and the fix.
    """

    def __str__(self) -> str:
        # KeyError would print its message quoted; one argument prints as itself.
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class ConfigError(MVQError, ValueError):
    """A setting (of a run config file, a ``--set`` override or a command-line option) names
    something that does not exist, or has a value of the wrong type or range."""


class DeviceError(MVQError, ValueError):
    """A device name that is not one, or a device this machine does not have."""


class UnknownNameError(MVQError, KeyError):
    """A registered name (tokenizer or prior variant) that does not exist."""


class DiskFullError(MVQError, OSError):
    """No space left on the device (or the disk quota reached) while writing a file; the
    partial file is removed and the previous file at that path is intact."""

    def __init__(self, message: str, path: str | os.PathLike) -> None:
        super().__init__(message)
        self.errno, self.strerror, self.filename = errno.ENOSPC, os.strerror(errno.ENOSPC), path

    @classmethod
    def writing(
        cls,
        path: str | os.PathLike,
        size: int | None,
        written: int | None,
        existed: bool,
        at_least: bool = False,
    ) -> DiskFullError:
        """The error for ``path``: ``size`` bytes to write (None: unknown; ``at_least``: a
        lower bound), ``written`` of them on disk when the device filled up, and whether a
        previous ``path`` is kept."""
        bound = "at least " if at_least else ""
        amounts = [f"{bound}{format_bytes(size)} to write"] if size is not None else []
        if written is not None:
            amounts.append(f"{format_bytes(written)} written when it filled up")
        kept = f"the previous {path} is unchanged" if existed else "no partial file is left"
        return cls(
            f"no space left on the device of {path} while writing it ({', '.join(amounts)}): "
            f"free some space there or write elsewhere (another --out); {kept}",
            path,
        )


def disk_full_cause(err: BaseException) -> OSError | None:
    """The ENOSPC/EDQUOT ``OSError`` behind ``err``: itself, or one it was raised from or
    while handling. torch hides it behind ``RuntimeError: [enforce fail at
    inline_container.cc:...] unexpected pos``, which keeps it as its ``__context__``."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, OSError) and err.errno in DISK_FULL_ERRNOS:
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def format_bytes(n: int) -> str:
    """``n`` bytes for a reader: "512 B", "3.4 kB", "12.3 MB", "1.5 GB"."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"
