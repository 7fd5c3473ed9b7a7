"""A local stand-in of the Hugging Face Hub's HTTP API, for tests: real HTTP on 127.0.0.1.

It serves the endpoints `huggingface_hub` calls (read from its source, not guessed): model
info (`/api/models/ID[/revision/R]`, sizes with `?blobs=true`), the tree listing
(`/api/models/ID/tree/R`), file resolve (`HEAD`/`GET /ID/resolve/R/PATH` with ETag,
X-Repo-Commit, Content-Length and Range), and what `upload_folder` needs (`/api/repos/create`,
`/api/validate-yaml`, `/preupload`, `/commit` as NDJSON with base64 files). Errors carry the
headers `hf_raise_for_status` maps to its classes: X-Error-Code RepoNotFound / RevisionNotFound
/ EntryNotFound / GatedRepo, and 401 "Invalid credentials in Authorization header" for a bad
token. Every request is logged (method, path, Range) so a test can say what went over the wire;
`throttle` slows large files down so a test can cut a download in the middle.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".gguf", ".onnx", ".pt", ".pth", ".model")
BAD_CREDENTIALS = "Invalid credentials in Authorization header"


def _flag(query: dict[str, str], name: str) -> bool:
    return query.get(name, "").lower() == "true"


def git_blob_oid(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def is_lfs(path: str, content: bytes) -> bool:
    return path.endswith(LFS_SUFFIXES) or len(content) > 10 * 1024 * 1024


def etag_of(path: str, content: bytes) -> str:
    """What the hub sends: the sha256 for LFS files, the git blob id for the rest."""
    return hashlib.sha256(content).hexdigest() if is_lfs(path, content) else git_blob_oid(content)


@dataclass
class HubRepo:
    repo_id: str
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # sha -> files
    branches: dict[str, str] = field(default_factory=dict)  # name -> sha
    gated: bool = False
    private: bool = False

    def commit(self, files: dict[str, bytes], branch: str = "main") -> str:
        listing = sorted((p, etag_of(p, c)) for p, c in files.items())
        digest = hashlib.sha1(json.dumps(listing).encode())
        sha = hashlib.sha1(digest.digest() + str(len(self.commits)).encode()).hexdigest()
        self.commits[sha] = dict(files)
        self.branches[branch] = sha
        return sha

    def resolve(self, revision: str) -> str | None:
        if revision in self.branches:
            return self.branches[revision]
        return revision if revision in self.commits else None


@dataclass
class Logged:
    method: str
    path: str
    range: str | None
    authorized: bool


class HubServer:
    """`with HubServer() as hub:` serves on `hub.endpoint` until the block ends."""

    def __init__(self) -> None:
        self.repos: dict[str, HubRepo] = {}
        self.tokens: set[str] = set()  # valid tokens
        self.gated_access: set[str] = set()  # tokens granted access to gated repos
        self.log: list[Logged] = []
        self.throttle: float | None = None  # bytes per second for LFS files, None: full speed
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> HubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def add_repo(
        self, repo_id: str, files: dict[str, bytes], *, gated: bool = False, private: bool = False
    ) -> HubRepo:
        repo = HubRepo(repo_id, gated=gated, private=private)
        repo.commit(files)
        self.repos[repo_id] = repo
        return repo

    def add_folder(self, repo_id: str, folder: Path, **kwargs: Any) -> HubRepo:
        files = {
            p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*"))
            if p.is_file()
        }
        return self.add_repo(repo_id, files, **kwargs)

    def requests(self, method: str | None = None, contains: str = "") -> list[Logged]:
        with self._lock:
            return [
                r for r in self.log if (method is None or r.method == method) and contains in r.path
            ]


def _handler_for(hub: HubServer) -> type[BaseHTTPRequestHandler]:
    class Handler(_HubHandler):
        pass

    Handler.hub = hub
    return Handler


class _HubHandler(BaseHTTPRequestHandler):
    hub: HubServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    # -- plumbing ---------------------------------------------------------------------------

    def _token(self) -> tuple[bool, str | None]:
        """(header present, the token if valid)."""
        header = self.headers.get("Authorization")
        if not header:
            return False, None
        token = header.removeprefix("Bearer ").strip()
        return True, token if token in self.hub.tokens else None

    def _send(
        self,
        status: int,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, data: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(data).encode(), headers)

    def _error(self, status: int, code: str | None, message: str) -> None:
        headers = {"X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        self._json(status, {"error": message}, headers)

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _route(self) -> None:
        url = urlsplit(self.path)
        parts = url.path.strip("/").split("/")
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        with self.hub._lock:
            self.hub.log.append(
                Logged(
                    self.command,
                    unquote(url.path),
                    self.headers.get("Range"),
                    self.headers.get("Authorization") is not None,
                )
            )
        present, token = self._token()
        if present and token is None:
            self._error(401, None, BAD_CREDENTIALS)
            return
        if parts[:1] == ["api"]:
            self._api(parts[1:], query, token)
        elif len(parts) >= 5 and parts[2] == "resolve":
            filename = unquote("/".join(parts[4:]))
            self._resolve("/".join(parts[:2]), unquote(parts[3]), filename, token)
        else:
            self._error(404, None, f"no route for {self.command} {url.path}")

    def do_GET(self) -> None:
        self._route()

    def do_HEAD(self) -> None:
        self._route()

    def do_POST(self) -> None:
        self._route()

    # -- repos ------------------------------------------------------------------------------

    def _repo(self, repo_id: str, token: str | None) -> HubRepo | None:
        repo = self.hub.repos.get(repo_id)
        if repo is None or (repo.private and token is None):
            # The hub answers a private repo without a token like a missing one.
            self._error(404, "RepoNotFound", "Repository not found")
            return None
        return repo

    def _revision(self, repo: HubRepo, revision: str) -> str | None:
        sha = repo.resolve(revision)
        if sha is None:
            self._error(404, "RevisionNotFound", "Invalid rev id: " + revision)
        return sha

    def _api(self, parts: list[str], query: dict[str, str], token: str | None) -> None:
        if parts == ["repos", "create"] and self.command == "POST":
            self._create_repo(json.loads(self._body() or b"{}"), token)
            return
        if parts == ["validate-yaml"] and self.command == "POST":
            self._body()
            self._json(200, {"errors": [], "warnings": []})
            return
        if parts == ["agent-harnesses"]:  # the client's user-agent registry: an empty one
            self._json(200, {"standardEnvVars": [], "harnesses": {}})
            return
        if parts == ["whoami-v2"]:
            if token is None:
                self._error(401, None, BAD_CREDENTIALS)
            else:
                self._json(200, {"name": "tester", "type": "user", "auth": {}})
            return
        if len(parts) < 3 or parts[0] != "models":
            self._error(404, None, "no such API route")
            return
        repo = self._repo(f"{parts[1]}/{parts[2]}", token)
        if repo is None:
            return
        rest = parts[3:]
        if not rest or rest[0] == "revision":
            sha = self._revision(repo, unquote(rest[1]) if rest else "main")
            if sha is not None:
                self._json(200, self._model_info(repo, sha, blobs=_flag(query, "blobs")))
        elif rest[0] == "tree" and len(rest) >= 2:
            sha = self._revision(repo, unquote(rest[1]))
            if sha is not None:
                prefix = unquote("/".join(rest[2:]))
                self._json(200, self._tree(repo.commits[sha], prefix, query))
        elif rest[0] == "preupload" and self.command == "POST":
            self._preupload(repo, unquote(rest[1]), json.loads(self._body()), token)
        elif rest[0] == "commit" and self.command == "POST":
            self._commit(repo, unquote(rest[1]), self._body(), token)
        else:
            self._error(404, None, "no such API route")

    def _model_info(self, repo: HubRepo, sha: str, *, blobs: bool) -> dict[str, Any]:
        siblings = []
        for path, content in sorted(repo.commits[sha].items()):
            sibling: dict[str, Any] = {"rfilename": path}
            if blobs:
                sibling["size"] = len(content)
                sibling["blobId"] = git_blob_oid(content)
                if is_lfs(path, content):
                    sibling["lfs"] = {
                        "sha256": hashlib.sha256(content).hexdigest(),
                        "size": len(content),
                        "pointerSize": 134,
                    }
            siblings.append(sibling)
        return {
            "_id": sha[:24],
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "sha": sha,
            "private": repo.private,
            "gated": "manual" if repo.gated else False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": ["transformers", "safetensors"],
            "library_name": "transformers",
            "lastModified": "2026-01-01T00:00:00.000Z",
            "siblings": siblings,
        }

    def _tree(self, files: dict[str, bytes], prefix: str, query: dict[str, str]) -> list[Any]:
        recursive = _flag(query, "recursive")
        base = prefix.rstrip("/") + "/" if prefix else ""
        entries: dict[str, Any] = {}
        entry: dict[str, Any]
        for path, content in sorted(files.items()):
            if not path.startswith(base):
                continue
            rest = path[len(base) :]
            if "/" in rest and not recursive:
                folder = base + rest.split("/")[0]
                entries[folder] = {"type": "directory", "path": folder, "oid": "0" * 40}
                continue
            if recursive:
                parts = rest.split("/")[:-1]
                for i in range(len(parts)):
                    folder = base + "/".join(parts[: i + 1])
                    entry = {"type": "directory", "path": folder, "oid": "0" * 40}
                    entries.setdefault(folder, entry)
            entry = {
                "type": "file",
                "path": path,
                "size": len(content),
                "oid": git_blob_oid(content),
            }
            if is_lfs(path, content):
                entry["lfs"] = {
                    "oid": hashlib.sha256(content).hexdigest(),
                    "size": len(content),
                    "pointerSize": 134,
                }
            entries[path] = entry
        return list(entries.values())

    def _resolve(self, repo_id: str, revision: str, path: str, token: str | None) -> None:
        repo = self._repo(repo_id, token)
        if repo is None:
            return
        if repo.gated and token not in self.hub.gated_access:
            status = 401 if token is None else 403
            self._error(status, "GatedRepo", f"Access to model {repo_id} is restricted.")
            return
        sha = self._revision(repo, revision)
        if sha is None:
            return
        content = repo.commits[sha].get(path)
        if content is None:
            self._send(
                404,
                b'{"error": "Entry not found"}',
                {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": sha},
            )
            return
        size = len(content)
        start = 0
        status = 200
        headers = {
            "ETag": f'"{etag_of(path, content)}"',
            "X-Repo-Commit": sha,
            "Accept-Ranges": "bytes",
        }
        wanted = self.headers.get("Range")
        if wanted and wanted.startswith("bytes="):
            first, _, last = wanted[len("bytes=") :].partition("-")
            start = int(first or 0)
            end = int(last) if last else size - 1
            if start >= size:
                self._send(416, b"", {"Content-Range": f"bytes */{size}"})
                return
            content = content[start : end + 1]
            status = 206
            headers["Content-Range"] = f"bytes {start}-{start + len(content) - 1}/{size}"
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(content)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command == "HEAD":
            return
        throttle = self.hub.throttle if is_lfs(path, content) else None
        chunk = 64 * 1024
        try:
            for offset in range(0, len(content), chunk):
                self.wfile.write(content[offset : offset + chunk])
                if throttle:
                    self.wfile.flush()
                    time.sleep(chunk / throttle)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    # -- upload -----------------------------------------------------------------------------

    def _create_repo(self, payload: dict[str, Any], token: str | None) -> None:
        if token is None:
            self._error(401, None, BAD_CREDENTIALS)
            return
        name = payload.get("name", "")
        repo_id = f"{payload['organization']}/{name}" if payload.get("organization") else name
        if "/" not in repo_id:
            repo_id = f"tester/{repo_id}"
        url = {"url": f"{self.hub.endpoint}/{repo_id}", "name": repo_id, "id": repo_id}
        if repo_id in self.hub.repos:
            self._error(409, None, "You already created this model repo")
            return
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        repo = HubRepo(repo_id, private=private)
        repo.commit({".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"})
        self.hub.repos[repo_id] = repo
        self._json(200, url)

    def _preupload(
        self, repo: HubRepo, revision: str, payload: dict[str, Any], token: str | None
    ) -> None:
        if token is None:
            self._error(401, None, BAD_CREDENTIALS)
            return
        sha = self._revision(repo, revision)
        if sha is None:
            return
        current = repo.commits[sha]
        files = []
        for item in payload.get("files", []):
            existing = current.get(item["path"])
            files.append(
                {
                    "path": item["path"],
                    # Everything goes inline in the commit: the stand-in has no LFS storage.
                    "uploadMode": "regular",
                    "shouldIgnore": False,
                    "oid": git_blob_oid(existing) if existing is not None else None,
                }
            )
        self._json(200, {"files": files, "commitOid": sha})

    def _commit(self, repo: HubRepo, revision: str, body: bytes, token: str | None) -> None:
        if token is None:
            self._error(401, None, BAD_CREDENTIALS)
            return
        sha = self._revision(repo, revision)
        if sha is None:
            return
        files = dict(repo.commits[sha])
        for line in body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            value = item["value"]
            if item["key"] == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif item["key"] == "deletedFile":
                files.pop(value["path"], None)
            elif item["key"] == "lfsFile":
                self._error(400, None, "the stand-in takes files inline only")
                return
        new = repo.commit(files, branch=revision)
        self._json(
            200,
            {
                "commitUrl": f"{self.hub.endpoint}/{repo.repo_id}/commit/{new}",
                "commitOid": new,
                "success": True,
            },
        )
