"""Every speed-up against the plain computation it replaces: same outputs (to float rounding), bounded memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage
from sklearn.metrics import average_precision_score, roc_auc_score
from transformers import CLIPVisionModel

from anomclip_hf.inference.batch_scoring import score_images
from anomclip_hf.memory import search as memory_search
from anomclip_hf.memory.search import bf16_product_error_bound
from anomclip_hf.metrics import PixelMetricAccumulator, _curves
from anomclip_hf.metrics._regions import region_sizes
from anomclip_hf.model import scoring
from anomclip_hf.model.category import HEADS
from anomclip_hf.model.processing_anomclip import preprocess_images
from anomclip_hf.model.scoring import (
    gaussian_blur,
    harmonic_fusion,
    memory_patch_scores,
    scaled_sigma,
    smooth_upsample,
    text_anomaly_probability,
    upsample_patch_map,
    upsampled_peak,
)
from anomclip_hf.model.text_encoding import encode_text_embeddings, prefix_tree
from anomclip_hf.model.vv_attention import dual_stream_vision_forward

# ----------------------------------------------------------------------------- maps: upsample + blur


def test_gaussian_blur_equals_scipy():
    maps = torch.rand(3, 40, 52, dtype=torch.float64)
    ours = gaussian_blur(maps, sigma=2.5)
    for index in range(3):
        expected = ndimage.gaussian_filter(maps[index].numpy(), 2.5, mode="reflect", truncate=4.0)
        assert np.abs(ours[index].numpy() - expected).max() < 1e-12


@pytest.mark.parametrize("output_size,sigma", [(400, 4.0), (64, 0.64), ((48, 80), 1.5), (30, 0.0)])
def test_smooth_upsample_equals_upsample_then_blur(output_size, sigma):
    patch_scores = torch.rand(5, 225)
    plain = gaussian_blur(upsample_patch_map(patch_scores, output_size), sigma)
    fast = smooth_upsample(patch_scores, output_size, sigma)
    exact = gaussian_blur(upsample_patch_map(patch_scores.double(), output_size), sigma)
    assert fast.shape == plain.shape and fast.dtype == torch.float32
    assert (fast - plain).abs().max() < 1e-6  # a few float32 ulps of values in [0, 1]
    # fewer float32 operations: at least as close to the float64 result as the plain path
    assert (fast - exact).abs().max() <= (plain - exact).abs().max() + 1e-7


def test_upsampled_peak_equals_max_of_upsampled_map():
    patch_scores = torch.rand(6, 225)
    patch_scores[0, 0] = 2.0  # a corner maximum: reached in the clamped border of the upsampled map
    plain = upsample_patch_map(patch_scores, 400).flatten(1).max(dim=1).values
    assert (upsampled_peak(patch_scores, 400) - plain).abs().max() < 1e-6
    assert abs(float(upsampled_peak(patch_scores, 400)[0]) - 2.0) < 1e-6


def test_non_square_patch_count_is_rejected():
    with pytest.raises(ValueError, match="224 patches do not form a square grid"):
        smooth_upsample(torch.rand(1, 224), 400, 4.0)


# ----------------------------------------------------------------------------- memory nearest neighbour


def _brute_force_memory_scores(features, bank):
    per_layer = [((1 - (f.reshape(-1, f.shape[-1]) @ b.T).max(dim=1).values) / 2).reshape(f.shape[:-1])
                 for f, b in zip(features, bank)]
    return torch.stack(per_layer).mean(dim=0).clamp(0, 1)


@pytest.mark.parametrize("references", [1, 64])
def test_blocked_nearest_neighbour_is_exact(references):
    generator = torch.Generator().manual_seed(references)
    features = [F.normalize(torch.randn(3, 225, 24, generator=generator), dim=-1) for _ in range(2)]
    bank = [F.normalize(torch.randn(references * 225, 24, generator=generator), dim=-1) for _ in range(2)]
    expected = _brute_force_memory_scores(features, bank)
    # tiny blocks force many query and bank blocks (and a last, partial block of each); block shapes
    # change the matmul's rounding only
    for budget in (1000, 4096, 1 << 22):
        assert (memory_patch_scores(features, bank, max_block_elements=budget) - expected).abs().max() < 1e-6


def test_export_branches_compute_the_same_scores(scored_model, monkeypatch):
    """While torch.export traces (anomclip export), the forward takes one nearest-neighbour block, a tensor
    temperature and no finiteness check: the same numbers as the eager path."""
    generator = torch.Generator().manual_seed(7)
    features = [F.normalize(torch.randn(3, 225, 24, generator=generator), dim=-1) for _ in range(2)]
    bank = [F.normalize(torch.randn(4 * 225, 24, generator=generator), dim=-1) for _ in range(2)]
    blocked = memory_patch_scores(features, bank, max_block_elements=1000)
    pixel_values = torch.randn(2, 3, 30, 30)
    with torch.no_grad():
        eager = scored_model(pixel_values, output_size=40)
    temperature = scored_model.temperature
    monkeypatch.setattr(torch.compiler, "is_exporting", lambda: True)
    assert (memory_patch_scores(features, bank, max_block_elements=1000) - blocked).abs().max() < 1e-6
    assert (memory_patch_scores(features, bank) - _brute_force_memory_scores(features, bank)).abs().max() < 1e-6
    assert isinstance(scored_model.temperature, torch.Tensor) and float(scored_model.temperature) == temperature
    with torch.no_grad():
        exporting = scored_model(pixel_values, output_size=40)
    assert torch.equal(exporting.image_scores, eager.image_scores)
    assert torch.equal(exporting.anomaly_maps, eager.anomaly_maps)


def test_nearest_neighbour_blocks_stay_within_budget(monkeypatch):
    features = [F.normalize(torch.randn(8, 225, 16), dim=-1)]
    bank = [F.normalize(torch.randn(64 * 225, 16), dim=-1)]
    largest = []
    real_amax = torch.Tensor.amax

    def recording_amax(tensor, *args, **kwargs):
        largest.append(tensor.numel())
        return real_amax(tensor, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "amax", recording_amax)
    memory_patch_scores(features, bank, max_block_elements=50_000)
    assert largest and max(largest) <= 50_000


def _random_memory(references: int, width: int, seed: int, near_duplicates: bool = False):
    generator = torch.Generator().manual_seed(seed)
    features = [F.normalize(torch.randn(2, 225, width, generator=generator), dim=-1) for _ in range(2)]
    bank = [F.normalize(torch.randn(references, 225, width, generator=generator), dim=-1) for _ in range(2)]
    if near_duplicates:  # every query has many bank rows within the bf16 error bound: the exact fallback
        bank = [F.normalize(f[:1].expand(references, -1, -1) + 1e-4 * torch.randn(references, 225, width,
                                                                                   generator=generator), dim=-1)
                for f in features]
    return features, bank


@pytest.mark.parametrize("references,width", [(1, 64), (4, 64), (16, 64), (64, 64), (64, 896)])
def test_shortlisted_nearest_neighbour_equals_the_exact_one(references, width):
    features, bank = _random_memory(references, width, seed=references + width)
    expected = _brute_force_memory_scores(features, [b.reshape(-1, width) for b in bank])
    for budget in (1 << 17, 1 << 22):  # the smaller one: several query blocks and chunks of re-checked pairs
        fast = memory_patch_scores(features, bank, max_block_elements=budget, search="shortlist")
        assert (fast - expected).abs().max() < 1e-6
    # "auto" is one of the two, bit for bit: exact for small banks or without bf16 instructions, else the one
    # measured faster (tests/memory/test_search_auto.py)
    rows = bank[0].reshape(-1, width).shape[0]
    auto = memory_patch_scores(features, bank)
    if rows < scoring.SHORTLIST_MIN_ROWS or not scoring.native_bf16(bank[0].device):
        assert torch.equal(memory_patch_scores(features, bank, search="exact"), auto)
    else:
        assert any(torch.equal(memory_patch_scores(features, bank, search=name), auto)
                   for name in ("exact", "shortlist"))


@pytest.mark.parametrize("references", [4, 64])
def test_shortlist_recovers_every_nearest_neighbour_and_falls_back_on_near_ties(references):
    """Per layer: the similarity found is the exact nearest neighbour's, also where many rows tie within the
    bf16 error bound (those patches go to the exact search)."""
    for near_duplicates in (False, True):
        features, bank = _random_memory(references, 96, seed=references, near_duplicates=near_duplicates)
        for f, b in zip(features, bank):
            flat, rows = f.reshape(-1, 96), b.reshape(-1, 96)
            exact = (flat @ rows.T).max(dim=1).values
            fast = memory_search.shortlisted_nearest(flat, rows, rows.bfloat16(), 1 << 22, max_candidates=8)
            assert (fast - exact).abs().max() < 1e-6


def test_bf16_product_error_bound_holds():
    generator = torch.Generator().manual_seed(0)
    for width in (16, 640, 896):
        q = F.normalize(torch.randn(300, width, generator=generator), dim=-1)
        b = F.normalize(torch.randn(500, width, generator=generator), dim=-1)
        b[0] = 1 / width ** 0.5  # equal components: every rounding error has the same sign
        q[0] = b[0] + 1e-3
        q = F.normalize(q, dim=-1)
        error = ((q.bfloat16() @ b.bfloat16().T).float() - (q.double() @ b.double().T).float()).abs()
        assert error.max() <= bf16_product_error_bound(width)
    assert 0.0117 < bf16_product_error_bound(896) < 0.0119  # 3 bf16 roundings + float32 sums


def test_auto_search_uses_the_shortlist_only_for_large_banks_on_native_bf16(monkeypatch):
    calls = []
    real = memory_search.shortlisted_nearest
    monkeypatch.setattr(memory_search, "shortlisted_nearest", lambda *a, **k: calls.append(1) or real(*a, **k))
    small, large = _random_memory(4, 32, seed=1), _random_memory(32, 32, seed=2)
    for native in (False, True):
        monkeypatch.setattr(scoring, "native_bf16", lambda device: native)
        calls.clear()
        memory_patch_scores(*small)
        assert not calls  # 4 x 225 rows: exact
        memory_patch_scores(*large)
        assert len(calls) == (2 if native else 0)  # 32 x 225 = 7200 rows: shortlist where bf16 is native
    with pytest.raises(ValueError, match="search='fast'"):
        memory_patch_scores(*small, search="fast")


def test_shortlist_bank_copy_follows_changes_and_gradients_match():
    features, bank = _random_memory(16, 48, seed=3)
    first = memory_patch_scores(features, bank, search="shortlist")
    with torch.no_grad():
        bank[0].copy_(F.normalize(torch.randn_like(bank[0]), dim=-1))  # in place: the cached bf16 copy is stale
    changed = memory_patch_scores(features, bank, search="shortlist")
    assert not torch.equal(first, changed)
    assert (changed - memory_patch_scores(features, bank, search="exact")).abs().max() < 1e-6
    grads = []
    for search in ("exact", "shortlist"):
        leaves = [f.clone().requires_grad_(True) for f in features]
        memory_patch_scores(leaves, bank, search=search).sum().backward()
        grads.append(torch.cat([leaf.grad.flatten() for leaf in leaves]))
    assert (grads[0] - grads[1]).abs().max() < 1e-6


def test_scoring_stays_float32_under_autocast():
    features = [F.normalize(torch.randn(2, 225, 32), dim=-1) for _ in range(2)]
    bank = [F.normalize(torch.randn(450, 32), dim=-1) for _ in range(2)]
    prototypes = F.normalize(torch.randn(2, 16), dim=-1)
    patch = F.normalize(torch.randn(2, 225, 16), dim=-1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        visual = memory_patch_scores(features, bank)
        text = text_anomaly_probability(patch, prototypes, 4.6)
        maps = smooth_upsample(visual, 64, 0.64)
    assert visual.dtype == text.dtype == maps.dtype == torch.float32
    assert torch.equal(visual, memory_patch_scores(features, bank))
    assert torch.equal(text, text_anomaly_probability(patch, prototypes, 4.6))


# ----------------------------------------------------------------------------- vision tower


def test_cls_only_last_block_matches_full_computation(tiny_clip):
    """With no memory tap in the last block, only its CLS token is computed; nothing read changes."""
    pixel_values = torch.randn(2, 3, 30, 30)
    vision, projection = tiny_clip.vision_model, tiny_clip.visual_projection
    with torch.no_grad():
        trimmed = dual_stream_vision_forward(vision, projection, pixel_values, vv_layers=[0, 1], memory_layers=[0])
        # a tap in the last block makes it compute every token: the plain path
        full = dual_stream_vision_forward(vision, projection, pixel_values, vv_layers=[0, 1], memory_layers=[0, 1])
        bare = CLIPVisionModel(tiny_clip.config.vision_config)
        getattr(bare, "vision_model", bare).load_state_dict(vision.state_dict())
        image_embeds = F.normalize(projection(bare(pixel_values=pixel_values).pooler_output), dim=-1)
    assert (trimmed.global_embeds - full.global_embeds).abs().max() < 1e-6
    assert (trimmed.global_embeds - image_embeds).abs().max() < 1e-5
    assert torch.equal(trimmed.patch_embeds, full.patch_embeds)
    assert torch.equal(trimmed.memory_features[0], full.memory_features[0])


# ----------------------------------------------------------------------------- text tower: shared prefixes


def test_prefix_tree_merges_shared_prefixes():
    sos, eos, pad = 7, 9, 0
    ids = torch.tensor([[sos, 1, 2, eos, pad], [sos, 1, 3, eos, eos], [sos, 1, 2, 4, eos]])
    tree = prefix_tree(ids, eos)
    # nodes: sos, 1, 2, eos(row 0), 3, eos(row 1), 4, eos(row 2)
    assert tree.num_nodes == 8
    assert tree.node_positions.tolist() == [0, 1, 2, 3, 2, 3, 3, 4]
    assert tree.eos_nodes.tolist() == [3, 5, 7]
    assert tree.occurrences[2].tolist() == [0, 1, 2, 6, 7] and tree.occurrences[0, 4] == -1
    assert tree.ancestors[7].nonzero().flatten().tolist() == [0, 1, 2, 6, 7]
    assert tree.ancestors[5].nonzero().flatten().tolist() == [0, 1, 4, 5]


def _head_features_and_gradients(model, share_prefixes, monkeypatch):
    import anomclip_hf.model.prompt_text as modeling  # where the model encodes its prompts

    def encode(*args):
        return encode_text_embeddings(*args, share_prefixes=share_prefixes)

    monkeypatch.setattr(modeling, "encode_text_embeddings", encode)
    vectors = model.prompt_parameters("bottle")[0]
    vectors.grad = None
    features = {head: model.encode_prompts("bottle", head) for head in HEADS}
    loss = sum((f.normal.sum() + f.manual.pow(2).sum() + f.learned.sin().sum()) for f in features.values())
    loss.backward()
    stacked = {head: torch.cat([f.normal, f.manual, f.learned]).detach() for head, f in features.items()}
    return stacked, vectors.grad.clone()


def test_shared_prefixes_give_the_padded_features_and_gradients(tiny_model, monkeypatch):
    tiny_model.add_category("bottle", learned_prompts=True, seed=3)
    shared, shared_grad = _head_features_and_gradients(tiny_model, True, monkeypatch)
    padded, padded_grad = _head_features_and_gradients(tiny_model, False, monkeypatch)
    for head in HEADS:
        assert (shared[head] - padded[head]).abs().max() < 1e-5
    assert shared_grad.abs().max() > 0
    assert (shared_grad - padded_grad).abs().max() < 1e-5 * padded_grad.abs().max()


def test_equal_ids_with_different_embeddings_use_the_padded_batch(tiny_model):
    clip, eos = tiny_model.clip, tiny_model.text_eos_token_id
    ids = tiny_model.tokenize_prompts(["bottle", "bottle crack"])[:, :16]
    embeds = clip.text_model.embeddings.token_embedding(ids).detach().clone()
    embeds[1, 1] += 0.5  # same id as row 0 at position 1, another vector: no prefix may be shared
    with torch.no_grad():
        shared = encode_text_embeddings(clip.text_model, clip.text_projection, embeds, ids, eos)
        padded = encode_text_embeddings(clip.text_model, clip.text_projection, embeds, ids, eos, share_prefixes=False)
    assert torch.equal(shared, padded)


# ----------------------------------------------------------------------------- the model forward


@pytest.fixture
def scored_model(tiny_model):
    generator = torch.Generator().manual_seed(0)
    tiny_model.add_category("bottle", reference_images=torch.randn(2, 3, 30, 30, generator=generator))
    return tiny_model


def _plain_forward(model, pixel_values, output_size):
    """The forward written with the plain upsample/blur/max of docs/method/promptad.md, "Scoring"."""
    features = model.encode_images(pixel_values)
    prototypes = model.text_prototypes()
    text_image = text_anomaly_probability(features.global_embeds, prototypes["image"], model.temperature)
    text_patch = text_anomaly_probability(features.patch_embeds, prototypes["pixel"], model.temperature)
    bank = [layer.reshape(-1, layer.shape[-1]) for layer in model.get_category().memory_bank]
    visual = _brute_force_memory_scores(features.memory_features, bank)
    # image scores are defined at the config's scoring size, whatever the map size
    peak = upsample_patch_map(visual, model.config.scoring_size).flatten(1).max(dim=1).values
    sigma = scaled_sigma(model.config.gaussian_sigma, model.config.sigma_reference_size, output_size)
    maps = gaussian_blur(upsample_patch_map(harmonic_fusion(text_patch, visual), output_size), sigma)
    return harmonic_fusion(peak, text_image), maps


def test_forward_equals_plain_scoring(scored_model):
    pixel_values = torch.randn(3, 3, 30, 30)
    with torch.no_grad():
        scores, maps = _plain_forward(scored_model, pixel_values, 96)
        out = scored_model(pixel_values, output_size=96)
    assert out.anomaly_maps.shape == (3, 96, 96)
    assert (out.anomaly_maps - maps).abs().max() < 1e-6
    assert (out.image_scores - scores).abs().max() < 1e-6


def test_inference_runs_no_text_tower_once_prototypes_are_cached(scored_model):
    calls = []
    hook = scored_model.clip.text_model.encoder.layers[0].self_attn.q_proj.register_forward_hook(
        lambda *_: calls.append(1))
    try:
        with torch.inference_mode():
            scored_model.text_prototypes()
            assert calls, "the hook must see the text tower when the prototypes are built"
            calls.clear()
            scored_model(torch.randn(2, 3, 30, 30), output_size=40)
    finally:
        hook.remove()
    assert calls == []


def test_score_images_in_inference_mode_equals_forward(scored_model):
    images = [np.random.default_rng(i).integers(0, 255, (40, 40, 3), dtype=np.uint8) for i in range(3)]
    pictures = [Image.fromarray(array) for array in images]
    batches = list(score_images(scored_model, pictures, batch_size=3, output_size=48, progress=False))
    with torch.no_grad():
        out = scored_model(preprocess_images(pictures, scored_model.config.image_size), output_size=48)
    assert np.array_equal(np.concatenate([b.image_scores for b in batches]), out.image_scores.numpy())
    assert np.array_equal(np.concatenate([b.anomaly_maps for b in batches]), out.anomaly_maps.numpy())
    # prototypes first built inside inference mode are plain tensors: gradients through scores still work
    prototypes = scored_model.text_prototypes()
    assert not any(p.is_inference() for p in prototypes.values())
    pixel_values = torch.randn(1, 3, 30, 30, requires_grad=True)
    scored_model(pixel_values, output_size=30).image_scores.sum().backward()
    assert pixel_values.grad is not None and torch.isfinite(pixel_values.grad).all()


@pytest.mark.parametrize("mode", ["full", "memory", "text"])
def test_autocast_forward_is_close_and_float32(scored_model, mode):
    """bf16 autocast on the CPU: the vision tower runs in bf16, scores and maps stay float32 and within 2e-3
    of the float32 forward (measured: at most 6.4e-4 for maps, 2.4e-4 for image scores)."""
    pixel_values = torch.randn(2, 3, 30, 30, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        reference = scored_model(pixel_values, output_size=40, mode=mode)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = scored_model(pixel_values, output_size=40, mode=mode)
    assert low.anomaly_maps.dtype == low.image_scores.dtype == torch.float32
    assert not torch.equal(low.anomaly_maps, reference.anomaly_maps)  # autocast did take effect
    assert (low.anomaly_maps - reference.anomaly_maps).abs().max() < 2e-3
    assert (low.image_scores - reference.image_scores).abs().max() < 2e-3


def test_autocast_score_images_is_close_and_float32(scored_model):
    pictures = [Image.fromarray(np.random.default_rng(i).integers(0, 255, (30, 30, 3), dtype=np.uint8))
                for i in range(2)] + [Image.fromarray(np.full((30, 30, 3), 120, dtype=np.uint8))]
    plain, = score_images(scored_model, pictures, output_size=40, progress=False)
    autocast, = score_images(scored_model, pictures, output_size=40, progress=False, autocast_dtype=torch.bfloat16)
    assert autocast.anomaly_maps.dtype == autocast.image_scores.dtype == np.float32
    assert not np.array_equal(autocast.anomaly_maps, plain.anomaly_maps)  # autocast did take effect
    assert np.abs(autocast.anomaly_maps - plain.anomaly_maps).max() < 2e-3
    assert np.abs(autocast.image_scores - plain.image_scores).max() < 2e-3


# ----------------------------------------------------------------------------- metrics: exact counts


def _all_threshold_counts(pos, neg, weights=None, n_regions=0):
    """Counts at every distinct score (sklearn's _binary_clf_curve), the plain construction."""
    thresholds = np.unique(np.concatenate([pos, neg]))[::-1]
    tp = np.array([(pos >= t).sum() for t in thresholds])
    fp = np.array([(neg >= t).sum() for t in thresholds])
    pro = None if weights is None else np.array([weights[pos >= t].sum() for t in thresholds])
    return _curves.Counts(thresholds, tp, fp, pos.size, neg.size, pro, n_regions)


@pytest.mark.parametrize("levels", [None, 12, 3])
def test_exact_counts_give_the_metrics_of_all_thresholds(levels):
    rng = np.random.default_rng(levels or 0)
    masks = np.zeros((4, 24, 24), dtype=bool)
    masks[0, 2:8, 3:9] = masks[1, 10:20, 10:13] = masks[3, 0:4, 20:24] = True
    maps = (rng.random(masks.shape) * 0.7 + 0.3 * masks * rng.random(masks.shape)).astype(np.float32)
    if levels:
        maps = (np.round(maps * levels) / levels).astype(np.float32)  # heavy ties across classes
    sizes, n_regions = region_sizes(masks)
    pos, neg = maps[masks], maps[~masks]
    fast = _curves.exact_counts(pos, neg.copy(), 1.0 / sizes, n_regions, overwrite_neg=True)
    plain = _all_threshold_counts(pos, neg, 1.0 / sizes, n_regions)
    assert len(fast.thresholds) <= 2 * pos.size + 1
    assert abs(_curves.roc_auc(fast) - _curves.roc_auc(plain)) < 1e-12
    assert abs(_curves.roc_auc(fast) - roc_auc_score(masks.ravel(), maps.ravel())) < 1e-12
    assert abs(_curves.average_precision(fast) - average_precision_score(masks.ravel(), maps.ravel())) < 1e-12
    assert _curves.f1_max(fast) == _curves.f1_max(plain)
    for limit in (0.01, 0.05, 0.3, 1.0):
        assert abs(_curves.aupro(fast, limit) - _curves.aupro(plain, limit)) < 1e-12


def test_exact_counts_leave_the_inputs_alone_by_default():
    neg = np.array([0.5, 0.1, 0.9], dtype=np.float32)
    _curves.exact_counts(np.array([0.7], dtype=np.float32), neg)
    assert neg.tolist() == pytest.approx([0.5, 0.1, 0.9])


def test_binned_accumulator_agrees_with_sklearn_within_stated_tolerance():
    """Binned mode (1000 bins) against sklearn / exact mode: AUROC within 1e-4, AUPRO and F1-max within 2e-3."""
    rng = np.random.default_rng(7)
    masks = np.zeros((6, 64, 64), dtype=np.uint8)
    masks[3:, 20:40, 10:30] = 1
    noisy = rng.normal(0.3, 0.1, masks.shape) + 0.25 * masks
    maps = np.clip(np.stack([ndimage.gaussian_filter(m, 2) for m in noisy]), 0, 1).astype(np.float32)
    results = {}
    for mode in ("exact", "binned"):
        accumulator = PixelMetricAccumulator(mode=mode)
        accumulator.update(maps[:4], masks[:4])
        accumulator.update(maps[4:], masks[4:])
        results[mode] = accumulator.compute()
    assert results["exact"]["pixel_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12)
    assert abs(results["binned"]["pixel_auroc"] - results["exact"]["pixel_auroc"]) < 1e-4
    assert abs(results["binned"]["aupro"] - results["exact"]["aupro"]) < 2e-3
    assert abs(results["binned"]["pixel_f1_max"] - results["exact"]["pixel_f1_max"]) < 2e-3
