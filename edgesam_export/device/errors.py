"""Typed errors and the exit codes the CLI maps them to.

Every error says what went wrong and what to do about it; the CLI prints one line and exits
with the code of the error's class, so CI scripts can tell a bad checkpoint from a parity failure.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes of `edgesam-export` and `edgesam-bench` (documented in docs/cli.md)."""

    OK = 0
    INTERNAL = 1  # a bug: please report it with the traceback (`--debug`)
    USAGE = 2  # bad command-line usage (Typer/Click's own code)
    BAD_INPUT = 3  # missing/unreadable/foreign checkpoint, bad image, bad prompt, bad option value
    PARITY_FAILED = 4  # an artifact ran but its outputs are outside tolerance
    ARTIFACT_UNREADABLE = 5  # an artifact file is missing, truncated or not loadable by its runtime
    BACKEND_UNAVAILABLE = 6  # the backend's Python package (or hardware) is not present
    EXPORT_FAILED = 7  # the exporter or converter raised while producing an artifact


class EdgeSamExportError(Exception):
    """Base class: carries the exit code the CLI should use."""

    exit_code: ExitCode = ExitCode.INTERNAL


class CheckpointError(EdgeSamExportError):
    """The checkpoint is missing, unreadable, of another family, or has the wrong keys."""

    exit_code = ExitCode.BAD_INPUT


class InputError(EdgeSamExportError):
    """A user-supplied value (option, image, prompt, recipe) is invalid."""

    exit_code = ExitCode.BAD_INPUT


class BackendUnavailableError(EdgeSamExportError):
    """The runtime or converter for a backend is not installed; the message names the install."""

    exit_code = ExitCode.BACKEND_UNAVAILABLE


class ArtifactError(EdgeSamExportError):
    """An exported artifact cannot be read or run (missing, truncated, corrupted)."""

    exit_code = ExitCode.ARTIFACT_UNREADABLE


class ExportFailedError(EdgeSamExportError):
    """The exporter itself failed; nothing was left at the destination."""

    exit_code = ExitCode.EXPORT_FAILED
