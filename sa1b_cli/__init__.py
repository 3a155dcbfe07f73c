"""sa1b: download, verify and extract Meta's SA-1B dataset."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
