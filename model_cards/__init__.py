"""Model-card templates of category adapters (installed as anomclip_hf.model_cards)."""
