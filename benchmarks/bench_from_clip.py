"""Peak memory of `AnomCLIPModel.from_clip` on the paper backbone's shapes, against the weights' size.

A random paper-shaped CLIP (benchmarks/_common.py) is saved to a temporary folder with its tokenizer, as a Hub
checkpoint would be (one safetensors file, float32 unless --dtype). Each measurement then runs in a fresh
Python process, so nothing the parent built is resident: imports first, then the kernel's peak RSS of the one
call (`PeakRSS`), which also reads every weight once (mapped file pages count only once read). "Extra" = that
peak minus the RSS before the call (torch, transformers, anomclip_hf loaded).
Baseline in the same run: transformers' own `CLIPModel.from_pretrained` of the same folder.
Target: from_clip's extra <= 1.3x the size of the weights (one copy of CLIP, not two).

    python benchmarks/bench_from_clip.py [--dtype float32|float16] [--json]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import torch
from _common import MIB, apply_threads, base_parser, paper_shaped_clip, report

from anomclip_hf.model.tokenization import (
    build_offline_clip_tokenizer,
    open_clip_bpe_path,
)

CHILD_FLAG = "--measure"


def measure(kind: str, folder: str) -> dict:
    """In this (fresh) process: the peak RSS of loading `folder` with `kind`."""
    from _common import PeakRSS
    from transformers import CLIPModel

    from anomclip_hf import AnomCLIPModel

    load = {"from_clip": lambda: AnomCLIPModel.from_clip(folder),
            "CLIPModel.from_pretrained": lambda: CLIPModel.from_pretrained(folder)}[kind]
    with PeakRSS() as peak:
        model = load()
        # Read every weight once: safetensors maps the file, and pages nobody has read are not resident yet.
        for parameter in model.parameters():
            torch.sum(parameter.detach(), dtype=torch.float64)
    parameters = sum(p.numel() * p.element_size() for p in model.parameters())
    return {"start_bytes": peak.start_bytes, "peak_bytes": peak.peak_bytes, "extra_bytes": peak.extra_bytes,
            "parameter_bytes": parameters, "method": peak.method}


def measure_in_fresh_process(kind: str, folder: str) -> dict:
    here = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([here, os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, os.path.abspath(__file__), CHILD_FLAG, kind, folder], env=env,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"measuring {kind} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def save_paper_clip(folder: str, dtype: torch.dtype) -> int:
    """Write the paper-shaped CLIP and its tokenizer; returns the bytes of its weight files."""
    if open_clip_bpe_path() is None:
        raise SystemExit("the benchmarks need CLIP's real BPE vocabulary: pip install --no-deps open_clip_torch")
    tokenizer = build_offline_clip_tokenizer(real_vocab=True)
    paper_shaped_clip(len(tokenizer)).to(dtype).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder) if f.endswith(".safetensors"))


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == CHILD_FLAG:
        print(json.dumps(measure(sys.argv[2], sys.argv[3])))
        return
    parser = base_parser(__doc__)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16"], help="weights on disk")
    args = parser.parse_args()
    apply_threads(args)
    with tempfile.TemporaryDirectory(prefix="bench-from-clip-") as folder:
        weight_bytes = save_paper_clip(folder, getattr(torch, args.dtype))
        results = {"settings": {"dtype_on_disk": args.dtype}, "weights_bytes": weight_bytes}
        for kind in ("CLIPModel.from_pretrained", "from_clip"):
            results[kind] = measure_in_fresh_process(kind, folder)
    baseline, ours = results["CLIPModel.from_pretrained"], results["from_clip"]
    results["from_clip_extra_over_weights"] = ours["extra_bytes"] / weight_bytes
    results["baseline_extra_over_weights"] = baseline["extra_bytes"] / weight_bytes
    lines = [f"paper-shaped CLIP, {args.dtype} on disk: weights {weight_bytes / MIB:.0f} MiB; {ours['method']}"]
    for kind in ("CLIPModel.from_pretrained", "from_clip"):
        entry = results[kind]
        lines.append(f"{kind:>26}: RSS before {entry['start_bytes'] / MIB:.0f} MiB, peak {entry['peak_bytes'] / MIB:.0f}"
                     f" MiB, extra {entry['extra_bytes'] / MIB:.0f} MiB = {entry['extra_bytes'] / weight_bytes:.2f}x "
                     f"the weights (loaded parameters {entry['parameter_bytes'] / MIB:.0f} MiB)")
    lines.append(f"from_clip extra / weights = {results['from_clip_extra_over_weights']:.2f} (target <= 1.30)")
    report(args, results, lines)


if __name__ == "__main__":
    main()
