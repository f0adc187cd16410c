"""Moved: :class:`pipeline.settings.Ports` (kept importable until the stack leaves the package)."""

from pipeline.settings import HOST, Ports

__all__ = ["HOST", "Ports"]
