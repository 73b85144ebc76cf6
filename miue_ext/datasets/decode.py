"""One image file to one uint8 RGB array: opened defensively, EXIF orientation applied, colour
mode converted to RGB and, when an image size is asked for, resized and centre-cropped.

The resize and crop are torchvision's `Resize(R)` followed by `CenterCrop(S)` on a PIL image
(the authors' pipeline: R 256, S 224 for ImageNet-100): the shorter side becomes R, the longer
side int(R * long / short) (truncated), bilinear with PIL's antialiasing; then the S x S square
at offsets round((size - S) / 2) is kept. Without an image size the image keeps its own size.

Called from worker threads (PIL releases the GIL while it decodes and resamples), so nothing
here touches the global warnings filters: the caller escalates DecompressionBombWarning once,
around the whole loop, and `open_image` also checks the pixel count itself.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from miue_ext.errors import InputError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
EXIF_ORIENTATION = 0x0112
TURNED_ORIENTATIONS = {5, 6, 7, 8}  # EXIF orientations that turn the image by 90 degrees
# Resampling the whole image to a shorter side of R makes an R x (R * aspect) intermediate: a
# few hundred KiB for a photo, but petabytes for a 1 x 80-million-pixel strip (which passes
# PIL's pixel limit). Above this many bytes only the region the crop keeps is resampled (PIL's
# `box`: the same filter and the same pixels, up to one level of rounding).
MAX_INTERMEDIATE_BYTES = 256 << 20


def open_image(file: Path):
    """PIL image (not yet decoded), refused when it declares more than PIL's MAX_IMAGE_PIXELS."""
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(file)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise InputError(f"{file}: refused, a possible decompression bomb ({err})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as err:
        raise InputError(f"{file}: not a readable image ({err})") from None
    limit, (w, h) = Image.MAX_IMAGE_PIXELS, img.size
    if limit is not None and w * h > limit:  # the warning was not escalated (e.g. in a thread)
        img.close()
        raise InputError(
            f"{file}: refused, a possible decompression bomb ({w}x{h} = {w * h} pixels, more "
            f"than PIL's limit of {limit})"
        )
    return img


def display_size(img) -> tuple[int, int]:
    """(width, height) once the EXIF orientation is applied; read from the header, not decoded."""
    w, h = img.size
    try:
        orientation = img.getexif().get(EXIF_ORIENTATION)
    except Exception:  # noqa: BLE001  (a corrupt EXIF block: exif_transpose ignores it too)
        orientation = None
    return (h, w) if orientation in TURNED_ORIENTATIONS else (w, h)


def to_rgb(img, file: Path):
    """The decoded image, upright (EXIF orientation) and in RGB mode."""
    from PIL import Image, ImageOps

    try:
        img = ImageOps.exif_transpose(img)  # decodes
        if img.mode.startswith("I;16"):
            # 16-bit greyscale (e.g. a 16-bit PNG): PIL's convert would clip at 255 (all white)
            img = Image.fromarray(np.rint(np.asarray(img, dtype=np.float64) / 257.0).astype(np.uint8))
        if img.mode == "P" and "transparency" in img.info:
            img = img.convert("RGBA")  # the same colours; PIL warns on a direct P -> RGB here
        # Alpha is dropped, not composited (what torchvision's image loader does too).
        try:
            return img.convert("RGB")
        except ValueError:  # e.g. mode "La": PIL has no direct conversion to RGB
            return img.convert("RGBA").convert("RGB")
    except InputError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError, TypeError, KeyError) as err:
        raise InputError(f"{file}: not a readable image ({err})") from None


def resized_size(width: int, height: int, resize_to: int) -> tuple[int, int]:
    """torchvision's Resize(R) on (width, height): shorter side R, longer side truncated."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(resize_to * long / short)
    return (resize_to, new_long) if width <= height else (new_long, resize_to)


def resize_and_crop(img, resize_to: int, crop: int):
    """The RGB image resized (shorter side `resize_to`) and centre-cropped to crop x crop."""
    from PIL import Image

    w, h = img.size
    new_w, new_h = resized_size(w, h, resize_to)
    left, top = int(round((new_w - crop) / 2.0)), int(round((new_h - crop) / 2.0))  # torchvision's CenterCrop
    if new_w * new_h * 3 <= MAX_INTERMEDIATE_BYTES:
        return img.resize((new_w, new_h), Image.BILINEAR).crop((left, top, left + crop, top + crop))
    sx, sy = w / new_w, h / new_h
    box = (left * sx, top * sy, (left + crop) * sx, (top + crop) * sy)
    return img.resize((crop, crop), Image.BILINEAR, box=box)


def decode_file(file: Path, resize_to: int | None = None, crop: int | None = None) -> np.ndarray:
    """uint8 [H, W, 3]: the image upright in RGB; with `crop`, resized and cropped to crop x crop."""
    img = open_image(file)
    try:
        rgb = to_rgb(img, file)
        if crop is not None:
            try:
                rgb = resize_and_crop(rgb, resize_to or crop, crop)
            except (OSError, ValueError, MemoryError) as err:
                raise InputError(f"{file}: cannot resize it to {crop}x{crop} ({err})") from None
        return np.asarray(rgb, dtype=np.uint8)
    finally:
        img.close()
