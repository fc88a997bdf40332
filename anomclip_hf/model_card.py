"""Model cards of category adapters, rendered from the template in model_cards/."""

from __future__ import annotations

import json
from importlib import resources

TEMPLATE_PACKAGE = "anomclip_hf.model_cards"
TEMPLATE_NAME = "category_adapter.md"


def _model_index(category: dict) -> str:
    results = (category.get("evaluation") or {}).get("metrics")
    if not results:
        return ""
    dataset = category["evaluation"].get("dataset", "custom")
    lines = ["model-index:", f"- name: anomclip-{category['category']}", "  results:", "  - task:",
             "      type: anomaly-detection", "    dataset:", f"      name: {dataset}", f"      type: {dataset}",
             "    metrics:"]
    for name, value in results.items():
        lines += [f"    - type: {name}", f"      value: {float(value):.4f}"]
    return "\n".join(lines) + "\n"


def render_category_card(category: dict, repo_or_folder: str) -> str:
    """Fill the template with a category.json dict."""
    template = resources.files(TEMPLATE_PACKAGE).joinpath(TEMPLATE_NAME).read_text(encoding="utf-8")
    training = category.get("training")
    evaluation = category.get("evaluation")
    return template.format(
        base_model=category["base_model"].get("name_or_path") or "unknown",
        model_index=_model_index(category),
        category=category["category"],
        class_name=category["class_name"],
        shots=category["shots"],
        seed=category.get("seed"),
        repo_or_folder=repo_or_folder,
        prompt_mode="learned (PromptAD)" if category["learned_prompts"] else "hand-written (zero-shot)",
        anomaly_token_position=category["prompt_layout"]["anomaly_token_position"],
        reference_files=", ".join(category.get("reference_files") or []) or "not recorded",
        threshold=category.get("decision_threshold"),
        training="## Training\n\n```json\n" + json.dumps(training, indent=2) + "\n```" if training else "",
        evaluation="## Evaluation\n\n```json\n" + json.dumps(evaluation, indent=2) + "\n```" if evaluation else "",
    )
