"""AnomCLIPProcessor: CLIP image preprocessing at the model's size, mask preprocessing, the prompt tokenizer."""

from __future__ import annotations

import json
import os
from typing import Optional, Sequence, Union

import numpy as np
import torch
from transformers import AutoProcessor, CLIPConfig, CLIPTokenizer, PretrainedConfig
from transformers.utils import cached_file

from ..errors import ArgumentError, CheckpointError
from ..io.image_io import PathOrImage, load_mask, resize_mask
from ..io.pixel_arrays import (  # noqa: F401
    BICUBIC,
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    ImageInput,
    as_pil,
    pixel_array,
)
from .configuration_anomclip import AnomCLIPConfig
from .tokenization import add_prompt_tokens

PROCESSOR_CONFIG_NAME = "anomclip_processor_config.json"
CHECKPOINT_PROCESSOR_CONFIG_NAME = "preprocessor_config.json"  # a CLIP checkpoint's own image processor


def _as_list(items) -> list:
    if items is None:
        return []
    return list(items) if isinstance(items, (list, tuple)) else [items]


def preprocess_images(images: Sequence[ImageInput], image_size: int, mean=OPENAI_CLIP_MEAN,
                      std=OPENAI_CLIP_STD, resample: int = BICUBIC) -> torch.Tensor:
    """(B, 3, S, S) float32 pixel values (`pixel_arrays.pixel_array`, shared with the ONNX Runtime detector):
    any PIL mode to RGB, resize to S x S (bicubic by default), mean/std normalise."""
    return torch.from_numpy(pixel_array(images, image_size, mean, std, resample))


def model_pixel_values(config: AnomCLIPConfig, images: Sequence[ImageInput]) -> torch.Tensor:
    """The model's own preprocessing (add_category with images, thresholds, training, scoring of files): its
    image size and its checkpoint's mean, std and resampling, the values `AnomCLIPProcessor.from_model` uses."""
    return preprocess_images(images, config.image_size, config.image_mean, config.image_std, config.image_resample)


def memory_pixel_values(config: AnomCLIPConfig, images: Sequence[ImageInput]) -> torch.Tensor:
    """The DINOv2 memory backbone's preprocessing of the same images: the whole image resized to
    `memory_image_size` (as the CLIP side, so both maps cover the same pixels), its mean/std/resampling."""
    return preprocess_images(images, config.memory_image_size, config.memory_image_mean, config.memory_image_std,
                             config.memory_image_resample)


def model_inputs(config: AnomCLIPConfig, images: Sequence[ImageInput]) -> dict:
    """{"pixel_values"} (and "memory_pixel_values" when the model has a DINOv2 memory): the model's arguments
    for these images, what `AnomCLIPProcessor.from_model(model)(images=...)` returns."""
    if config.memory_backbone_config is not None:
        images = [as_pil(item) for item in images]  # decoded once for both towers
    inputs = {"pixel_values": model_pixel_values(config, images)}
    if config.memory_backbone_config is not None:
        inputs["memory_pixel_values"] = memory_pixel_values(config, images)
    return inputs


def checkpoint_preprocessing(name_or_path: str, **hub_kwargs) -> dict:
    """{image_mean, image_std, image_resample} from a CLIP checkpoint's preprocessor_config.json (the keys it
    sets); {} when it has none. Its resize/crop sizes are not used: images are resized whole to the tower's
    image size (see `preprocess_images`)."""
    hub_kwargs = {k: v for k, v in hub_kwargs.items() if v is not None}
    path = cached_file(name_or_path, CHECKPOINT_PROCESSOR_CONFIG_NAME, _raise_exceptions_for_missing_entries=False,
                       _raise_exceptions_for_connection_errors=False, **hub_kwargs)
    if path is None:
        return {}
    with open(path, encoding="utf-8") as handle:
        settings = json.load(handle)
    found = {ours: settings[theirs] for ours, theirs in (("image_mean", "image_mean"), ("image_std", "image_std"),
                                                         ("image_resample", "resample")) if theirs in settings}
    for key in ("image_mean", "image_std"):
        if key in found and (not isinstance(found[key], list) or len(found[key]) != 3):
            raise CheckpointError(f"{path}: {key}={found[key]!r}; expected a list of 3 numbers")
    return found


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
                 image_mean: Sequence[float] = OPENAI_CLIP_MEAN, image_std: Sequence[float] = OPENAI_CLIP_STD,
                 image_resample: int = BICUBIC, memory: Optional[dict] = None):
        """memory: {image_size, image_mean, image_std, image_resample} of a DINOv2 memory backbone, whose
        inputs `memory_pixel_values` then come with every `pixel_values`; None without one."""
        self.tokenizer = tokenizer
        self.image_size = int(image_size)
        self.image_mean = tuple(float(x) for x in image_mean)
        self.image_std = tuple(float(x) for x in image_std)
        self.image_resample = int(image_resample)
        self.memory = None if memory is None else {
            "image_size": int(memory["image_size"]), "image_mean": [float(x) for x in memory["image_mean"]],
            "image_std": [float(x) for x in memory["image_std"]], "image_resample": int(memory["image_resample"])}

    @classmethod
    def from_config(cls, config: AnomCLIPConfig, tokenizer: Optional[CLIPTokenizer] = None) -> "AnomCLIPProcessor":
        """The preprocessing an AnomCLIP config records (image size, its checkpoint's mean/std/resampling)."""
        memory = None if config.memory_backbone_config is None else {
            key: getattr(config, f"memory_{key}") for key in ("image_size", "image_mean", "image_std", "image_resample")}
        return cls(tokenizer, config.image_size, config.image_mean, config.image_std, config.image_resample, memory)

    @classmethod
    def from_clip(cls, name_or_path: str, **kwargs) -> "AnomCLIPProcessor":
        """From an HF CLIP id or folder: its tokenizer plus the prompt tokens, its image size, and the mean/std
        and resampling of its preprocessor_config.json (the values `AnomCLIPModel.from_clip` records)."""
        tokenizer = CLIPTokenizer.from_pretrained(name_or_path, **kwargs)
        config = AnomCLIPConfig(clip_config=CLIPConfig.from_pretrained(name_or_path, **kwargs),
                                **checkpoint_preprocessing(name_or_path, **kwargs))
        add_prompt_tokens(tokenizer, config.prompt_token_names)
        return cls.from_config(config, tokenizer)

    @classmethod
    def from_model(cls, model) -> "AnomCLIPProcessor":
        """The processor matching a loaded [`AnomCLIPModel`] (its tokenizer, image size, mean/std, resampling)."""
        return cls.from_config(model.config, model.tokenizer)

    @classmethod
    def from_pretrained(cls, path: str, **kwargs) -> "AnomCLIPProcessor":
        """A saved processor folder, or an AnomCLIP base folder/repo (built from its config): what
        `AutoProcessor.from_pretrained` returns for an AnomCLIP base."""
        kwargs.pop("trust_remote_code", None)
        hub_kwargs = {k: v for k, v in kwargs.items() if k in ("revision", "cache_dir", "token", "local_files_only")}
        local = cached_file(path, PROCESSOR_CONFIG_NAME, _raise_exceptions_for_missing_entries=False, **hub_kwargs)
        if local is None:
            config_dict, _ = PretrainedConfig.get_config_dict(path, **hub_kwargs)
            if config_dict.get("model_type") != AnomCLIPConfig.model_type:
                raise OSError(f"{path} has no {PROCESSOR_CONFIG_NAME} and is not an AnomCLIP base (config.json "
                              f"model_type {config_dict.get('model_type')!r}); use AnomCLIPProcessor.from_clip for a "
                              "CLIP checkpoint")
            return cls.from_config(AnomCLIPConfig.from_dict(config_dict), CLIPTokenizer.from_pretrained(path, **hub_kwargs))
        with open(local, encoding="utf-8") as handle:
            settings = json.load(handle)
        return cls(CLIPTokenizer.from_pretrained(path, **hub_kwargs), **settings)

    def save_pretrained(self, save_directory: str) -> None:
        os.makedirs(save_directory, exist_ok=True)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(save_directory)
        with open(os.path.join(save_directory, PROCESSOR_CONFIG_NAME), "w", encoding="utf-8") as handle:
            json.dump({"image_size": self.image_size, "image_mean": list(self.image_mean),
                       "image_std": list(self.image_std), "image_resample": self.image_resample,
                       **({"memory": self.memory} if self.memory else {})}, handle, indent=2)

    def __call__(self, images=None, masks=None, text=None, return_tensors: str = "pt", **tokenizer_kwargs) -> dict:
        if return_tensors != "pt":
            raise ArgumentError(f"return_tensors={return_tensors!r}; only 'pt' is supported")
        out = {}
        if images is not None:
            out["pixel_values"] = preprocess_images(_as_list(images), self.image_size, self.image_mean,
                                                    self.image_std, self.image_resample)
            if self.memory:
                out["memory_pixel_values"] = preprocess_images(_as_list(images), self.memory["image_size"],
                                                               self.memory["image_mean"], self.memory["image_std"],
                                                               self.memory["image_resample"])
        if masks is not None:
            out["masks"] = preprocess_masks(_as_list(masks), self.image_size)
        if text is not None:
            if self.tokenizer is None:
                raise ArgumentError("this processor has no tokenizer")
            tokenizer_kwargs.setdefault("padding", True)
            out.update(self.tokenizer(text, return_tensors="pt", **tokenizer_kwargs))
        if not out:
            raise ArgumentError("pass images, masks or text")
        return out


# AutoProcessor.from_pretrained(base folder) returns an AnomCLIPProcessor once this class exists.
AutoProcessor.register(AnomCLIPConfig, AnomCLIPProcessor, exist_ok=True)
