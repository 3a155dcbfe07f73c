"""An annotation's masks measured against what it says of them, however many it has."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from sa1b_cli.core.content import AnnotationInput, check_annotation


def document(masks: int, wrong: int) -> bytes:
    """An image of ``masks`` 10x10 squares, each saying its area and box; ``wrong`` lies."""
    square = np.zeros((60, 80), dtype=np.uint8, order="F")
    square[10:20, 30:40] = 1
    counts = mask_utils.encode(square)["counts"].decode()
    annotations = [
        {
            "id": k,
            "area": 101 if k == wrong else 100,
            "bbox": [30.0, 10.0, 10.0, 10.0],
            "segmentation": {"size": [60, 80], "counts": counts},
        }
        for k in range(masks)
    ]
    image = {"image_id": 1, "width": 80, "height": 60, "file_name": "sa_1.jpg"}
    return json.dumps({"image": image, "annotations": annotations}).encode()


@pytest.mark.parametrize("masks", [1, 255, 256, 600])
@pytest.mark.parametrize("decode", [False, True])
def test_every_mask_is_measured_past_255(masks: int, decode: bool):
    """pycocotools' area() fails past 255 masks under numpy 2: such images went unchecked."""
    check = check_annotation(AnnotationInput(1, document(masks, wrong=masks - 1)), decode=decode)
    assert check.errors == [f"annotation {masks - 1}: area 101, RLE has 100 pixels"]
    assert check.masks == masks
