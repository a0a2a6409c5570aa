"""Image message payloads <-> numpy, without cv_bridge (not installable from PyPI).

Works on the fields of sensor_msgs/Image and CompressedImage, so rclpy and rosbags messages
alike. Decoded images are BGR (H, W, 3) uint8 or mono (H, W) uint8/uint16.
"""
from __future__ import annotations

import io
import warnings
from typing import Any

import cv2
import numpy as np
from PIL import Image as PILImage

# encoding -> (channels, dtype)
ENCODINGS: dict[str, tuple[int, np.dtype]] = {
    "mono8": (1, np.dtype(np.uint8)),
    "8UC1": (1, np.dtype(np.uint8)),
    "mono16": (1, np.dtype(np.uint16)),
    "16UC1": (1, np.dtype(np.uint16)),
    "bgr8": (3, np.dtype(np.uint8)),
    "rgb8": (3, np.dtype(np.uint8)),
    "8UC3": (3, np.dtype(np.uint8)),
    "bgra8": (4, np.dtype(np.uint8)),
    "rgba8": (4, np.dtype(np.uint8)),
}
MAX_PIXELS = 64_000_000  # refuse absurd dimensions before allocating


class ImageError(ValueError):
    """An image message that cannot be decoded (wrong encoding, sizes, corrupt bytes)."""


def decode_image(msg: Any) -> np.ndarray:
    """Decode a sensor_msgs/Image to BGR or mono numpy, checking sizes against the data."""
    enc = str(msg.encoding)
    if enc not in ENCODINGS:
        raise ImageError(f"unsupported encoding {enc!r}; supported: {sorted(ENCODINGS)}")
    ch, dtype = ENCODINGS[enc]
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h <= 0 or w <= 0:
        raise ImageError(f"zero-size image {w}x{h}")
    if h * w > MAX_PIXELS:
        raise ImageError(f"image of {w}x{h} exceeds {MAX_PIXELS} pixels")
    row = w * ch * dtype.itemsize
    if step < row:
        raise ImageError(f"step {step} < width*channels*bytes {row} for {enc}")
    buf = np.frombuffer(msg.data, dtype=np.uint8)
    if buf.size < step * (h - 1) + row:
        raise ImageError(f"data has {buf.size} bytes, {enc} {w}x{h} with step {step} needs {step * h}")
    rows = np.lib.stride_tricks.as_strided(buf, shape=(h, row), strides=(step, 1))
    img = np.ascontiguousarray(rows).view(dtype.newbyteorder(">" if msg.is_bigendian else "<"))
    img = img.astype(dtype).reshape((h, w, ch) if ch > 1 else (h, w))
    if enc == "rgb8":
        return cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    if enc == "bgra8":
        return cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    if enc == "rgba8":
        return cv2.cvtColor(img, cv2.COLOR_RGBA2BGR)
    return img


def decode_compressed(msg: Any) -> np.ndarray:
    """Decode a sensor_msgs/CompressedImage (jpeg or png) to BGR or mono numpy."""
    fmt = str(msg.format).lower()
    if not any(k in fmt for k in ("jpeg", "jpg", "png")):
        raise ImageError(f"unsupported compressed format {msg.format!r}; expected jpeg or png")
    raw = bytes(msg.data)
    if not raw:
        raise ImageError("empty compressed image")
    w, h = _header_size(raw)
    if w * h > MAX_PIXELS:  # a decompression bomb: refuse before decoding allocates it
        raise ImageError(f"compressed image claims {w}x{h}, over {MAX_PIXELS} pixels")
    img = cv2.imdecode(np.frombuffer(raw, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None or img.size == 0:
        raise ImageError(f"corrupt {fmt} data ({len(raw)} bytes)")
    if img.ndim == 3 and img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    return img


def _header_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a JPEG or PNG header, without decoding the pixels."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PILImage.DecompressionBombWarning)  # MAX_PIXELS decides
            with PILImage.open(io.BytesIO(data)) as im:
                return im.size
    except PILImage.DecompressionBombError as exc:
        raise ImageError(f"compressed image too large: {exc}") from exc
    except (OSError, ValueError, SyntaxError) as exc:  # what Pillow raises on unreadable headers
        raise ImageError(f"corrupt jpeg/png data: unreadable header ({len(data)} bytes)") from exc


def encode_image(img: np.ndarray, encoding: str) -> dict[str, Any]:
    """sensor_msgs/Image fields (height, width, encoding, is_bigendian, step, data) for a BGR/mono image."""
    if encoding not in ENCODINGS:
        raise ImageError(f"unsupported encoding {encoding!r}")
    ch, dtype = ENCODINGS[encoding]
    src = img if img.ndim == 3 else img[:, :, None]
    if ch == 1:
        out = src[:, :, 0] if src.shape[2] == 1 else cv2.cvtColor(src, cv2.COLOR_BGR2GRAY)
        if dtype == np.uint16 and out.dtype != np.uint16:
            out = out.astype(np.uint16) * 257
    else:
        bgr = src if src.shape[2] == 3 else cv2.cvtColor(src, cv2.COLOR_GRAY2BGR)
        conv = {"rgb8": cv2.COLOR_BGR2RGB, "bgra8": cv2.COLOR_BGR2BGRA, "rgba8": cv2.COLOR_BGR2RGBA}
        out = cv2.cvtColor(bgr, conv[encoding]) if encoding in conv else bgr
    out = np.ascontiguousarray(out.astype(dtype, copy=False))
    h, w = out.shape[:2]
    return dict(height=h, width=w, encoding=encoding, is_bigendian=0,
                step=w * ch * dtype.itemsize, data=out.reshape(-1).view(np.uint8))


def encode_compressed(img: np.ndarray, fmt: str = "jpeg", quality: int = 95) -> dict[str, Any]:
    """sensor_msgs/CompressedImage fields (format, data) for a BGR/mono image."""
    ext = {"jpeg": ".jpg", "png": ".png"}.get(fmt)
    if ext is None:
        raise ImageError(f"unsupported compressed format {fmt!r}")
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if fmt == "jpeg" else []
    ok, buf = cv2.imencode(ext, img, params)
    if not ok:
        raise ImageError(f"could not encode {fmt}")
    return dict(format=fmt, data=buf.reshape(-1))


def to_gray(img: np.ndarray) -> np.ndarray:
    """Greyscale uint8 of a decoded image (16-bit mono is scaled down)."""
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    return img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
