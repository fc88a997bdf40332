"""`anomclip convert-open-clip`: an open_clip checkpoint into a transformers CLIP folder."""

from __future__ import annotations

from ._common import add_command


def add_parser(commands) -> None:
    convert = add_command(
        commands, "convert-open-clip", "convert an open_clip checkpoint to a transformers CLIP folder",
        "anomclip convert-open-clip --model ViT-B-16-plus-240 --checkpoint vit_b_16_plus_240-laion400m_e32-699c4b84.pt "
        "--output vitb16plus-laion400m",
        "anomclip convert-open-clip --model ViT-B-16-plus-240 --checkpoint laion400m_e32 --output vitb16plus",
        "anomclip convert-open-clip --model my-vit --config my-vit.json --checkpoint weights.safetensors "
        "--output my-vit-hf",
        description="Write a transformers CLIPModel + CLIPTokenizer + CLIPImageProcessor folder from open_clip\n"
                    "weights. Architectures CLIP cannot reproduce (timm/ResNet towers, attentional pooling,\n"
                    "LayerScale, CoCa, other tokenizers, ...) are refused, naming the option that prevents it.")
    convert.add_argument("--model", required=True,
                         help="open_clip model name (e.g. ViT-B-16-plus-240; a -quickgelu suffix selects QuickGELU) "
                              "or an open_clip model-config JSON")
    convert.add_argument("--checkpoint", required=True,
                         help="checkpoint file (.safetensors, or a torch state dict) or an open_clip pretrained tag "
                              "(e.g. laion400m_e32; downloaded by open_clip, needs network)")
    convert.add_argument("--config", default=None,
                         help="open_clip model-config JSON for --model (then open_clip itself is not needed)")
    convert.add_argument("--output", required=True, help="folder to write (replaced all at once)")
    convert.set_defaults(func=run)


def run(args) -> int:
    from ..convert.open_clip import save_converted_open_clip

    folder = save_converted_open_clip(args.model, args.checkpoint, args.output, config_path=args.config)
    print(f"transformers CLIP folder (model, tokenizer, image processor) written to {folder}; use it as --base")
    return 0
