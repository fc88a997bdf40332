"""`anomclip push`: a category adapter folder to its own Hub repo."""

from __future__ import annotations

from ._common import add_command


def add_parser(commands) -> None:
    push = add_command(
        commands, "push", "push a category adapter folder to its own Hub repo (with its model card)",
        "anomclip push --category runs/fit/adapter --repo-id user/anomclip-mvtec-bottle-1shot",
        "anomclip push --category runs/fit/adapter --repo-id my-org/anomclip-screws --private --revision experiment",
        description="Check a category adapter folder (as fit/evaluate/train.py write it) and push exactly its\n"
                    "files, with a model card rendered for the repo, as one commit. Log in first\n"
                    "(`hf auth login`) or set HF_TOKEN.")
    push.add_argument("--category", required=True, help="category adapter folder")
    push.add_argument("--repo-id", required=True, help="Hub repo id, e.g. user/anomclip-mvtec-bottle-1shot")
    push.add_argument("--private", action="store_true", help="create the repo private (an existing repo keeps its "
                      "visibility)")
    push.add_argument("--revision", default=None, help="branch to push to, created if needed (default: main)")
    push.add_argument("--commit-message", default=None)
    push.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN or the `hf auth login` token)")
    push.set_defaults(func=run)


def run(args) -> int:
    from ..model.publishing import upload_category_folder

    commit = upload_category_folder(args.category, args.repo_id, private=args.private or None, token=args.token,
                                    revision=args.revision, commit_message=args.commit_message)
    print(f"category adapter {args.category} pushed to {args.repo_id} (commit {commit.oid}); load it with "
          f"model.load_category({args.repo_id!r}) or pin revision={commit.oid!r}")
    return 0
