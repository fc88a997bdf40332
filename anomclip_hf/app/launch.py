"""Build and serve the app: `anomclip app` and the Space entry point app.py."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import threading
from typing import Optional

from .base import choose_base
from .uploads import MAX_FILE_MB, MAX_FILES
from .workspace import Workspace

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 7860


def is_loopback(host: str) -> bool:
    return host in ("127.0.0.1", "localhost", "::1")


def require_gradio():
    try:
        import gradio
    except ImportError:
        raise ImportError('the app needs gradio: pip install -e ".[app]" (or pip install gradio)') from None
    return gradio


def offline_theme():
    """Gradio's default theme with system fonts: the default one fetches Google fonts (no network needed)."""
    gr = require_gradio()
    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                             font_mono=["ui-monospace", "Consolas", "monospace"])


def build(base: Optional[str] = None, category: Optional[str] = None, *, work_dir: Optional[str] = None,
          max_files: int = MAX_FILES, max_file_mb: float = MAX_FILE_MB, allow_server_folders: bool = True):
    """(gr.Blocks, Workspace): the base chosen (see base.choose_base), `category` loaded when given."""
    require_gradio()  # before the base loads: a missing extra fails at once
    from .layout import build_app

    choice = choose_base(base)
    if choice.model is None:
        print(choice.message, file=sys.stderr)
    workspace = Workspace(choice, work_dir, max_files=max_files, max_file_mb=max_file_mb,
                          allow_server_folders=allow_server_folders)
    if category:
        workspace.load_operator_adapter(category)
    return build_app(workspace), workspace


def serve(app, workspace: Workspace, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, block: bool = True):
    """Launch on host:port (loopback unless told otherwise). block=False returns at once (tests); then call
    app.close()."""
    app.queue()
    app.launch(server_name=host, server_port=port, max_file_size=f"{workspace.max_file_mb:g}mb",
               allowed_paths=[workspace.work_dir], prevent_thread_lock=not block, show_error=True, ssr_mode=False,
               theme=offline_theme(), quiet=not block)
    return app


def launch_app(base: Optional[str] = None, category: Optional[str] = None, host: str = DEFAULT_HOST,
               port: int = DEFAULT_PORT, **options) -> None:
    """Serve until interrupted, then remove the app's work folder (uploads, fits, scores)."""
    # A Space (SPACE_ID set) or an address beyond loopback serves visitors: see Workspace.visitors.
    visitors = not is_loopback(host) or bool(os.environ.get("SPACE_ID"))
    app, workspace = build(base, category, allow_server_folders=not visitors, **options)
    if threading.current_thread() is threading.main_thread():
        # `kill` (SIGTERM) ends the server like Ctrl-C does, so the work folder below is removed.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        serve(app, workspace, host, port, block=True)
    finally:
        if not options.get("work_dir"):
            shutil.rmtree(workspace.work_dir, ignore_errors=True)
