"""Exception classes. Every error zmlx_rs raises is a ZmlxError, itself a ValueError."""

from zmlx_rs._native import BackendError, CheckpointError, DTypeError, ShapeError, ZmlxError

__all__ = ["BackendError", "CheckpointError", "DTypeError", "ShapeError", "ZmlxError"]
