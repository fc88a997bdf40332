"""AnomCLIPProcessor: CLIP image preprocessing at the model's size, mask preprocessing, the prompt tokenizer."""

from __future__ import annotations

import json
import os
from typing import Optional, Sequence, Union

import numpy as np
import torch
from huggingface_hub import hf_hub_download
from transformers import CLIPConfig, CLIPImageProcessor, CLIPTokenizer

from .configuration_anomclip import AnomCLIPConfig
from .image_io import PathOrImage, load_mask, resize_mask
from .pixel_arrays import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ImageInput, pixel_array  # noqa: F401 (re-exported)
from .tokenization import add_prompt_tokens

PROCESSOR_CONFIG_NAME = "anomclip_processor_config.json"


def _as_list(items) -> list:
    if items is None:
        return []
    return list(items) if isinstance(items, (list, tuple)) else [items]


def preprocess_images(images: Sequence[ImageInput], image_size: int, mean=OPENAI_CLIP_MEAN,
                      std=OPENAI_CLIP_STD) -> torch.Tensor:
    """(B, 3, S, S) float32 pixel values: any PIL mode to RGB, bicubic resize to S x S, mean/std normalise
    (`pixel_arrays.pixel_array`, shared with the ONNX Runtime detector)."""
    return torch.from_numpy(pixel_array(images, image_size, mean, std))


def preprocess_masks(masks: Sequence[Union[PathOrImage, np.ndarray, None]], size: int) -> torch.Tensor:
    """(B, S, S) uint8 0/1 masks: nearest-neighbour resize, nonzero -> 1; None -> an all-zero mask."""
    batch = []
    for item in masks:
        if item is None:
            batch.append(np.zeros((size, size), dtype=np.uint8))
            continue
        binary = (np.asarray(item) != 0).astype(np.uint8) if isinstance(item, np.ndarray) else load_mask(item)
        if binary.ndim == 3:
            binary = binary.any(axis=2).astype(np.uint8)
        batch.append(resize_mask(binary, (size, size)))
    return torch.from_numpy(np.stack(batch))


class AnomCLIPProcessor:
    """Images, masks and prompt text for [`AnomCLIPModel`], with the same names as transformers processors."""

    def __init__(self, tokenizer: Optional[CLIPTokenizer] = None, image_size: int = 224,
                 image_mean: Sequence[float] = OPENAI_CLIP_MEAN, image_std: Sequence[float] = OPENAI_CLIP_STD):
        self.tokenizer = tokenizer
        self.image_size = int(image_size)
        self.image_mean = tuple(float(x) for x in image_mean)
        self.image_std = tuple(float(x) for x in image_std)

    @classmethod
    def from_clip(cls, name_or_path: str, **kwargs) -> "AnomCLIPProcessor":
        """From an HF CLIP id or folder: its tokenizer plus the prompt tokens, its image size and mean/std."""
        tokenizer = CLIPTokenizer.from_pretrained(name_or_path, **kwargs)
        clip_config = CLIPConfig.from_pretrained(name_or_path, **kwargs)
        add_prompt_tokens(tokenizer, AnomCLIPConfig(clip_config=clip_config).prompt_token_names)
        try:
            image_processor = CLIPImageProcessor.from_pretrained(name_or_path, **kwargs)
            mean, std = image_processor.image_mean, image_processor.image_std
        except OSError:
            mean, std = OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
        return cls(tokenizer, clip_config.vision_config.image_size, mean, std)

    @classmethod
    def from_model(cls, model) -> "AnomCLIPProcessor":
        """The processor matching a loaded [`AnomCLIPModel`] (its tokenizer and image size)."""
        return cls(model.tokenizer, model.config.image_size)

    @classmethod
    def from_pretrained(cls, path: str, **kwargs) -> "AnomCLIPProcessor":
        local = os.path.join(path, PROCESSOR_CONFIG_NAME) if os.path.isdir(path) else hf_hub_download(
            path, PROCESSOR_CONFIG_NAME, **kwargs)
        with open(local, encoding="utf-8") as handle:
            settings = json.load(handle)
        return cls(CLIPTokenizer.from_pretrained(path, **kwargs), **settings)

    def save_pretrained(self, save_directory: str) -> None:
        os.makedirs(save_directory, exist_ok=True)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(save_directory)
        with open(os.path.join(save_directory, PROCESSOR_CONFIG_NAME), "w", encoding="utf-8") as handle:
            json.dump({"image_size": self.image_size, "image_mean": list(self.image_mean),
                       "image_std": list(self.image_std)}, handle, indent=2)

    def __call__(self, images=None, masks=None, text=None, return_tensors: str = "pt", **tokenizer_kwargs) -> dict:
        if return_tensors != "pt":
            raise ValueError(f"return_tensors={return_tensors!r}; only 'pt' is supported")
        out = {}
        if images is not None:
            out["pixel_values"] = preprocess_images(_as_list(images), self.image_size, self.image_mean,
                                                    self.image_std)
        if masks is not None:
            out["masks"] = preprocess_masks(_as_list(masks), self.image_size)
        if text is not None:
            if self.tokenizer is None:
                raise ValueError("this processor has no tokenizer")
            tokenizer_kwargs.setdefault("padding", True)
            out.update(self.tokenizer(text, return_tensors="pt", **tokenizer_kwargs))
        if not out:
            raise ValueError("pass images, masks or text")
        return out
