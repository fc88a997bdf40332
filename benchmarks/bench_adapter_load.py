"""Cost of reading an adapter safely: bounded reads of regular files + the schema + every tensor's shape,
dtype and finiteness (`category_io.read_adapter` + `check_adapter`), against reading the same files with
no checks (safetensors' memory-mapped `load_file` and `json.load`: what loading did before issue 14), each
value then read once (`sum`: the pages of a memory-mapped file are read only when used, as scoring does).

The adapter has the paper backbone's sizes (vision width 896, 240 px / patch 16 = 225 patches, 2 memory
layers, text width 640) and a memory bank of --shots references; nothing but the files is built.

    python benchmarks/bench_adapter_load.py [--shots 16] [--repeats 5] [--json]
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

import torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (  # noqa: E402
    MIB,
    PAPER_PROJECTION,
    PAPER_TEXT,
    PAPER_VISION,
    PeakRSS,
    apply_threads,
    base_parser,
    interleaved_times,
    median,
    report,
)
from transformers import CLIPConfig  # noqa: E402

from anomclip_hf.model.category import PROMPT_LAYOUT_KEYS  # noqa: E402
from anomclip_hf.model.category_io import (  # noqa: E402
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    CATEGORY_FILE,
    FORMAT_VERSION,
    MEMORY_FILE,
    PROTOTYPES_FILE,
    AdapterExpectations,
    AdapterSource,
    check_adapter,
    read_adapter,
    write_adapter,
)
from anomclip_hf.model.configuration_anomclip import AnomCLIPConfig  # noqa: E402
from anomclip_hf.model.prompt_learner import ADAPTER_WEIGHT_KEYS, PromptTokenTable  # noqa: E402


def paper_expectations() -> tuple[AdapterExpectations, AnomCLIPConfig, PromptTokenTable]:
    clip = CLIPConfig(text_config={**PAPER_TEXT, "vocab_size": 49408}, vision_config=PAPER_VISION,
                      projection_dim=PAPER_PROJECTION)
    config = AnomCLIPConfig(clip_config=clip)
    table = PromptTokenTable(len(config.prompt_token_names), PAPER_TEXT["hidden_size"])
    peft = table.adapter_config()
    identity = {"name_or_path": "bench", "revision": None, "architecture": None, "fingerprint": "bench"}
    expected = AdapterExpectations(
        prompt_layout={key: getattr(config, key) for key in PROMPT_LAYOUT_KEYS}, base_identity=identity,
        memory_layers=tuple(config.memory_layers), memory_tap=config.memory_tap,
        vision_width=PAPER_VISION["hidden_size"], projection_dim=PAPER_PROJECTION,
        text_width=PAPER_TEXT["hidden_size"], num_patches=(PAPER_VISION["image_size"] // PAPER_VISION["patch_size"]) ** 2,
        adapter_config={"peft_type": peft.peft_type.value, "token_indices": list(peft.token_indices)},
        weight_keys=ADAPTER_WEIGHT_KEYS)
    return expected, config, table


def write_paper_adapter(folder: str, shots: int) -> AdapterExpectations:
    expected, config, table = paper_expectations()
    generator = torch.Generator().manual_seed(0)
    random = lambda *shape: torch.randn(*shape, generator=generator)  # noqa: E731
    record = {"format_version": FORMAT_VERSION, "category": "bench", "class_name": "bench", "phrases": ["{} with a dent"],
              "learned_prompts": True, "prompt_layout": dict(expected.prompt_layout),
              "base_model": dict(expected.base_identity),
              "memory": {"layers": list(config.memory_layers), "tap": config.memory_tap}, "shots": shots}
    weights = {key: random(*shape) for key, shape in expected.tensor_shapes(ADAPTER_WEIGHTS).items()}
    bank = {i: random(*expected.tensor_shapes(MEMORY_FILE, shots)[f"layer_{i}"]) for i in config.memory_layers}
    prototypes = {head: random(*shape) for head, shape in expected.tensor_shapes(PROTOTYPES_FILE).items()}
    write_adapter(folder, record, table.adapter_config(), weights, bank, prototypes)
    return expected


def unchecked(folder: str) -> None:
    for name in (CATEGORY_FILE, ADAPTER_CONFIG):
        with open(os.path.join(folder, name), encoding="utf-8") as handle:
            json.load(handle)
    for name in (ADAPTER_WEIGHTS, MEMORY_FILE, PROTOTYPES_FILE):
        for tensor in load_file(os.path.join(folder, name)).values():
            tensor.sum()


def main() -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    apply_threads(args)
    with tempfile.TemporaryDirectory() as tmp:
        folder = os.path.join(tmp, "adapter")
        expected = write_paper_adapter(folder, args.shots)
        source = AdapterSource(folder, folder)

        def checked() -> None:
            check_adapter(read_adapter(source, expected), expected)

        variants = {"checked": checked, "unchecked": lambda: unchecked(folder)}
        times = interleaved_times(variants, args.repeats)
        peaks = {}
        for name, function in variants.items():
            with PeakRSS() as peak:
                function()
            peaks[name] = peak
        bank_mib = os.path.getsize(os.path.join(folder, MEMORY_FILE)) / MIB
    seconds = {name: median(values) for name, values in times.items()}
    results = {"shots": args.shots, "memory_bank_mib": bank_mib, "median_seconds": seconds,
               "ratio_checked_over_unchecked": seconds["checked"] / seconds["unchecked"],
               "extra_peak_rss_mib": {name: p.extra_bytes / MIB for name, p in peaks.items()},
               "memory_method": peaks["checked"].method, "repeats": args.repeats}
    lines = [f"adapter of paper sizes, {args.shots} shots: memory bank {bank_mib:.1f} MiB",
             *(f"{name:>9}: {seconds[name] * 1e3:8.1f} ms (median of {args.repeats}), extra peak RSS "
               f"{peaks[name].extra_bytes / MIB:7.1f} MiB" for name in variants),
             f"checked / unchecked time: {results['ratio_checked_over_unchecked']:.2f}  ({peaks['checked'].method})"]
    report(args, results, lines)


if __name__ == "__main__":
    main()
