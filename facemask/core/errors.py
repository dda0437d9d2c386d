"""The errors a user can cause, all under one base.

Each message names what was wrong and the fix. The CLI prints a `FacemaskError` in one
line (exit 2); any other exception is a bug and is reported as one. The second base of
each class keeps `except ValueError` / `except FileNotFoundError` callers working.
"""

from __future__ import annotations


class FacemaskError(Exception):
    """Something the user can fix; the message says how."""


class ConfigError(FacemaskError, ValueError):
    """An option, config file or argument value that cannot work."""


class InputNotFoundError(FacemaskError, FileNotFoundError):
    """A file or folder the user named does not exist."""


class ModelNotFoundError(FacemaskError, LookupError):
    """A model URI that names nothing loadable; the message says what was missing."""


class PretrainedUnavailableError(FacemaskError):
    """A pretrained weights name that cannot be had: not cached and no network."""


class EmptyDatasetError(FacemaskError, ValueError):
    """A source that holds no usable image at all."""


class EndpointError(FacemaskError, RuntimeError):
    """An HTTP error answer from a facemask endpoint, with the server's own code and message."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(f"{status} {error}: {message}")
        self.status, self.error, self.message = status, error, message


class RayStartFailed(FacemaskError, RuntimeError):
    """The local Ray a command starts did not come up: the machine, not the user's input (exit 1)."""


class StudyInterrupted(FacemaskError, RuntimeError):
    """The study stopped before its trials did (Ctrl-C, `ray job stop`); it can be resumed."""


class TrackingUnavailableError(FacemaskError):
    """The MLflow tracking server did not take a write that cannot be skipped."""
