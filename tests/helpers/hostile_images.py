"""Hostile and valid image files for the decoding tests: one small file per allowed format and variant, files
of refused formats, deterministic mutants, a PNG text-chunk bomb, 1-pixel strips, a float TIFF of any header
size."""

from __future__ import annotations

import io
import random
import struct
import zlib

import numpy as np
from PIL import Image, PngImagePlugin
from stand_ins import eps_bytes


def _encoded(image: Image.Image, format_: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format_, **options)
    return buffer.getvalue()


def _picture(mode: str = "RGB", size=(23, 17), seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels).convert(mode)


def allowed_seeds() -> dict[str, bytes]:
    """One small valid file per allowed format and per interesting variant of it."""
    rgb = _picture()
    grey16 = Image.fromarray((np.arange(23 * 17, dtype=np.uint16).reshape(17, 23) * 150))
    floats = Image.fromarray(np.linspace(0, 1, 23 * 17, dtype=np.float32).reshape(17, 23), mode="F")
    return {
        "png-rgb": _encoded(rgb, "PNG"),
        "png-rgba": _encoded(_picture("RGBA"), "PNG"),
        "png-palette": _encoded(_picture("P"), "PNG"),
        "png-grey16": _encoded(grey16, "PNG"),
        "png-optimized": _encoded(rgb, "PNG", optimize=True),
        "jpeg": _encoded(rgb, "JPEG", quality=80),
        "jpeg-progressive": _encoded(rgb, "JPEG", progressive=True, quality=70),
        "jpeg-exif": _encoded(rgb, "JPEG", exif=_rotated_exif()),
        "bmp": _encoded(rgb, "BMP"),
        "bmp-palette": _encoded(_picture("P"), "BMP"),
        "tiff-raw": _encoded(rgb, "TIFF"),
        "tiff-lzw": _encoded(rgb, "TIFF", compression="tiff_lzw"),
        "tiff-deflate-float": _encoded(floats, "TIFF", compression="tiff_adobe_deflate"),
        "tiff-cmyk": _encoded(_picture("CMYK"), "TIFF"),
        "webp": _encoded(rgb, "WEBP", quality=80),
        "webp-lossless": _encoded(_picture("RGBA"), "WEBP", lossless=True),
    }


def refused_seeds() -> dict[str, bytes]:
    """Formats Pillow knows but the contract refuses (EPS would run Ghostscript; the others are outside the list)."""
    rgb = _picture()
    return {
        "eps": eps_bytes(),
        "pdf": _encoded(rgb, "PDF"),
        "ppm": _encoded(rgb, "PPM"),
        "gif": _encoded(rgb, "GIF"),
        "ico": _encoded(rgb, "ICO"),
        "pcx": _encoded(rgb, "PCX"),
        "tga": _encoded(rgb, "TGA"),
        "sgi": _encoded(rgb, "SGI"),
        "im": _encoded(rgb, "IM"),
    }


def _rotated_exif() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: the decoded image is 17x23
    return exif.tobytes()


def mutants(data: bytes, seed: int, count: int):
    """`count` deterministic mutants of `data`: byte flips (mostly in the header), truncations, 16/32-bit header
    fields set to extreme values, duplicated and deleted runs."""
    rng = random.Random(seed)
    extremes = (0, 1, 0x7F, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 0x10000, 100_000)
    for _ in range(count):
        kind = rng.randrange(5)
        buffer = bytearray(data)
        if kind == 0:  # byte flips, header-biased
            for _ in range(rng.randint(1, 6)):
                position = rng.randrange(min(len(buffer), 96)) if rng.random() < 0.7 else rng.randrange(len(buffer))
                buffer[position] ^= 1 << rng.randrange(8)
        elif kind == 1:  # truncation
            buffer = buffer[: rng.randrange(1, len(buffer))]
        elif kind == 2:  # a header field (little or big endian, 16 or 32 bits) set to an extreme value
            width, order = rng.choice(((2, "<H"), (2, ">H"), (4, "<I"), (4, ">I")))
            position = rng.randrange(0, max(1, min(len(buffer), 128) - width))
            value = rng.choice(extremes) & (0xFFFF if width == 2 else 0xFFFFFFFF)
            buffer[position: position + width] = struct.pack(order, value)
        elif kind == 3:  # a run duplicated
            start = rng.randrange(len(buffer))
            end = min(len(buffer), start + rng.randint(1, 64))
            buffer[start:start] = buffer[start:end]
        else:  # a run deleted
            start = rng.randrange(len(buffer))
            del buffer[start: start + rng.randint(1, 32)]
        yield bytes(buffer)


def _zTXt_bomb(kind: bytes = b"zTXt") -> bytes:
    """A small valid PNG with a compressed text chunk (zTXt, or iTXt) that inflates to 4 MB (over Pillow's
    MAX_TEXT_CHUNK)."""
    png = _encoded(_picture(), "PNG")
    text = zlib.compress(b"A" * (4 * PngImagePlugin.MAX_TEXT_CHUNK), 9)
    # zTXt: keyword, 0, method 0, data; iTXt: keyword, 0, compressed 1, method 0, language, 0, translated, 0, data
    body = (b"comment\0\0" if kind == b"zTXt" else b"comment\0\1\0en\0\0") + text
    chunk = struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    end = png.rindex(b"IEND") - 4  # text after the pixels: read while the image loads
    return png[:end] + chunk + png[end:]


def _png_header_only(width: int, height: int, bit_depth: int = 8, colour: int = 2, rows: bytes = b"") -> bytes:
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def _strip_png(width: int) -> bytes:
    """A real 1-pixel-high greyscale PNG `width` pixels wide (its pixels compress to ~1 KB per megapixel)."""
    squeeze = zlib.compressobj(9)
    rows = squeeze.compress(b"\0" * (width + 1)) + squeeze.flush()
    return _png_header_only(width, 1, colour=0, rows=rows)


def _float_tiff(width: int, height: int) -> bytes:
    """A 32-bit float greyscale TIFF whose header says width x height (the pixel data of 8x8 only)."""
    small = _encoded(Image.fromarray(np.zeros((8, 8), np.float32), mode="F"), "TIFF")
    with Image.open(io.BytesIO(small)) as image:
        assert image.mode == "F"
    buffer = bytearray(small)
    order = "<" if buffer[:2] == b"II" else ">"
    (ifd,) = struct.unpack(order + "I", buffer[4:8])
    (count,) = struct.unpack(order + "H", buffer[ifd: ifd + 2])
    for entry in range(count):
        at = ifd + 2 + 12 * entry
        tag, kind = struct.unpack(order + "HH", buffer[at: at + 4])
        if tag in (256, 257):  # ImageWidth, ImageLength
            value = width if tag == 256 else height
            packed = struct.pack(order + ("HH" if kind == 3 else "I"), *((value, 0) if kind == 3 else (value,)))
            buffer[at + 8: at + 12] = packed
    return bytes(buffer)
