"""Speed of the dual-stream vision forward and of truncated prompt batches, on the paper backbone's shapes.

Random weights with the shapes of OpenCLIP ViT-B-16-plus-240 (vision 896 wide, 12 blocks, 15x15 patches;
text 640 wide). Every figure is a ratio against a baseline measured in the same run:
- dual stream (original + V-V in all 12 blocks, memory taps) vs transformers' own CLIP image forward;
- prompt features of the image head (48 prompts) cut to the longest prompt vs the full 77 tokens.

    python benchmarks/bench_forward.py [--batch 8] [--repeats 5] [--device cpu|cuda] [--dtype float32|bfloat16]
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import CLIPConfig, CLIPModel

from anomclip_hf import AnomCLIPModel
from anomclip_hf.text_encoding import encode_text_embeddings
from anomclip_hf.tokenization import build_offline_clip_tokenizer, open_clip_bpe_path


def paper_shaped_clip(vocab_size: int) -> CLIPModel:
    config = CLIPConfig(
        projection_dim=640,
        text_config=dict(vocab_size=vocab_size, hidden_size=640, intermediate_size=2560, num_hidden_layers=12,
                         num_attention_heads=10, max_position_embeddings=77, hidden_act="gelu",
                         eos_token_id=49407, bos_token_id=49406),
        vision_config=dict(hidden_size=896, intermediate_size=3584, num_hidden_layers=12, num_attention_heads=14,
                           image_size=240, patch_size=16, hidden_act="gelu"),
    )
    return CLIPModel(config)


def best_time(function, repeats: int, device: str) -> float:
    function()  # warm-up
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        function()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)

    tokenizer = build_offline_clip_tokenizer(real_vocab=open_clip_bpe_path() is not None)
    clip = paper_shaped_clip(len(tokenizer)).eval()
    model = AnomCLIPModel.from_clip(clip, tokenizer=tokenizer).to(args.device, dtype)
    model.add_category("bottle", learned_prompts=True)
    pixel_values = torch.randn(args.batch, 3, 240, 240, device=args.device, dtype=dtype)

    with torch.no_grad():
        plain = best_time(lambda: model.clip.get_image_features(pixel_values=pixel_values), args.repeats, args.device)
        dual = best_time(lambda: model.encode_images(pixel_values), args.repeats, args.device)

        prompts = model.head_prompts("bottle", "image")
        texts = prompts.normal + prompts.manual + prompts.learned
        full_ids = model.tokenize_prompts(texts)
        eos = model.config.clip_config.text_config.eos_token_id
        text = model.clip.text_model

        def encode_full():
            encode_text_embeddings(text, model.clip.text_projection, model._prompt_embeddings("bottle", full_ids),
                                   full_ids, eos)

        full = best_time(encode_full, args.repeats, args.device)
        cut = best_time(lambda: model.encode_prompt_texts("bottle", texts), args.repeats, args.device)
        longest = int((full_ids == eos).int().argmax(1).max()) + 1

    print(f"device {args.device}, dtype {args.dtype}, batch {args.batch}, best of {args.repeats}")
    print(f"vision: transformers CLIP image forward {plain * 1e3:8.1f} ms")
    print(f"vision: dual stream (V-V in 12 blocks)   {dual * 1e3:8.1f} ms   ratio {dual / plain:.2f}x")
    print(f"text:   {len(texts)} prompts at 77 tokens       {full * 1e3:8.1f} ms")
    print(f"text:   cut to longest ({longest} tokens)     {cut * 1e3:8.1f} ms   ratio {cut / full:.2f}x")


if __name__ == "__main__":
    main()
