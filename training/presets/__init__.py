"""Training presets (YAML), installed as anomclip_hf.presets so `--preset paper` works from a wheel too."""
