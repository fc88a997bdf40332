"""AnomCLIPProcessor: PIL modes to RGB, CLIP normalisation at the model size, masks, tokenizer."""

import numpy as np
import pytest
import torch
from PIL import Image

from anomclip_hf import AnomCLIPProcessor
from anomclip_hf.io.image_io import ImageReadError, load_image, to_rgb
from anomclip_hf.model.processing_anomclip import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD


def test_pixel_values_are_bicubic_resized_and_normalised():
    array = np.random.RandomState(0).randint(0, 256, (50, 40, 3), dtype=np.uint8)
    processor = AnomCLIPProcessor(image_size=30)
    pixels = processor(images=[Image.fromarray(array)])["pixel_values"]
    resized = np.asarray(Image.fromarray(array).resize((30, 30), Image.BICUBIC), dtype=np.float32) / 255.0
    expected = (resized - np.array(OPENAI_CLIP_MEAN, dtype=np.float32)) / np.array(OPENAI_CLIP_STD, dtype=np.float32)
    assert pixels.shape == (1, 3, 30, 30) and pixels.dtype == torch.float32
    assert np.abs(pixels[0].permute(1, 2, 0).numpy() - expected).max() < 1e-6


def test_modes_become_correct_rgb():
    grey = np.arange(256, dtype=np.uint8).reshape(16, 16)
    expected_grey = np.repeat(grey[..., None], 3, axis=2)
    assert np.array_equal(np.asarray(to_rgb(Image.fromarray(grey, "L"))), expected_grey)
    # 16-bit grey is rescaled, not clipped at 255 as PIL's own convert would do
    sixteen = Image.frombytes("I;16", (16, 16), (grey.astype("<u2") * 257).tobytes())
    assert sixteen.mode == "I;16"
    assert np.array_equal(np.asarray(to_rgb(sixteen)), expected_grey)
    # alpha is composited onto black
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., :3] = (200, 100, 50)
    rgba[..., 3] = 255
    rgba[0, 0, 3] = 0
    rgb = np.asarray(to_rgb(Image.fromarray(rgba, "RGBA")))
    assert tuple(rgb[1, 1]) == (200, 100, 50) and tuple(rgb[0, 0]) == (0, 0, 0)
    la = to_rgb(Image.fromarray(np.stack([grey, np.full_like(grey, 255)], -1), "LA"))
    assert np.array_equal(np.asarray(la), expected_grey)
    palette = Image.fromarray(grey, "L").convert("P")
    assert np.abs(np.asarray(to_rgb(palette)).astype(int) - expected_grey).max() <= 8
    cmyk = Image.new("CMYK", (3, 3), (0, 255, 255, 0))  # pure red in CMYK
    assert tuple(np.asarray(to_rgb(cmyk))[0, 0]) == (255, 0, 0)
    for image in (sixteen, palette, cmyk):
        assert AnomCLIPProcessor(image_size=8)(images=image)["pixel_values"].shape == (1, 3, 8, 8)


def test_masks_nearest_and_binarised():
    mask = np.zeros((20, 20), dtype=np.uint8)
    mask[5:10, 5:10] = 3  # VisA-style label value
    masks = AnomCLIPProcessor(image_size=40)(masks=[Image.fromarray(mask), None])["masks"]
    assert masks.shape == (2, 40, 40) and set(masks.unique().tolist()) == {0, 1}
    assert int(masks[0].sum()) == 4 * 25 and int(masks[1].sum()) == 0


def test_unreadable_file_names_the_file(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(ImageReadError, match="broken.png"):
        load_image(broken)
    with pytest.raises(ImageReadError, match="not found"):
        load_image(tmp_path / "missing.png")


def test_processor_tokenizes_prompt_tokens_and_round_trips(tmp_path, tiny_model):
    processor = AnomCLIPProcessor.from_model(tiny_model)
    ids = processor(text=["<img_n0_0><img_n0_1> bottle <img_a0_0>."])["input_ids"]
    assert ids[0, 1].item() == tiny_model.config.prompt_token_ids[0]
    processor.save_pretrained(tmp_path)
    again = AnomCLIPProcessor.from_pretrained(str(tmp_path))
    assert again.image_size == 30 and torch.equal(again(text=["<img_n0_0> x"])["input_ids"],
                                                  processor(text=["<img_n0_0> x"])["input_ids"])
