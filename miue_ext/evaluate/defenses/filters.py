"""Image filters that "squeeze" perturbations out of a whole image set before training.

Each takes and returns uint8 images [N, H, W, C] (a new array; the input is not modified)
and is deterministic, so it is applied once to the data set rather than to every batch.
"""

from __future__ import annotations

import io
import math

import numpy as np

from miue_ext.errors import InputError

LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601, what PIL's "L" mode uses


def jpeg(images: np.ndarray, quality: int) -> np.ndarray:
    """Encode and decode every image as JPEG at `quality` (1..95): destroys fine, high-frequency noise."""
    from PIL import Image

    out = np.empty_like(images)
    for n, image in enumerate(images):
        pil = Image.fromarray(image[..., 0] if image.shape[2] == 1 else image)
        buffer = io.BytesIO()
        pil.save(buffer, format="JPEG", quality=quality)
        buffer.seek(0)
        decoded = np.asarray(Image.open(buffer).convert(pil.mode))
        out[n] = decoded.reshape(image.shape)
    return out


def grayscale(images: np.ndarray) -> np.ndarray:
    """Luma, replicated to every channel (the shape stays [N, H, W, C] so the model is unchanged)."""
    if images.shape[3] == 1:
        return images.copy()
    luma = images[..., :3].astype(np.float32) @ np.asarray(LUMA_WEIGHTS, np.float32)
    gray = np.clip(np.rint(luma), 0, 255).astype(np.uint8)
    return np.repeat(gray[..., None], images.shape[3], axis=3)


def mean_colour_removal(images: np.ndarray) -> np.ndarray:
    """Each image's mean colour moved to mid-grey: x - mean(x) + 128 per channel, clipped. A global
    colour shift of the image is gone (up to clipping), and with it whatever colour told the classes apart."""
    x = images.astype(np.float32)
    centred = x - x.mean(axis=(1, 2), keepdims=True) + 128.0
    return np.clip(np.rint(centred), 0, 255).astype(np.uint8)


def bit_depth_reduction(images: np.ndarray, bits: int) -> np.ndarray:
    """Keep 2**bits evenly spaced levels per channel (0 and 255 included)."""
    levels = 2**bits - 1
    scaled = np.rint(images.astype(np.float32) * (levels / 255.0))
    return np.clip(np.rint(scaled * (255.0 / levels)), 0, 255).astype(np.uint8)


def gaussian_kernel(sigma: float) -> np.ndarray:
    radius = max(1, math.ceil(2 * sigma))
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    return (kernel / kernel.sum()).astype(np.float32)


def gaussian_blur(images: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur (kernel radius ceil(2 sigma)), reflecting at the borders."""
    import torch
    import torch.nn.functional as F

    kernel = torch.from_numpy(gaussian_kernel(sigma))
    radius = (kernel.numel() - 1) // 2
    channels = images.shape[3]
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    if radius >= min(images.shape[1:3]):  # reflect padding needs radius < size
        raise InputError(f"--defense blur:{sigma:g} is too large for {images.shape[1]}x{images.shape[2]} images")
    horizontal = kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)
    vertical = kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), horizontal, groups=channels)
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), vertical, groups=channels)
    return x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
