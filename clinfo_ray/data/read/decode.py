"""Decode a batch of encoded images to one uint8 array, reporting the ones that fail."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image

from clinfo_ray.data import columns as C

WHITE = (255, 255, 255)


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB; transparent pixels (emoji are RGBA) become white, not the black of a plain convert."""
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        img = img.convert("RGBA")
        canvas = Image.new("RGB", img.size, WHITE)
        canvas.paste(img, mask=img.getchannel("A"))
        return canvas
    return img.convert("RGB")


def decode_image(blob: bytes, size: int) -> np.ndarray:
    """(3, size, size) uint8: shorter side resized to ``size``, then the centre square."""
    with Image.open(io.BytesIO(blob)) as raw:
        return image_array(raw, size)


def image_array(raw: Image.Image, size: int) -> np.ndarray:
    """:func:`decode_image` of an image as ``Image.open`` returns it (a JPEG not loaded yet is
    decoded at a reduced scale when that is enough; a loaded one is taken at full size)."""
    raw.draft("RGB", (size, size))  # JPEG: decode at a reduced scale when it is enough
    img = _to_rgb(raw)
    w, h = img.size
    if (w, h) != (size, size):
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        img = img.resize((nw, nh), Image.Resampling.BILINEAR, reducing_gap=2.0)
        left, top = (nw - size) // 2, (nh - size) // 2
        img = img.crop((left, top, left + size, top + size))
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)


def decode_batch(blobs: Sequence[bytes], size: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Decode every blob: (images (N_ok, 3, size, size) uint8, ok mask (N,), failure reasons)."""
    images = np.empty((len(blobs), 3, size, size), dtype=np.uint8)
    ok = np.zeros(len(blobs), dtype=bool)
    reasons: list[str] = []
    for i, blob in enumerate(blobs):
        try:
            images[i] = decode_image(blob, size)
            ok[i] = True
        except Exception as err:  # PIL raises many types for bad data; all mean "not an image"
            reasons.append(f"{type(err).__name__}: {err}")
    return images[ok], ok, reasons


def source_side(files: Sequence[str], sample: int = 64) -> int:
    """The largest shorter side among the first ``sample`` images of a split's Parquet files
    (headers only: nothing is decoded); what ``data.decode_size`` is capped by."""
    from clinfo_ray.storage import location as loc  # only the driver calls this

    sides: list[int] = []
    for path in files:
        reader = loc.open_parquet(path)  # a local path or a URI
        for group in range(reader.metadata.num_row_groups):
            blobs = reader.read_row_group(group, columns=[C.IMAGE]).column(0).to_pylist()
            for blob in blobs[: sample - len(sides)]:
                try:
                    with Image.open(io.BytesIO(blob)) as img:
                        sides.append(min(img.size))
                except Exception:  # an undecodable image is counted where it is streamed
                    continue
            if len(sides) >= sample:
                return max(sides)
    if not sides:
        raise ValueError(f"no readable image in {files[0] if files else 'the split'}")
    return max(sides)
