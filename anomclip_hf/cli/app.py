"""`anomclip app`: the web page (Gradio) to fit a category and inspect its results."""

from __future__ import annotations

from ._common import add_command


def add_parser(commands) -> None:
    app = add_command(
        commands, "app", "a web page (Gradio) to fit a category and inspect its results",
        "anomclip app", "anomclip app --base openai/clip-vit-base-patch16 --category runs/fit/adapter",
        "anomclip app --base anomclip-demo-random --port 7861",
        description="Serve a web page to fit a category on uploaded good images, score test images (gallery of\n"
                    "overlays, threshold slider, scores.csv) and download or push the adapter. Needs the app\n"
                    "extra: pip install -e \".[app]\". Listens on 127.0.0.1 only unless --host says otherwise.")
    app.add_argument("--base", default=None, help="CLIP or AnomCLIP base, id or folder (default: as `anomclip demo`; "
                     "anomclip-demo-random: the embedded random base, a pipeline check)")
    app.add_argument("--category", default=None, help="adapter folder or Hub repo id to load at start")
    app.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s, this machine "
                     "only; 0.0.0.0 opens it to the network)")
    app.add_argument("--port", type=int, default=7860, help="(default: %(default)s)")
    app.add_argument("--max-files", type=int, default=None, help="files per upload (default: 200)")
    app.add_argument("--max-file-mb", type=float, default=None, help="size limit per uploaded file (default: 20)")
    app.set_defaults(func=run)


def run(args) -> int:
    from ..app.launch import launch_app

    limits = {name: getattr(args, name) for name in ("max_files", "max_file_mb") if getattr(args, name) is not None}
    launch_app(base=args.base, category=args.category, host=args.host, port=args.port, **limits)
    return 0
