"""Is an image part an image: checked before it reaches an engine.

A vision engine handed bytes that are no image, or a URL it will not fetch (the
engines mlx-lama starts never reach the network), fails the request with its own
500 or an error of its own words; the client should get a 400 that says what to
send. Only the first bytes are looked at, after the whole payload is checked to
be base64. Pure: no I/O.
"""

from __future__ import annotations

import base64
import binascii

from mlx_lama.gateway.http import ApiError

# The formats vision engines read (Pillow's), by the bytes they start with.
_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\x89PNG\r\n\x1a\n", "PNG"),
    (0, b"\xff\xd8\xff", "JPEG"),
    (0, b"GIF87a", "GIF"),
    (0, b"GIF89a", "GIF"),
    (8, b"WEBP", "WebP"),  # after "RIFF" and the size
    (0, b"BM", "BMP"),
    (0, b"II*\x00", "TIFF"),
    (0, b"MM\x00*", "TIFF"),
)
FORMATS = "PNG, JPEG, GIF, WebP, BMP or TIFF"


def check_image_url(where: str, url: str, *, fetches: bool) -> None:
    """Refuse (ApiError 400) an image ``url`` that is a ``data:`` URL of no image, or a
    web URL for an engine that does not fetch (``fetches`` false)."""
    if url.startswith("data:"):
        header, comma, payload = url.partition(",")
        if not comma or not header.endswith(";base64"):
            raise _bad(f"{where} is a data: URL without base64 image bytes")
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise _bad(f"{where} is not valid base64") from None
        if image_format(data) is None:
            raise _bad(f"{where} holds no image")
        return
    if not fetches:
        raise ApiError(
            400,
            f"{where} is a web address, which this model's engine does not fetch: "
            "send the image inline, as a data: URL (data:image/png;base64,...) or, on "
            "Ollama's API, base64 in images",
        )


def image_format(data: bytes) -> str | None:
    """The image format ``data`` starts with, or None."""
    for offset, signature, name in _SIGNATURES:
        if data[offset : offset + len(signature)] == signature:
            return name
    return None


def _bad(message: str) -> ApiError:
    return ApiError(400, f"{message}: send {FORMATS} bytes, base64-encoded")
