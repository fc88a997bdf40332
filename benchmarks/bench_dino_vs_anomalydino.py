"""The DINOv2 memory against anomalib's AnomalyDINO at the same shape: dinov2-small (random weights), 448 px,
k = 1 and 4 reference images, batch 1, scores and a 448x448 blurred map.

anomalib is used only if it is installed in the benchmark's environment (never a dependency of the package;
the script says so and stops when it is absent). Its timm backbone is built with random weights (no download:
the script asks timm for no pretrained weights). Ours: `AnomCLIPModel(..., mode="memory")` with a random
transformers Dinov2Model of the same shape (only the DINOv2 tower runs in this mode). Both under
torch.inference_mode, interleaved, medians. Target: ours / AnomalyDINO <= 1.0.

    python benchmarks/bench_dino_vs_anomalydino.py [--references 1 4] [--repeats 5] [--threads 2] [--json]
"""

from __future__ import annotations

import copy
import importlib.util
import os
import tempfile

import torch
from _common import apply_threads, base_parser, interleaved_times, median, random_pixels, report
from transformers import CLIPConfig, CLIPModel, Dinov2Config, Dinov2Model

from anomclip_hf import AnomCLIPModel
from anomclip_hf.model.tokenization import build_offline_clip_tokenizer

SIZE = 448
DINOV2_SMALL = dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, image_size=518, patch_size=14)


def anomaly_dino(references: torch.Tensor):
    """anomalib's AnomalyDINOModel (vit_small_patch14_dinov2, random weights) fitted on `references`."""
    from anomalib.models.image.anomaly_dino import torch_model

    extractor = torch_model.TimmFeatureExtractor

    def random_weights(*args, **kwargs):  # AnomalyDINO asks for pretrained weights: there is no download here
        return extractor(*args, **{**kwargs, "pre_trained": False})

    torch.manual_seed(0)
    torch_model.TimmFeatureExtractor = random_weights
    try:
        model = torch_model.AnomalyDINOModel(num_neighbours=1, encoder_name="vit_small_patch14_dinov2")
    finally:
        torch_model.TimmFeatureExtractor = extractor
    model.train()
    with torch.no_grad():
        for image in references:
            model(image.unsqueeze(0))
    model.fit()
    return model.eval()


def ours(references: torch.Tensor, folder: str) -> AnomCLIPModel:
    """A DINOv2-memory AnomCLIPModel (a small random CLIP beside it: the memory mode does not run it)."""
    tokenizer = build_offline_clip_tokenizer(real_vocab=False)
    text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=77, eos_token_id=tokenizer.eos_token_id,
                bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id)
    vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=30,
                  patch_size=2)
    torch.manual_seed(0)
    clip = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval()
    Dinov2Model(Dinov2Config(**DINOV2_SMALL)).save_pretrained(f"{folder}/dinov2-small")
    model = AnomCLIPModel.from_clip(clip, tokenizer=copy.deepcopy(tokenizer), memory_backbone=f"{folder}/dinov2-small",
                                    memory_image_size=SIZE)
    model.add_category("bench", reference_images={"pixel_values": random_pixels(len(references), 30, seed=5),
                                                   "memory_pixel_values": references})
    return model


def main() -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--references", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if importlib.util.find_spec("anomalib") is None:
        print("anomalib is not installed here: nothing to compare with (pip install anomalib in a separate "
              "environment to run this benchmark; it is never a dependency of anomclip-hf)")
        return
    apply_threads(args)
    query = random_pixels(1, SIZE, seed=2)
    results, lines = {"settings": {"size": SIZE, "repeats": args.repeats, "threads": torch.get_num_threads()}}, []
    lines.append(f"DINOv2 memory (dinov2-small shape, random weights, {SIZE} px, batch 1) vs anomalib AnomalyDINO; "
                 f"median of {args.repeats}, interleaved; {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as folder:
        for k in args.references:
            references = random_pixels(k, SIZE, seed=10 + k)
            theirs, mine = anomaly_dino(references), ours(references, folder)
            inputs = {"pixel_values": random_pixels(1, 30, seed=3), "memory_pixel_values": query}

            def run_ours():
                with torch.inference_mode():
                    return mine(**inputs, mode="memory", output_size=SIZE)

            def run_theirs():
                with torch.inference_mode():
                    return theirs(query)

            def tower_only():  # the DINOv2 forward alone: what the search and scoring add on top of
                with torch.inference_mode():
                    return mine.encode_memory(query)

            times = interleaved_times({"ours": run_ours, "anomalydino": run_theirs, "dinov2 tower": tower_only},
                                      args.repeats)
            seconds = {name: median(values) for name, values in times.items()}
            ratio = seconds["ours"] / seconds["anomalydino"]
            lines.append(f"k = {k} (load average {os.getloadavg()[0]:.2f}): ours {seconds['ours'] * 1e3:.1f} ms, "
                         f"AnomalyDINO {seconds['anomalydino'] * 1e3:.1f} ms: {ratio:.3f}x; our DINOv2 tower alone "
                         f"{seconds['dinov2 tower'] * 1e3:.1f} ms (search + scoring "
                         f"{(seconds['ours'] - seconds['dinov2 tower']) * 1e3:.1f} ms)")
            results[f"k{k}"] = {"seconds": seconds, "ratio": ratio, "times": times, "load_average": os.getloadavg()}
    report(args, results, lines)


if __name__ == "__main__":
    main()
