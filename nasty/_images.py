"""Decoding image files into uint8 pixels, safely: a regular file only, its pixel count checked
from the header before it is decoded, and the decoded size checked before it is allocated."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from .errors import DataError, first_line, one_line
from .safety import limit, open_regular, over_limit

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def _check_decoded(what: str, images: int, channels: int, size: int) -> None:
    """Refuse, before allocating, uint8 images that would exceed the decoded-data limit."""
    total = images * channels * size * size
    if total > limit("DATA_BYTES"):
        raise DataError(over_limit(what, total, "DATA_BYTES"))


def _pixels(im, size: int) -> np.ndarray:
    from PIL import Image

    im = im.convert("RGB")
    if im.size != (size, size):
        im = im.resize((size, size), Image.BILINEAR)
    return np.asarray(im).transpose(2, 0, 1)


def _open_image(path: Path, use):
    """``use(image)`` for the image at ``path``: only a regular file, its pixel count (from the
    header) within the limit before it is decoded; anything undecodable is one line."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = limit("IMAGE_PIXELS")  # PIL's own bomb check, at our limit, as an error
    with open_regular(path, limit_name="DATA_BYTES", error=DataError) as f, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(f) as im:
                w, h = im.size
                if w * h > limit("IMAGE_PIXELS"):
                    raise DataError(over_limit(f"{one_line(path)} ({w}x{h})", w * h, "IMAGE_PIXELS", "pixels"))
                if w < 1 or h < 1:
                    raise DataError(f"{one_line(path)}: an empty image")
                return use(im)
        except DataError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise DataError(f"{one_line(path)}: {first_line(e)} (set NASTY_MAX_IMAGE_PIXELS to raise the limit)") from None
        except (OSError, ValueError, SyntaxError, MemoryError) as e:
            raise DataError(f"{one_line(path)}: not a readable image ({first_line(e)})") from None
