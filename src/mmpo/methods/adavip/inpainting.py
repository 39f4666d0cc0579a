"""Object removal for AdaViP's candidates: fill a mask from its surroundings (stage 4, Eq. 8).

The paper (AdaViP, "AdaViP: Aligning Multi-modal LLMs via Adaptive Vision-enhanced Preference
Optimization", arXiv:2504.15619, section 3.2) removes each segmented object with Big-LaMa. Every
inpainter here implements :class:`Inpainter` and changes pixels **only inside the mask dilated by
``dilate`` pixels** (the dilation covers the object's anti-aliased rim and a segmenter's slightly
tight edge); outside it the candidate is the original, pixel for pixel.

* :class:`TeleaInpainter` — OpenCV's fast-marching inpainting (Telea 2004), weight-free, the default;
* :class:`MeanFillInpainter` — no dependency at all: the mask takes the median (or mean) colour of
  a ring of pixels around it; enough for flat backgrounds such as the synthetic world's;
* :class:`TorchScriptInpainter` — a learned inpainter exported to TorchScript from a local file,
  with LaMa's calling convention (how Big-LaMa is commonly distributed, e.g. ``big-lama.pt``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from mmpo.io import load_image

__all__ = ["Inpainter", "MeanFillInpainter", "TeleaInpainter", "TorchScriptInpainter", "composite", "dilate_mask"]


@runtime_checkable
class Inpainter(Protocol):
    """Removes what is under a mask: the image with the masked region filled in.

    A learned inpainter (LaMa, or a diffusion inpainting model) fits the same interface: take the
    RGB image and the ``(H, W)`` boolean mask, return an RGB image of the same size. Keep pixels
    outside the (dilated) mask unchanged — :func:`composite` does that for any model output — so
    a candidate differs from the original only where the object was.
    """

    def inpaint(self, image: Image.Image, mask: np.ndarray) -> Image.Image:
        """``image`` (RGB) with the ``(H, W)`` boolean ``mask`` region filled; same size, RGB."""
        ...


def dilate_mask(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Binary dilation by a ``(2 * pixels + 1)`` square: every pixel within Chebyshev distance
    ``pixels`` of the mask. Separable: a running OR along rows, then along columns."""
    out = np.asarray(mask, dtype=bool)
    if pixels <= 0:
        return out.copy()
    height, width = out.shape
    padded = np.pad(out, ((0, 0), (pixels, pixels)))  # (H, W + 2p)
    rows = np.zeros_like(out)
    for dx in range(2 * pixels + 1):
        rows |= padded[:, dx:dx + width]
    padded = np.pad(rows, ((pixels, pixels), (0, 0)))  # (H + 2p, W)
    result = np.zeros_like(out)
    for dy in range(2 * pixels + 1):
        result |= padded[dy:dy + height, :]
    return result


def composite(original: np.ndarray, filled: np.ndarray, region: np.ndarray) -> Image.Image:
    """``filled`` inside ``region``, ``original`` elsewhere; ``(H, W, 3)`` uint8 arrays, ``(H, W)`` bool."""
    return Image.fromarray(np.where(region[..., None], filled, original).astype(np.uint8), "RGB")


def _prepare(image: Image.Image, mask: np.ndarray, dilate: int) -> tuple[np.ndarray, np.ndarray]:
    rgb = np.asarray(load_image(image))  # (H, W, 3) uint8
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != rgb.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} does not match the image's (H, W) = {rgb.shape[:2]}")
    return rgb, dilate_mask(mask, dilate)


class TeleaInpainter:
    """OpenCV ``cv2.inpaint`` with ``INPAINT_TELEA`` on the mask dilated by ``dilate`` pixels.

    Args:
        radius: the neighbourhood each filled pixel is estimated from, in pixels.
        dilate: how far the mask is grown first (see the module docstring).
    """

    def __init__(self, radius: float = 3.0, dilate: int = 2):
        try:
            import cv2
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("TeleaInpainter needs OpenCV: pip install opencv-python-headless "
                              "(or use MeanFillInpainter, which needs nothing)") from exc
        self._cv2 = cv2
        self.radius, self.dilate = radius, dilate

    def inpaint(self, image: Image.Image, mask: np.ndarray) -> Image.Image:
        rgb, region = _prepare(image, mask, self.dilate)
        if not region.any():
            return Image.fromarray(rgb, "RGB")
        # cv2.inpaint treats the three channels alike, so RGB order is as good as BGR
        filled = self._cv2.inpaint(rgb, region.astype(np.uint8) * 255, self.radius, self._cv2.INPAINT_TELEA)
        return composite(rgb, filled, region)


class MeanFillInpainter:
    """Fills the dilated mask with one colour: the per-channel median (default) or mean of a ring
    ``ring`` pixels wide around it. The median ignores a neighbouring object that reaches into the
    ring. When the ring is empty (the mask covers the image) the whole image's statistic is used.

    Args:
        dilate: how far the mask is grown first.
        ring: width of the ring the colour is taken from, in pixels.
        statistic: ``"median"`` or ``"mean"``.
    """

    def __init__(self, dilate: int = 2, ring: int = 3, statistic: Literal["median", "mean"] = "median"):
        if statistic not in ("median", "mean"):
            raise ValueError(f"statistic must be 'median' or 'mean', got {statistic!r}")
        if ring < 1:
            raise ValueError(f"ring must be >= 1, got {ring}")
        self.dilate, self.ring, self.statistic = dilate, ring, statistic

    def inpaint(self, image: Image.Image, mask: np.ndarray) -> Image.Image:
        rgb, region = _prepare(image, mask, self.dilate)
        if not region.any():
            return Image.fromarray(rgb, "RGB")
        around = dilate_mask(region, self.ring) & ~region
        source = rgb[around] if around.any() else rgb.reshape(-1, 3)  # (P, 3)
        reduce = np.median if self.statistic == "median" else np.mean
        colour = np.rint(reduce(source, axis=0)).astype(np.uint8)  # (3,)
        filled = np.broadcast_to(colour, rgb.shape)
        return composite(rgb, filled, region)


class TorchScriptInpainter:
    """A learned inpainter from a local TorchScript file, with LaMa's calling convention.

    ``model(image, mask) -> output``: ``image`` ``(1, 3, H, W)`` float RGB in ``[0, 1]``, ``mask``
    ``(1, 1, H, W)`` float with 1 where to fill, ``output`` ``(1, 3, H, W)`` in ``[0, 1]``. ``H`` and
    ``W`` are padded (reflection) up to a multiple of ``pad_multiple`` (LaMa: 8) and the output
    cropped back; the result keeps the original pixels outside the dilated mask.

    Args:
        path: the ``.pt`` file (``torch.jit.save`` output, e.g. Big-LaMa's TorchScript export).
        device: where to run; defaults to CUDA when available.
        dilate: how far the mask is grown first.
        pad_multiple: the size multiple the model needs.
    """

    def __init__(self, path: str | Path, *, device: str | None = None, dilate: int = 2, pad_multiple: int = 8):
        import torch

        self.device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = torch.jit.load(str(path), map_location=self.device).eval()
        self.dilate, self.pad_multiple = dilate, max(int(pad_multiple), 1)

    def inpaint(self, image: Image.Image, mask: np.ndarray) -> Image.Image:
        import torch

        rgb, region = _prepare(image, mask, self.dilate)
        if not region.any():
            return Image.fromarray(rgb, "RGB")
        height, width = region.shape
        x = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float().div(255)  # (1, 3, H, W)
        m = torch.from_numpy(region)[None, None].float()  # (1, 1, H, W)
        pad_h, pad_w = -height % self.pad_multiple, -width % self.pad_multiple
        if pad_h or pad_w:
            mode = "reflect" if pad_h < height and pad_w < width else "replicate"
            x = torch.nn.functional.pad(x, (0, pad_w, 0, pad_h), mode=mode)
            m = torch.nn.functional.pad(m, (0, pad_w, 0, pad_h))
        with torch.no_grad():
            out = self.model(x.to(self.device), m.to(self.device))  # (1, 3, H', W')
        out = out[0, :, :height, :width].clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()
        return composite(rgb, out, region)
