"""Model cards of category adapters and base models, rendered from the templates in model_cards/.

The YAML front matter is built with huggingface_hub's `ModelCardData` (so `ModelCard` parses it back and the
Hub reads `model-index` as evaluation results); the templates hold the prose.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from typing import Optional

from huggingface_hub import EvalResult, ModelCardData

from ..io.labels import PIPELINE_CHECK_NOTE
from .validation import looks_like_local_path, validate_repo_id

TEMPLATE_PACKAGE = "anomclip_hf.model_cards"
CATEGORY_TEMPLATE = "category_adapter.md"
BASE_TEMPLATE = "base_model.md"
LIBRARY_NAME = "anomclip-hf"
TAGS = ["anomaly-detection", "few-shot", "clip", "promptad"]
TASK = {"task_type": "anomaly-detection", "task_name": "Few-shot anomaly detection"}
# (key in category.json "evaluation.metrics", title); the model-index carries these when known.
CARD_METRICS = (("image_auroc", "Image AUROC"), ("pixel_auroc", "Pixel AUROC"), ("aupro", "AUPRO (FPR <= 0.3)"))

# What the card says about a data set: its name, the id used in `datasets:`, and its licence, which
# an adapter inherits (its visual memory holds features of the data set's images).
DATASETS = {
    "mvtec": {"name": "MVTec AD", "id": "mvtec-ad", "license": "cc-by-nc-sa-4.0",
              "note": "MVTec AD is licensed under CC BY-NC-SA 4.0 (attribution, non-commercial, share-alike; "
                      "https://www.mvtec.com/company/research/datasets/mvtec-ad). This adapter was made from "
                      "MVTec AD images and is shared under the same terms: no commercial use."},
    "visa": {"name": "VisA", "id": "visa", "license": "cc-by-4.0",
             "note": "VisA is licensed under CC BY 4.0 (https://github.com/amazon-science/spot-diff). This "
                     "adapter was made from VisA images; attribute the data set when you use it."},
}
CUSTOM_DATA_NOTE = ("This adapter stores features of its reference images (its visual memory). Share it only on "
                    "terms the licence of those images allows.")


def _template(name: str) -> str:
    return resources.files(TEMPLATE_PACKAGE).joinpath(name).read_text(encoding="utf-8")


def hub_base_model(name_or_path: Optional[str]) -> Optional[str]:
    """`name_or_path` when it names a Hub repo (the card's `base_model`); None for local folders."""
    if not name_or_path or looks_like_local_path(name_or_path) or os.path.exists(name_or_path):
        return None
    try:
        return validate_repo_id(name_or_path)
    except ValueError:
        return None


def _dataset_key(category: dict) -> Optional[str]:
    for section in ("training", "evaluation"):
        dataset = (category.get(section) or {}).get("dataset")
        if dataset:
            return str(dataset).lower()
    return None


def _shot_seeds(category: dict) -> Optional[list]:
    evaluation = category.get("evaluation") or {}
    if evaluation.get("seeds") is not None:
        return list(evaluation["seeds"])
    shot_seed = (category.get("training") or {}).get("shot_seed")
    return None if shot_seed is None else [shot_seed]


def category_eval_results(category: dict) -> list[EvalResult]:
    """The model-index entries of a category.json dict: image AUROC, pixel AUROC and AUPRO (to 4 decimals), with
    the data set, split, shots and shot seeds they were measured with (none when the category was never
    evaluated)."""
    evaluation = category.get("evaluation") or {}
    metrics = evaluation.get("metrics") or {}
    dataset = str(evaluation.get("dataset") or _dataset_key(category) or "custom").lower()
    info = DATASETS.get(dataset, {"name": dataset})
    args = {"shots": evaluation.get("shots", category["shots"]), "seeds": _shot_seeds(category)}
    if evaluation.get("resolution") is not None:
        args["resolution"] = evaluation["resolution"]
    return [EvalResult(**TASK, dataset_type=dataset, dataset_name=info["name"], dataset_config=category["category"],
                       dataset_split=evaluation.get("split", "test"),
                       dataset_args={k: v for k, v in args.items() if v is not None},
                       metric_type=key, metric_name=title, metric_value=round(float(metrics[key]), 4))
            for key, title in CARD_METRICS if metrics.get(key) is not None]


def category_card_data(category: dict, model_name: str) -> ModelCardData:
    dataset = _dataset_key(category)
    info = DATASETS.get(dataset or "", {})
    base = hub_base_model(category["base_model"].get("name_or_path"))
    results = category_eval_results(category)
    return ModelCardData(library_name=LIBRARY_NAME, base_model=base, datasets=[info["id"]] if info else None,
                         license=info.get("license", "unknown"), tags=list(TAGS),
                         model_name=model_name if results else None, eval_results=results or None)


def _results_section(category: dict) -> str:
    results = category_eval_results(category)
    if not results:
        return ""
    first = results[0]
    args = first.dataset_args or {}
    lines = ["## Results", "",
             f"{first.dataset_name} `{first.dataset_config}`, {first.dataset_split} split, "
             f"{args.get('shots')}-shot, shot seed(s) {args.get('seeds', 'not recorded')}"
             + (f", pixel metrics at {args['resolution']}x{args['resolution']}" if "resolution" in args else "")
             + ".", "", "| metric | value |", "|---|---|"]
    lines += [f"| {r.metric_name} | {100 * r.metric_value:.2f} % |" for r in results]
    return "\n".join(lines)


def _recipe_section(category: dict) -> str:
    training = category.get("training")
    files = category.get("reference_files") or []
    references = ", ".join(f"`{name}`" for name in files) or "not recorded"
    lines = ["## Training recipe", ""]
    if not training:
        lines += ["Not trained: hand-written prompts (the text branch as in zero-shot use) and the visual memory "
                  f"of {category['shots']} reference image(s): {references}."] + _coreset_lines(category)
        return "\n".join(lines)
    config = training.get("config") or {}
    dataset = training.get("dataset")
    stages = ", ".join(f"{stage} {epochs}" for stage, epochs in (training.get("stage_epochs") or {}).items())
    rows = [
        ("data set", DATASETS.get(str(dataset).lower(), {}).get("name", dataset)),
        ("shots (k normal images)", category["shots"]),
        ("reference images", references),
        ("shot seed", training.get("shot_seed")),
        ("prompt seed", training.get("prompt_seed", category.get("seed"))),
        ("preset", training.get("preset")),
        ("schedule", f"{training.get('schedule')} ({stages} epochs)" if stages else training.get("schedule")),
        ("epochs", training.get("epochs")),
        ("optimiser", f"SGD, lr {config.get('lr')}, momentum {config.get('momentum')}, weight decay "
                      f"{config.get('weight_decay')}, cosine decay to {config.get('min_lr')}" if config else None),
        ("final losses", json.dumps(training.get("final_losses")) if training.get("final_losses") else None),
    ]
    lines += ["| | |", "|---|---|"] + [f"| {name} | {value} |" for name, value in rows if value is not None]
    lines += _coreset_lines(category)
    lines += ["", "<details><summary>full training record</summary>", "", "```json",
              json.dumps(training, indent=2), "```", "", "</details>"]
    return "\n".join(lines)


def _coreset_lines(category: dict) -> list[str]:
    """What a coreset memory keeps and its coverage radius (nothing for the exact bank)."""
    memory = category.get("memory") or {}
    coreset = memory.get("coreset")
    if not coreset:
        return []
    projection = (f"a {coreset['projection_dim']}-dimensional random projection" if coreset.get("projection_dim")
                  else "the features themselves")
    radii = ", ".join(f"layer {layer}: {radius:.4f}" for layer, radius in
                      zip(memory.get("layers") or [], coreset["coverage_radius"]))
    bound = coreset.get("reference_patch_score_bound")
    return ["", f"Visual memory: a greedy k-center coreset (PatchCore) of {coreset['size']} of the {coreset['rows']} "
            f"reference patch rows per memory layer, selected on {projection} (seed {coreset['seed']}). Coverage "
            f"radius (`memory.coreset.coverage_radius` in category.json; {radii}): every reference patch lies within "
            "that distance of a kept one, so against this memory a reference patch scores at most radius^2 / 4 "
            + (f"(at most {bound:.4f} averaged over the layers) " if bound is not None else "")
            + "instead of 0, and any patch's distance to the memory grows by at most the radius."]


def _model_name(category: dict, repo_or_folder: str) -> str:
    if "/" in repo_or_folder and not looks_like_local_path(repo_or_folder) and not os.path.exists(repo_or_folder):
        return repo_or_folder.split("/")[-1]
    return f"anomclip-{category['category']}"


def render_category_card(category: dict, repo_or_folder: str) -> str:
    """The README.md of a category adapter, from its category.json dict; `repo_or_folder` goes into the
    usage snippet (the Hub repo id when pushed)."""
    dataset = _dataset_key(category)
    base = category["base_model"].get("name_or_path") or "BASE"
    return _with_pipeline_check(category["base_model"].get("random_weights", False), _template(CATEGORY_TEMPLATE).format(
        card_data=category_card_data(category, _model_name(category, repo_or_folder)).to_yaml(),
        category=category["category"],
        class_name=category["class_name"],
        shots=category["shots"],
        base_model=base,
        repo_or_folder=repo_or_folder,
        results=_results_section(category),
        recipe=_recipe_section(category),
        prompt_mode="learned (PromptAD)" if category["learned_prompts"] else "hand-written (zero-shot)",
        anomaly_token_position=category["prompt_layout"]["anomaly_token_position"],
        threshold=_threshold_text(category),
        fingerprint=category["base_model"].get("fingerprint"),
        format_version=category.get("format_version"),
        licence_note=DATASETS.get(dataset or "", {}).get("note", CUSTOM_DATA_NOTE),
    ))


def render_base_card(config, base_identity: dict, repo_id: str, license: Optional[str] = None) -> str:
    """The README.md of an AnomCLIP base model (its `AnomCLIPConfig` and `base_identity()`) pushed as `repo_id`."""
    clip_name = config.base_model_name_or_path or "CLIP"
    data = ModelCardData(library_name=LIBRARY_NAME, base_model=hub_base_model(config.base_model_name_or_path),
                         license=license, tags=list(TAGS))
    return _with_pipeline_check(bool(base_identity.get("random_weights")), _template(BASE_TEMPLATE).format(
        card_data=data.to_yaml(),
        clip_name=clip_name,
        repo_id=repo_id,
        prompt_tokens=len(config.prompt_token_names),
        prompt_layout=f"{config.n_prompts_image} image / {config.n_prompts_pixel} pixel normal prompts of "
                      f"{config.n_ctx} context tokens, {config.n_anomaly_prompts} anomaly suffixes",
        memory_layers=config.memory_layers,
        memory_tap=config.memory_tap,
        fingerprint=base_identity["fingerprint"],
        **base_identity["architecture"],
    ))


def _with_pipeline_check(random_weights: bool, card: str) -> str:
    """The card with a PIPELINE CHECK warning under its title when the base's weights are random."""
    if not random_weights:
        return card
    head, title, rest = card.partition("\n# ")
    title_line, _, body = rest.partition("\n")
    return (f"{head}{title}{title_line}\n\n> **{PIPELINE_CHECK_NOTE}.** The base model's CLIP weights are random: "
            f"this card's numbers test the pipeline and detect nothing.\n{body}")


def _threshold_text(category: dict) -> str:
    """The decision threshold and where it comes from (category.json's threshold_estimate)."""
    threshold = category.get("decision_threshold")
    if threshold is None:
        return "none stored (pass one to `predict --threshold`)"
    estimate = category.get("threshold_estimate") or {}
    if not estimate:
        return f"{threshold:.4f}"
    if "rule" in estimate:  # set by `anomclip calibrate`
        data = estimate.get("data") or {}
        on = (f" on {data.get('normal_images', 0)} normal and {data.get('abnormal_images', 0)} anomalous images"
              if data else "")
        return (f"{threshold:.4f} (score >= threshold is anomalous; calibrated {estimate.get('when') or ''}{on}: "
                f"{estimate['method']}; {len(estimate.get('history') or [])} earlier threshold(s) kept in "
                "category.json)")
    return (f"{threshold:.4f} (score >= threshold is anomalous; {estimate['method']}, margin "
            f"{estimate['margin']:.0%} above the highest of {len(estimate['leave_one_out_image_scores'])} scores)")
