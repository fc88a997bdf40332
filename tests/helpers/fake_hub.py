"""A loopback fake of the Hugging Face Hub, for the real huggingface_hub client (HF_ENDPOINT=http://127.0.0.1:PORT).

It serves the endpoints a push and a snapshot download use, with model repos held in memory as git-like
commits (real 40-hex commit shas, git blob ids as ETags), so revisions can be pinned:

    POST /api/repos/create                        create a repo (with the .gitattributes commit the Hub makes)
    POST /api/validate-yaml                       README metadata check done before a commit
    POST /api/models/{repo}/preupload/{rev}       upload mode of each file: always "regular" (inline base64)
    POST /api/models/{repo}/commit/{rev}          the NDJSON commit (file / deletedFile lines)
    POST /api/models/{repo}/branch/{branch}       create a branch
    GET  /api/models/{repo}[/revision/{rev}]      repo info at a revision (sha, siblings)
    GET  /api/models/{repo}/tree/{rev}            the file listing
    HEAD/GET /{repo}/resolve/{rev}/{path}         file metadata (X-Repo-Commit, ETag) and content

Every request is recorded in `requests` as (method, path); a `token` makes writes and private repos need it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional
from urllib.parse import unquote, urlsplit

import yaml

DEFAULT_USER = "tester"
GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"


def blob_oid(content: bytes) -> str:
    """git's blob id, which the Hub sends as the ETag of regular files."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class Commit:
    sha: str
    parent: Optional[str]
    message: str
    files: dict  # path -> bytes


@dataclass
class Repo:
    repo_id: str
    private: bool
    commits: dict = field(default_factory=dict)  # sha -> Commit
    branches: dict = field(default_factory=dict)  # name -> sha

    def add_commit(self, branch: str, message: str, files: dict) -> Commit:
        parent = self.branches.get(branch)
        digest = hashlib.sha1(f"{self.repo_id}\n{parent}\n{message}\n{len(self.commits)}".encode())
        for path in sorted(files):
            digest.update(f"{path}\0{blob_oid(files[path])}\n".encode())
        commit = Commit(digest.hexdigest(), parent, message, dict(files))
        self.commits[commit.sha] = commit
        self.branches[branch] = commit.sha
        return commit

    def resolve(self, revision: str) -> Optional[Commit]:
        sha = self.branches.get(revision, revision)
        return self.commits.get(sha)


class HubError(Exception):
    def __init__(self, status: int, message: str, code: Optional[str] = None, headers: Optional[dict] = None):
        super().__init__(message)
        self.status, self.code, self.headers = status, code, headers or {}


class FakeHub:
    """Start with `with FakeHub() as hub:`; `hub.url` is the endpoint."""

    def __init__(self, token: Optional[str] = None):
        self.token = token
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                hub._serve(self, "GET")

            def do_HEAD(self):
                hub._serve(self, "HEAD")

            def do_POST(self):
                hub._serve(self, "POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeHub":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)

    # ------------------------------------------------------------------------------------------------ helpers
    def files(self, repo_id: str, revision: str = "main") -> dict:
        """{path: bytes} of a repo at a revision (for assertions)."""
        return dict(self.repos[repo_id].resolve(revision).files)

    def put_files(self, repo_id: str, files: dict, message: str = "seeded by the test", private: bool = False) -> str:
        """Create or update a repo directly (e.g. with content no honest client would push); returns the sha."""
        with self.lock:
            repo = self.repos.get(repo_id) or self._create(repo_id, private)
            commit = repo.add_commit("main", message, {**repo.resolve("main").files, **files})
        return commit.sha

    def _create(self, repo_id: str, private: bool) -> Repo:
        repo = Repo(repo_id, private)
        repo.add_commit("main", "initial commit", {".gitattributes": GITATTRIBUTES})
        self.repos[repo_id] = repo
        return repo

    def _authorized(self, handler) -> bool:
        return self.token is None or handler.headers.get("Authorization") == f"Bearer {self.token}"

    def _repo(self, repo_id: str, handler) -> Repo:
        repo = self.repos.get(repo_id)
        if repo is None or (repo.private and not self._authorized(handler)):
            raise HubError(404, f"Repository {repo_id} not found", "RepoNotFound")
        return repo

    def _commit_at(self, repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    def _require_write(self, handler) -> None:
        if not self._authorized(handler):
            raise HubError(401, "Invalid credentials in Authorization header")

    # ------------------------------------------------------------------------------------------------ routing
    def _serve(self, handler, method: str) -> None:
        path = urlsplit(handler.path).path
        with self.lock:
            self.requests.append((method, unquote(path)))
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        try:
            with self.lock:
                status, payload, headers = self._route(handler, method, path, body)
        except HubError as error:
            status, payload = error.status, json.dumps({"error": str(error)}).encode()
            headers = {"Content-Type": "application/json", **error.headers}
            if error.code:
                headers["X-Error-Code"] = error.code
            headers["X-Error-Message"] = str(error)
        handler.send_response(status)
        for key, value in headers.items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(payload)) if "Content-Length" not in headers else headers[
            "Content-Length"])
        handler.end_headers()
        if method != "HEAD":
            handler.wfile.write(payload)

    def _route(self, handler, method: str, path: str, body: bytes):
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if method == "POST" and parts == ["api", "repos", "create"]:
            return self._create_repo(handler, json.loads(body))
        if method == "POST" and parts == ["api", "validate-yaml"]:
            return self._validate_yaml(json.loads(body))
        if len(parts) >= 4 and parts[:2] == ["api", "models"]:
            repo_id, rest = f"{parts[2]}/{parts[3]}", parts[4:]
            if method == "GET" and not rest:
                return self._info(self._repo(repo_id, handler), "main")
            action, argument = (rest[0], "/".join(rest[1:])) if rest else (None, "")
            if method == "GET" and action == "revision":
                return self._info(self._repo(repo_id, handler), argument)
            if method == "GET" and action == "tree":
                return self._tree(self._repo(repo_id, handler), rest[1], "/".join(rest[2:]))
            if method == "POST" and action in ("preupload", "commit", "branch"):
                self._require_write(handler)
                repo = self._repo(repo_id, handler)
                return getattr(self, f"_{action}")(repo, argument, body)
        if len(parts) >= 5 and parts[2] == "resolve" and method in ("GET", "HEAD"):
            repo = self._repo(f"{parts[0]}/{parts[1]}", handler)
            return self._resolve(repo, parts[3], "/".join(parts[4:]))
        raise HubError(404, f"the fake Hub does not serve {method} {path}")

    @staticmethod
    def _json(payload, status: int = 200, headers: Optional[dict] = None):
        return status, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})}

    # ------------------------------------------------------------------------------------------------ endpoints
    def _create_repo(self, handler, request: dict):
        self._require_write(handler)
        repo_id = f"{request.get('organization') or DEFAULT_USER}/{request['name']}"
        if request.get("type") not in (None, "model"):
            raise HubError(400, "the fake Hub holds model repos only")
        if repo_id in self.repos:  # the Hub answers 409 with the url, which create_repo(exist_ok=True) returns
            return self._json({"error": "You already created this model repo", "url": f"{self.url}/{repo_id}"}, 409)
        self._create(repo_id, request.get("visibility") == "private" or bool(request.get("private")))
        return self._json({"url": f"{self.url}/{repo_id}", "name": repo_id})

    def _validate_yaml(self, request: dict):
        content = request["content"]
        if content.startswith("---"):
            try:
                yaml.safe_load(content.split("---", 2)[1])
            except yaml.YAMLError as error:
                return self._json({"errors": [{"message": str(error)}], "warnings": []}, status=400)
        return self._json({"errors": [], "warnings": []})

    def _info(self, repo: Repo, revision: str):
        commit = self._commit_at(repo, revision)
        return self._json({"id": repo.repo_id, "modelId": repo.repo_id, "sha": commit.sha, "private": repo.private,
                           "lastModified": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                           "siblings": [{"rfilename": path} for path in sorted(commit.files)]})

    def _tree(self, repo: Repo, revision: str, prefix: str):
        commit = self._commit_at(repo, revision)
        entries = [{"type": "file", "oid": blob_oid(content), "size": len(content), "path": path}
                   for path, content in sorted(commit.files.items()) if path.startswith(prefix)]
        return self._json(entries)

    def _preupload(self, repo: Repo, revision: str, body: bytes):
        files = repo.resolve(revision).files if repo.resolve(revision) else {}
        request = json.loads(body)
        return self._json({"files": [
            {"path": item["path"], "uploadMode": "regular", "shouldIgnore": False,
             "oid": blob_oid(files[item["path"]]) if item["path"] in files else None}
            for item in request["files"]]})

    def _commit(self, repo: Repo, revision: str, body: bytes):
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        header = next(line["value"] for line in lines if line["key"] == "header")
        if revision not in repo.branches:
            raise HubError(404, f"Invalid rev id: {revision} is not a branch", "RevisionNotFound")
        parent = self._commit_at(repo, revision)
        if header.get("parentCommit") not in (None, parent.sha):
            raise HubError(412, "parent commit is not the head of the branch")
        files = dict(parent.files)
        for line in lines:
            key, value = line["key"], line["value"]
            if key == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                if value["path"] not in files:
                    raise HubError(404, "A file with this name doesn't exist", "EntryNotFound")
                del files[value["path"]]
            elif key != "header":
                raise HubError(400, f"the fake Hub does not accept {key!r} commit lines (LFS/copies)")
        commit = repo.add_commit(revision, header["summary"], files)
        return self._json({"commitUrl": f"{self.url}/{repo.repo_id}/commit/{commit.sha}", "commitOid": commit.sha,
                           "success": True, "pullRequestUrl": None})

    def _branch(self, repo: Repo, branch: str, body: bytes):
        if branch in repo.branches:
            raise HubError(409, f"Branch {branch} already exists")
        start = (json.loads(body) if body else {}).get("startingPoint") or "main"
        repo.branches[branch] = self._commit_at(repo, start).sha
        return self._json({})

    def _resolve(self, repo: Repo, revision: str, path: str):
        commit = self._commit_at(repo, revision)
        if path not in commit.files:
            raise HubError(404, f"Entry {path} not found", "EntryNotFound", {"X-Repo-Commit": commit.sha})
        content = commit.files[path]
        return 200, content, {"Content-Type": "application/octet-stream", "X-Repo-Commit": commit.sha,
                              "ETag": f'"{blob_oid(content)}"', "Content-Length": str(len(content))}
