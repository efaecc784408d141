"""One exception family. Every error names the thing that was wrong and ends with a hint.

The CLI turns a `SurgeryError` into exit code 2 and one plain line on stderr; anything
else is an internal error (exit 1).
"""

from __future__ import annotations


class SurgeryError(Exception):
    """Bad input or usage. `message` says what and where; `hint` says what to try."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class ModelLoadError(SurgeryError):
    """A model path that is missing, empty, corrupt or of no known format."""


class TensorNotFoundError(SurgeryError):
    """A tensor or op name that is not in the graph."""


class RestoreError(SurgeryError):
    """A restore plan that cannot be carried out (missing or mismatched variables)."""


class CutError(SurgeryError):
    """A split whose cut does not separate the graph, or cannot be made."""


class DataError(SurgeryError):
    """Input data (HDF5/npy) that is missing, of the wrong shape or dtype."""


class OutputError(SurgeryError):
    """An output location that cannot be written."""


class GraphTooBigError(OutputError):
    """A frozen graph past protobuf's 2 GB limit (`split --format auto` then keeps variables instead)."""


class CheckpointError(ModelLoadError):
    """A checkpoint whose files are damaged: a bad index, truncated or bit-flipped data."""
