"""Converting open_clip checkpoints into transformers CLIP folders (`anomclip convert-open-clip`):
`open_clip` (the conversion), `sources` (model configs and checkpoint files), `checks` (what CLIP cannot
reproduce, refused by name)."""
