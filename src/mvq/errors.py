"""The errors mvq raises for input it cannot use, under one base class ``MVQError``.

The ``mvq`` command prints an ``MVQError`` as one line ``mvq: error: ...`` (exit status 2);
any other exception is a bug and keeps its traceback. Each subclass also derives from the
built-in type a Python caller would catch (``ValueError``, ``KeyError``, ...).

Errors owned by one module live there (``CheckpointError`` in ``mvq.pretrained``,
``DataError`` in ``mvq.data``, ``RunDirError`` and ``TrainingDiverged`` in ``mvq.training``,
``EvalError``, ``VizError``, ``SweepError``); the shared ones live here.
"""

from __future__ import annotations


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
