"""The decoding contract (anomclip_hf.io.decoding): hostile bytes give an ImageReadError naming the input or a
valid RGB image, never another exception, never an external program, never a decode past the limits."""

from __future__ import annotations

import io
import os
import struct
import time
import tracemalloc

import numpy as np
import pytest
from PIL import Image, ImageFile
from hostile_images import (
    _encoded,
    _float_tiff,
    _picture,
    _strip_png,
    _zTXt_bomb,
    allowed_seeds,
    mutants,
    refused_seeds,
)
from stand_ins import eps_bytes, install_stand_ins

from anomclip_hf.inference.inputs import image_from_bytes
from anomclip_hf.io.decoding import (
    MAX_ASPECT_RATIO,
    MAX_DECODED_BYTES,
    MAX_IMAGE_PIXELS,
    ImageReadError,
    decode_bytes,
)
from anomclip_hf.io.image_io import load_image, load_mask

MUTANTS_PER_SEED = 90



def _decode_outcome(data: bytes, name: str):
    try:
        image = decode_bytes(data, name)
    except ImageReadError as error:
        assert name in str(error), (name, str(error))
        return "refused"
    assert image.mode == "RGB" and image.width > 0 and image.height > 0
    assert image.width * image.height <= MAX_IMAGE_PIXELS
    assert max(image.size) <= MAX_ASPECT_RATIO * min(image.size)
    np.asarray(image)  # the pixels are really there
    return "decoded"


def test_pillow_keeps_truncated_images_refused():
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.parametrize("kind", sorted(allowed_seeds()))
def test_every_allowed_seed_decodes_to_rgb(kind):
    data = allowed_seeds()[kind]
    image = decode_bytes(data, f"seed-{kind}")
    assert image.mode == "RGB"
    assert image.size == ((17, 23) if kind == "jpeg-exif" else (23, 17))


@pytest.mark.parametrize("kind", sorted(refused_seeds()))
def test_formats_outside_the_list_are_refused_naming_the_input(kind):
    data = refused_seeds()[kind]
    if kind != "pdf":  # Pillow writes PDF but cannot read it; it identifies every other one of these
        Image.open(io.BytesIO(data))  # so the refusal is the contract's, not Pillow's
    with pytest.raises(ImageReadError, match=rf"upload-{kind}\.png: no image format this package reads; expected a PNG, JPEG, BMP, TIFF or WebP file"):
        decode_bytes(data, f"upload-{kind}.png")


def test_fuzzed_files_of_every_format_give_an_rgb_image_or_an_image_read_error():
    seeds = {**allowed_seeds(), **refused_seeds()}
    outcomes = {"refused": 0, "decoded": 0}
    tried = 0
    for number, (kind, data) in enumerate(sorted(seeds.items())):
        for index, mutant in enumerate(mutants(data, seed=1000 + number, count=MUTANTS_PER_SEED)):
            outcomes[_decode_outcome(mutant, f"mutant-{kind}-{index}")] += 1
            tried += 1
    assert tried >= 1000
    # Both outcomes occur: the fuzz reaches the decoders (not only the format check) and breaks them.
    assert outcomes["refused"] > 100 and outcomes["decoded"] > 100, outcomes


def test_fuzzed_files_on_disk_go_through_load_image_and_load_mask_alike(tmp_path):
    seeds = allowed_seeds()
    for number, (kind, data) in enumerate(sorted(seeds.items())):
        for index, mutant in enumerate(mutants(data, seed=5000 + number, count=8)):
            path = tmp_path / f"{kind}-{index}.png"
            path.write_bytes(mutant)
            for loader in (load_image, load_mask):
                try:
                    loader(str(path))
                except ImageReadError as error:
                    assert str(path) in str(error)


@pytest.mark.parametrize("kind", [b"zTXt", b"iTXt"])
def test_a_png_text_chunk_bomb_is_an_image_read_error(kind):
    bomb = _zTXt_bomb(kind)
    assert len(bomb) < 20_000
    with pytest.raises(ImageReadError, match=r"bomb\.png: ValueError: .*(Decompressed|too large)"):
        decode_bytes(bomb, "bomb.png")
    # Before the pixels too (text chunks in front of IDAT are read while the file is identified).
    png = _encoded(_picture(), "PNG")
    idat = png.index(b"IDAT") - 4
    chunk = bomb[bomb.index(kind) - 4: bomb.rindex(b"IEND") - 4]
    with pytest.raises(ImageReadError, match=r"front\.png"):
        decode_bytes(png[:idat] + chunk + png[idat:], "front.png")


def test_a_100_megapixel_strip_is_refused_from_its_header_naming_the_input():
    strip = _strip_png(MAX_IMAGE_PIXELS)
    assert len(strip) < 200_000
    tracemalloc.start()
    began = time.perf_counter()
    with pytest.raises(ImageReadError, match=r"strip\.png is 100000000x1 pixels: its long side is 100,000,000 times"):
        decode_bytes(strip, "strip.png")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert time.perf_counter() - began < 2 and peak < 20_000_000  # refused before any pixel was decoded


def test_aspect_ratio_bound_keeps_line_scan_strips_and_refuses_slivers():
    line_scan = decode_bytes(_encoded(_picture(size=(1024, 64)), "PNG"), "line-scan.png")  # 16:1
    assert line_scan.size == (1024, 64)
    limit = decode_bytes(_encoded(_picture(size=(MAX_ASPECT_RATIO * 3, 3)), "PNG"), "limit.png")
    assert limit.size == (MAX_ASPECT_RATIO * 3, 3)
    with pytest.raises(ImageReadError, match=r"thin\.png is 301x3 pixels"):
        decode_bytes(_encoded(_picture(size=(MAX_ASPECT_RATIO * 3 + 1, 3)), "PNG"), "thin.png")
    with pytest.raises(ImageReadError, match=r"sliver\.png is 600000x1 pixels"):
        decode_bytes(_strip_png(600_000), "sliver.png")


def test_a_float_tiff_counts_four_bytes_a_pixel_against_the_budget():
    huge = _float_tiff(10_000, 10_000)  # 100 megapixels: within the pixel limit, 400 MB decoded
    assert len(huge) < 2_000
    tracemalloc.start()
    with pytest.raises(ImageReadError, match=r"float\.tif is 10000x10000 pixels in mode F \(4 bytes a pixel\): "
                                             r"400,000,000 bytes decoded, more than the 300,000,000"):
        decode_bytes(huge, "float.tif")
    assert tracemalloc.get_traced_memory()[1] < 20_000_000
    tracemalloc.stop()
    assert MAX_DECODED_BYTES == 300_000_000
    # A float TIFF within the budget decodes, rescaled to 8 bits.
    image = decode_bytes(allowed_seeds()["tiff-deflate-float"], "small-float.tif")
    grey = np.asarray(image)[..., 0]
    expected = np.clip(np.linspace(0, 1, 23 * 17, dtype=np.float32).reshape(17, 23) * 255 + 0.5, 0, 255).astype(np.uint8)
    assert np.array_equal(grey, expected)


def test_every_decoder_exception_class_becomes_an_image_read_error(monkeypatch):
    data = allowed_seeds()["png-rgb"]
    for raised in (ValueError("bad"), struct.error("unpack"), IndexError("index"), TypeError("type"),
                   OSError("os"), EOFError("eof"), MemoryError(), ZeroDivisionError("zero"),
                   Image.DecompressionBombError("bomb"), SyntaxError("syntax"), KeyError("key")):
        def fail(self, raised=raised):
            raise raised
        monkeypatch.setattr(ImageFile.ImageFile, "load", fail)
        with pytest.raises(ImageReadError, match=rf"named\.png: {type(raised).__name__}") as caught:
            decode_bytes(data, "named.png")
        assert caught.value.__cause__ is raised


# ------------------------------------------------------------------------------- no external program runs
@pytest.fixture
def stand_in_programs(tmp_path, monkeypatch):
    from PIL import EpsImagePlugin

    monkeypatch.setattr(EpsImagePlugin, "gs_binary", None)  # Pillow caches where (whether) it found gs
    return install_stand_ins(tmp_path / "stand-ins", monkeypatch)


def test_the_stand_in_ghostscript_would_catch_pillow_running_it(stand_in_programs):
    """The check of the tests below can fail: unrestricted Pillow does run `gs` on an EPS."""
    with pytest.raises(Exception):  # our gs exits 1 without writing an image
        with Image.open(io.BytesIO(eps_bytes())) as image:
            image.load()
    assert (stand_in_programs / "gs").exists()


def test_serve_and_app_decoding_never_run_an_external_program(stand_in_programs, tmp_path):
    for name, data in refused_seeds().items():
        with pytest.raises(ImageReadError):
            image_from_bytes(data, f"{name}.png")  # serve's request bodies
        path = tmp_path / f"{name}.png"  # the app stages uploads as files and decodes them with load_image
        path.write_bytes(data)
        with pytest.raises(ImageReadError, match=f"{name}.png"):
            load_image(str(path))
    assert sorted(os.listdir(stand_in_programs)) == []
