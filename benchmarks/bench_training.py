"""Cost of a training epoch with the shots' frozen features computed once (ours) against re-encoding the
shots every epoch (the reference code's loop), on the paper backbone's shapes with random weights.

    python benchmarks/bench_training.py [--shots 4] [--epochs 3] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import time

import torch

from anomclip_hf import AnomCLIPModel
from anomclip_hf.tokenization import build_offline_clip_tokenizer, open_clip_bpe_path
from anomclip_hf.training import TrainingConfig
from anomclip_hf.training.step import build_optimizer, encode_shots, training_step
from bench_forward import paper_shaped_clip


def run_epochs(model, pixel_values, epochs: int, reencode: bool, device: str) -> float:
    config = TrainingConfig()
    optimizer = build_optimizer(model.prompt_parameters("bottle"), config)
    features = encode_shots(model, pixel_values)
    if device == "cuda":
        torch.cuda.synchronize()
    began = time.perf_counter()
    for _ in range(epochs):
        if reencode:
            features = encode_shots(model, pixel_values)
        training_step(model, "bottle", features, optimizer, config, use_margin=True)
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - began) / epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shots", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    tokenizer = build_offline_clip_tokenizer(real_vocab=open_clip_bpe_path() is not None)
    model = AnomCLIPModel.from_clip(paper_shaped_clip(len(tokenizer)).eval(), tokenizer=tokenizer).to(args.device)
    pixel_values = torch.randn(args.shots, 3, 240, 240, device=args.device)
    model.add_category("bottle", reference_images=pixel_values, learned_prompts=True)
    cached = run_epochs(model, pixel_values, args.epochs, reencode=False, device=args.device)
    reencoded = run_epochs(model, pixel_values, args.epochs, reencode=True, device=args.device)
    print(f"device {args.device}, {args.shots} shots, mean of {args.epochs} epochs (both heads, 64 prompts)")
    print(f"shots re-encoded every epoch (reference loop)  {reencoded:6.2f} s/epoch")
    print(f"frozen features computed once (ours)           {cached:6.2f} s/epoch   ratio {cached / reencoded:.2f}x")


if __name__ == "__main__":
    main()
