"""Stage 4, show: one image with its masks drawn over it, read from an extracted layout (found
through its indexes and markers) or straight from a downloaded tar.
"""

from __future__ import annotations

from sa1b_cli.show.image import ShowConfig, ShowResult, find_image, parse_image_id, show_image

__all__ = ["ShowConfig", "ShowResult", "find_image", "parse_image_id", "show_image"]
