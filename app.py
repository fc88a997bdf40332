"""Hugging Face Space entry point: the `anomclip app` page.

Environment: ANOMCLIP_BASE (a CLIP id or folder; default as `anomclip demo`), ANOMCLIP_CATEGORY (an
adapter folder or Hub repo id to load at start). Spaces set GRADIO_SERVER_NAME=0.0.0.0; anywhere else the
app listens on 127.0.0.1 only.
"""

import os

from anomclip_hf.app.launch import DEFAULT_HOST, DEFAULT_PORT, launch_app

if __name__ == "__main__":
    launch_app(base=os.environ.get("ANOMCLIP_BASE") or None, category=os.environ.get("ANOMCLIP_CATEGORY") or None,
               host=os.environ.get("GRADIO_SERVER_NAME", DEFAULT_HOST),
               port=int(os.environ.get("GRADIO_SERVER_PORT", DEFAULT_PORT)))
