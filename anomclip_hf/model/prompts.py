"""Class names, manual anomaly phrases and the prompt layout of semantic concatenation.

Prompts are plain text in which every learnable vector is an added vocabulary token, e.g.
``"<img_n0_0><img_n0_1><img_n0_2><img_n0_3> bottle <img_a0_0>."``: readable, tokenised by the
ordinary CLIP tokenizer, and the learned rows are substituted at those tokens' positions.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Optional, Sequence

from ..errors import ArgumentError
from .category import anomaly_token, context_token

GENERIC_PHRASES = (
    "damaged {}", "flawed {}", "abnormal {}", "imperfect {}", "blemished {}",
    "{} with flaw", "{} with defect", "{} with damage",
)

# Reference code ad_prompts.py, looked up by the raw folder name (they name the test defect types).
CATEGORY_PHRASES: dict[str, tuple[str, ...]] = {
    # MVTec AD
    "bottle": ("{} with large breakage", "{} with small breakage", "{} with contamination"),
    "toothbrush": ("{} with defect", "{} with anomaly"),
    "carpet": ("{} with hole", "{} with color stain", "{} with metal contamination", "{} with thread residue",
               "{} with thread", "{} with cut"),
    "hazelnut": ("{} with crack", "{} with cut", "{} with hole", "{} with print"),
    "leather": ("{} with color stain", "{} with cut", "{} with fold", "{} with glue", "{} with poke"),
    "cable": ("{} with bent wire", "{} with missing part", "{} with missing wire", "{} with cut", "{} with poke"),
    "capsule": ("{} with crack", "{} with faulty imprint", "{} with poke", "{} with scratch",
                "{} squeezed with compression"),
    "grid": ("{} with breakage", "{} with thread residue", "{} with thread", "{} with metal contamination",
             "{} with glue", "{} with a bent shape"),
    "pill": ("{} with color stain", "{} with contamination", "{} with crack", "{} with faulty imprint",
             "{} with scratch", "{} with abnormal type"),
    "transistor": ("{} with bent lead", "{} with cut lead", "{} with damage", "{} with misplaced transistor"),
    "metal_nut": ("{} with a bent shape ", "{} with color stain", "{} with a flipped orientation",
                  "{} with scratch"),
    "screw": ("{} with manipulated front", "{} with scratch neck", "{} with scratch head"),
    "zipper": ("{} with broken teeth", "{} with fabric border", "{} with defect fabric", "{} with broken fabric",
               "{} with split teeth", "{} with squeezed teeth"),
    "tile": ("{} with crack", "{} with glue strip", "{} with gray stroke", "{} with oil", "{} with rough surface"),
    "wood": ("{} with color stain", "{} with hole", "{} with scratch", "{} with liquid"),
    # VisA
    "candle": ("{} with melded wax", "{} with foreign particals", "{} with extra wax",
               "{} with chunk of wax missing", "{} with weird candle wick",
               "{} with damaged corner of packaging", "{} with different colour spot"),
    "capsules": ("{} with scratch", "{} with discolor", "{} with misshape", "{} with leak", "{} with bubble"),
    "cashew": ("{} with breakage", "{} with small scratches", "{} with burnt", "{} with stuck together",
               "{} with spot"),
    "chewinggum": ("{} with corner missing", "{} with scratches", "{} with chunk of gum missing",
                   "{} with colour spot", "{} with cracks"),
    "fryum": ("{} with breakage", "{} with scratches", "{} with burnt", "{} with colour spot",
              "{} with fryum stuck together", "{} with colour spot"),
    "macaroni1": ("{} with color spot", "{} with small chip around edge", "{} with small scratches",
                  "{} with breakage", "{} with cracks"),
    "pcb1": ("{} with bent", "{} with scratch", "{} with missing", "{} with melt"),
    "pcb4": ("{} with scratch", "{} with extra", "{} with missing", "{} with wrong place", "{} with damage",
             "{} with burnt", "{} with dirt"),
    "pipe_fryum": ("{} with breakage", "{} with small scratches", "{} with burnt", "{} with stuck together",
                   "{} with colour spot", "{} with cracks"),
}
CATEGORY_PHRASES["macaroni2"] = CATEGORY_PHRASES["macaroni1"]
CATEGORY_PHRASES["pcb2"] = CATEGORY_PHRASES["pcb3"] = CATEGORY_PHRASES["pcb1"]

MVTEC_CATEGORIES = ("bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut", "pill",
                    "screw", "tile", "toothbrush", "transistor", "wood", "zipper")
VISA_CATEGORIES = ("candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2", "pcb1", "pcb2",
                   "pcb3", "pcb4", "pipe_fryum")

_CLASS_NAME_RENAMES = {
    "pcb1": "printed circuit board", "pcb2": "printed circuit board", "pcb3": "printed circuit board",
    "pcb4": "printed circuit board", "macaroni1": "macaroni", "macaroni2": "macaroni",
    "chewinggum": "chewing gum", "pipe_fryum": "pipe fryum",
}

# Zero-shot (untrained) prompts carry no learned vectors; a short CLIP-style template replaces them.
ZERO_SHOT_TEMPLATE = "a photo of a {}."


def class_name_for(category: str) -> str:
    """Text used for a category folder: the reference renames, else '_' -> ' '."""
    key = os.path.basename(os.path.normpath(category))
    return _CLASS_NAME_RENAMES.get(key, key.replace("_", " "))


MAX_PHRASE_LENGTH = 200  # characters; CLIP reads 77 tokens of a whole prompt anyway


def phrase_problem(phrase) -> Optional[str]:
    """None if `phrase` is a usable manual phrase, else what is expected of one. The phrase is a format
    string (phrase.format(class_name)): exactly one '{}' and no other braces, so it cannot index or read
    attributes ('{0.__class__}', '{1}') or fail at scoring time."""
    if not isinstance(phrase, str) or not 0 < len(phrase) <= MAX_PHRASE_LENGTH:
        return f"a string of 1 to {MAX_PHRASE_LENGTH} characters"
    if phrase.count("{}") != 1 or "{" in phrase.replace("{}", "") or "}" in phrase.replace("{}", ""):
        return "exactly one '{}' where the class name goes and no other braces, e.g. '{} with a scratch'"
    return None


def manual_phrases(category: str, use_category_phrases: bool = True,
                   extra_phrases: Optional[Sequence[str]] = None) -> list[str]:
    """The 8 generic phrases + the category's list (unknown categories: generic only) + user phrases."""
    phrases = list(GENERIC_PHRASES)
    if use_category_phrases:
        phrases += CATEGORY_PHRASES.get(category, ())
    for phrase in extra_phrases or ():
        problem = phrase_problem(phrase)
        if problem:
            raise ArgumentError(f"manual phrase {phrase!r}: expected {problem}")
        phrases.append(phrase)
    return phrases


def read_phrases_file(path: str) -> list[str]:
    """Anomaly phrases from a text file, one per line ("{} with a scratch"); blank lines and # comments skipped."""
    phrases = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            phrase = line.strip()
            if not phrase or phrase.startswith("#"):
                continue
            problem = phrase_problem(phrase)
            if problem:
                raise ArgumentError(f"{path} line {number}: phrase {phrase!r}: expected {problem}")
            phrases.append(phrase)
    if not phrases:
        raise ArgumentError(f"{path} holds no phrases; expected one per line, e.g. '{{}} with a scratch'")
    return phrases


@dataclass(frozen=True)
class HeadPrompts:
    """The prompt texts of one head: N normal, N*M manual anomaly, N*L learned anomaly prompts."""

    normal: list[str]
    manual: list[str]
    learned: list[str]


def learned_pairs(n_prompts: int, n_anomaly: int) -> list[tuple[int, int]]:
    """(normal context, anomaly suffix) pairs: the full N x L cross product.

    When gcd(N, L) = 1 the order is the reference's (prompt t uses context t mod N and suffix t mod L),
    otherwise the plain product order (the reference would miss pairs there).
    """
    if math.gcd(n_prompts, n_anomaly) == 1:
        return [(t % n_prompts, t % n_anomaly) for t in range(n_prompts * n_anomaly)]
    return [(i, j) for i in range(n_prompts) for j in range(n_anomaly)]


def _tokens(names: Sequence[str]) -> str:
    return "".join(names)


def build_head_prompts(config, head: str, class_name: str, phrases: Sequence[str]) -> HeadPrompts:
    """Learned prompts of one head ("image" or "pixel") by semantic concatenation."""
    n_prompts, n_ctx, n_anomaly, n_anomaly_ctx = config.head_sizes(head)
    contexts = [_tokens([context_token(head, i, e) for e in range(n_ctx)]) for i in range(n_prompts)]
    suffixes = [_tokens([anomaly_token(head, j, e) for e in range(n_anomaly_ctx)]) for j in range(n_anomaly)]
    normal = [f"{context} {class_name}." for context in contexts]
    # State-major order, as the reference: row r uses phrase r // N and context r % N.
    manual = [f"{contexts[r % n_prompts]} {phrases[r // n_prompts].format(class_name).strip()}."
              for r in range(len(phrases) * n_prompts)]
    if config.anomaly_token_position == "suffix":
        learned = [f"{contexts[i]} {class_name} {suffixes[j]}." for i, j in learned_pairs(n_prompts, n_anomaly)]
    else:
        learned = [f"{contexts[i]} {suffixes[j]} {class_name}." for i, j in learned_pairs(n_prompts, n_anomaly)]
    return HeadPrompts(normal=normal, manual=manual, learned=learned)


def build_zero_shot_prompts(class_name: str, phrases: Sequence[str]) -> HeadPrompts:
    """Hand-written prompts for a category that was never trained (text-only / zero-shot scoring)."""
    return HeadPrompts(
        normal=[ZERO_SHOT_TEMPLATE.format(class_name)],
        manual=[ZERO_SHOT_TEMPLATE.format(phrase.format(class_name).strip()) for phrase in phrases],
        learned=[],
    )
