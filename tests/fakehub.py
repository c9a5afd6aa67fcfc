"""A hostile-world simulator of the Hugging Face Hub, for tests (after python-tuf's RepositorySimulator).

``FakeHub`` runs two tiny threaded HTTP servers on 127.0.0.1 (random ports): the *hub* (API +
``/resolve``) and a *CDN* on a different origin that serves LFS bodies, exactly like the real hub
redirects LFS files to a CDN host. Repositories live in memory (model repos and dataset repos,
e.g. the community mirror); the real ``huggingface_hub`` client code runs against it.

Endpoints served (what huggingface_hub 2.4.0 calls for model_info/dataset_info/get_paths_info and
hf_hub_download):

* ``GET  /api/{models,datasets}/{repo}[/revision/{rev}]``   ``blobs=true`` adds size/blobId/lfs;
  ``expand=sha`` returns only ``id`` + ``sha``
* ``POST /api/{models,datasets}/{repo}/paths-info/{rev}``  form ``paths=...``
* ``GET  /api/{models,datasets}/{repo}/tree/{rev}[/{path}]``  ``recursive=true`` (snapshot_download)
* ``HEAD|GET /[datasets/]{repo}/resolve/{rev}/{path}``      small files: 200 + ``ETag`` (git blob
  SHA-1), ``X-Repo-Commit``, ``Content-Length``; LFS files: 302 to the CDN + ``X-Linked-Etag``
  (sha256), ``X-Linked-Size``, ``X-Repo-Commit``; errors carry ``X-Error-Code``
  (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``) like the hub
* CDN ``HEAD|GET /lfs/{sha256}/{path}``; ``Range: bytes=N-`` answered with 206 (resume)

Switches (each a rule with an optional ``times`` budget; ``None`` = forever):

* ``move_branch(...)`` now, or ``move_branch_after(..., after=...)`` right after a matching
  request was answered ("move a branch between two requests");
* ``tamper(path)``   serve the body with one byte flipped (headers unchanged);
* ``truncate(path, at=N)``  announce the full length, send ``N`` bytes, drop the connection;
* ``fail(status, contains=...)``  answer 404/500/... for matching requests;
* ``slow(seconds, contains=...)``  answer late.

``hub.requests`` logs ``(server, method, path)`` for assertions ("a second load re-downloads");
``hub.authorized`` the requests that carried a token.

``use_fake_hub(monkeypatch, hub, tmp_path)`` points huggingface_hub at it. huggingface_hub reads
``HF_ENDPOINT``/``HF_HOME``/``HF_HUB_CACHE``/``HF_HUB_OFFLINE`` into ``huggingface_hub.constants``
at import time, so setting the environment alone is not enough in an already-running process: we
set the environment variables (for subprocesses) AND monkeypatch the constants (``ENDPOINT``,
``HUGGINGFACE_CO_URL_TEMPLATE``, ``HF_HOME``, ``HF_HUB_CACHE``, ``HF_HUB_OFFLINE``, token paths).
Retry back-off sleeps inside huggingface_hub are made instant so 500/truncation tests stay fast.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".msgpack", ".h5", ".onnx")


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(data: bytes) -> bytes:
    sha = hashlib.sha256(data).hexdigest()
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {len(data)}\n".encode()


@dataclass(frozen=True)
class FakeFile:
    path: str
    data: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def oid(self) -> str:
        return git_blob_sha1(lfs_pointer(self.data) if self.lfs else self.data)

    def sibling(self, blobs: bool) -> dict[str, Any]:
        d: dict[str, Any] = {"rfilename": self.path}
        if blobs:
            d["size"] = len(self.data)
            d["blobId"] = self.oid
            if self.lfs:
                d["lfs"] = {
                    "size": len(self.data),
                    "sha256": self.sha256,
                    "pointerSize": len(lfs_pointer(self.data)),
                }
        return d

    def path_info(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": "file", "oid": self.oid, "size": len(self.data), "path": self.path}
        if self.lfs:
            d["lfs"] = {
                "oid": self.sha256,
                "size": len(self.data),
                "pointerSize": len(lfs_pointer(self.data)),
            }
        return d


@dataclass
class FakeRepo:
    repo_type: str
    repo_id: str
    commits: dict[str, dict[str, FakeFile]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)

    def resolve(self, rev: str) -> str | None:
        if rev in self.refs:
            return self.refs[rev]
        if rev in self.commits:
            return rev
        return None


@dataclass
class _Rule:
    kind: str  # "fail" | "tamper" | "truncate" | "slow" | "after" | "headers"
    contains: str | None = None
    method: str | None = None
    server: str | None = None
    times: int | None = None
    status: int = 500
    seconds: float = 0.0
    at: int | None = None
    action: Callable[[], None] | None = None
    headers: Mapping[str, str] | None = None
    short: bool = False

    def matches(self, server: str, method: str, target: str) -> bool:
        if self.times is not None and self.times <= 0:
            return False
        if self.server is not None and self.server != server:
            return False
        if self.method is not None and self.method != method:
            return False
        return self.contains is None or self.contains in target

    def use(self) -> None:
        if self.times is not None:
            self.times -= 1


class FakeHub:
    """In-memory hub + CDN. Use as a context manager or call start()/stop()."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.repos: dict[tuple[str, str], FakeRepo] = {}
        self.rules: list[_Rule] = []
        self.requests: list[tuple[str, str, str]] = []
        self.authorized: list[tuple[str, str, str, str]] = []  # requests that carried an Authorization header
        self._servers: dict[str, ThreadingHTTPServer] = {}
        self._threads: list[threading.Thread] = []
        self.url = ""
        self.cdn_url = ""

    # ----- lifecycle
    def start(self) -> FakeHub:
        for role in ("hub", "cdn"):
            srv = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self, role))
            srv.daemon_threads = True
            self._servers[role] = srv
            t = threading.Thread(
                target=srv.serve_forever, kwargs={"poll_interval": 0.05}, name=f"fakehub-{role}", daemon=True
            )
            t.start()
            self._threads.append(t)
        self.url = f"http://127.0.0.1:{self._servers['hub'].server_address[1]}"
        self.cdn_url = f"http://127.0.0.1:{self._servers['cdn'].server_address[1]}"
        return self

    def stop(self) -> None:
        for srv in self._servers.values():
            srv.shutdown()
            srv.server_close()
        for t in self._threads:
            t.join(timeout=5)
        self._servers.clear()
        self._threads.clear()

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----- repository contents
    def add_commit(
        self,
        repo_id: str,
        files: Mapping[str, bytes],
        *,
        repo_type: str = "model",
        branch: str | None = "main",
        base: str | None = None,
        lfs: Callable[[str, bytes], bool] | None = None,
    ) -> str:
        """Create a commit holding ``files`` (plus the files of ``base`` not overridden); move ``branch``."""
        is_lfs = lfs or (lambda path, data: path.endswith(LFS_SUFFIXES))
        with self._lock:
            repo = self.repos.setdefault((repo_type, repo_id), FakeRepo(repo_type, repo_id))
            tree: dict[str, FakeFile] = dict(repo.commits[base]) if base else {}
            for path, data in files.items():
                tree[path] = FakeFile(path, bytes(data), is_lfs(path, bytes(data)))
            h = hashlib.sha1(f"{repo_type}/{repo_id}:{len(repo.commits)}:{base}".encode())
            for path in sorted(tree):
                h.update(f"{path}\0{tree[path].oid}\n".encode())
            commit = h.hexdigest()
            repo.commits[commit] = tree
            if branch is not None:
                repo.refs[branch] = commit
            return commit

    def move_branch(self, repo_id: str, branch: str, commit: str, *, repo_type: str = "model") -> None:
        with self._lock:
            repo = self.repos[(repo_type, repo_id)]
            assert commit in repo.commits
            repo.refs[branch] = commit

    def file(self, repo_id: str, commit: str, path: str, *, repo_type: str = "model") -> FakeFile:
        return self.repos[(repo_type, repo_id)].commits[commit][path]

    # ----- switches
    def fail(
        self,
        status: int = 500,
        *,
        contains: str | None = None,
        method: str | None = None,
        server: str | None = None,
        times: int | None = None,
    ) -> _Rule:
        return self._add(
            _Rule("fail", contains=contains, method=method, server=server, times=times, status=status)
        )

    def tamper(self, path: str, *, times: int | None = None) -> _Rule:
        return self._add(_Rule("tamper", contains=quote(path), method="GET", times=times))

    def truncate(
        self, path: str, *, at: int | None = None, times: int | None = None, short: bool = False
    ) -> _Rule:
        """Cut the body of ``path`` at byte ``at`` (default: half). ``short=False``: announce the full length and
        drop the connection mid-body; ``short=True``: a well-formed but short answer (e.g. a broken proxy)."""
        return self._add(
            _Rule("truncate", contains=quote(path), method="GET", times=times, at=at, short=short)
        )

    def slow(self, seconds: float, *, contains: str | None = None, times: int | None = None) -> _Rule:
        return self._add(_Rule("slow", contains=contains, times=times, seconds=seconds))

    def override_headers(
        self,
        headers: Mapping[str, str],
        *,
        contains: str | None = None,
        method: str | None = None,
        times: int | None = None,
    ) -> _Rule:
        """Answer matching hub requests with these headers replaced (e.g. a lying ``X-Repo-Commit``)."""
        return self._add(
            _Rule("headers", contains=contains, method=method, times=times, headers=dict(headers))
        )

    def move_branch_after(
        self, repo_id: str, branch: str, commit: str, *, after: str, repo_type: str = "model"
    ) -> _Rule:
        """Move ``branch`` to ``commit`` right after the first request whose path contains ``after``."""
        return self._add(
            _Rule(
                "after",
                contains=after,
                times=1,
                action=lambda: self.move_branch(repo_id, branch, commit, repo_type=repo_type),
            )
        )

    def clear_switches(self) -> None:
        with self._lock:
            self.rules.clear()

    def _add(self, rule: _Rule) -> _Rule:
        with self._lock:
            self.rules.append(rule)
        return rule

    def _take(self, kind: str, server: str, method: str, target: str) -> _Rule | None:
        with self._lock:
            for r in self.rules:
                if r.kind == kind and r.matches(server, method, target):
                    r.use()
                    return r
        return None

    # ----- request log helpers
    def count(self, *, method: str | None = None, contains: str = "", server: str | None = None) -> int:
        with self._lock:
            return sum(
                1
                for (s, m, p) in self.requests
                if (method is None or m == method) and contains in p and (server is None or s == server)
            )


def _make_handler(hub: FakeHub, role: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"
        server_version = "FakeHub/1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
            pass

        def do_GET(self) -> None:
            self._handle("GET")

        def do_HEAD(self) -> None:
            self._handle("HEAD")

        def do_POST(self) -> None:
            self._handle("POST")

        # --------------------------------------------------------------------------------------
        def _handle(self, method: str) -> None:
            target = self.path
            with hub._lock:
                hub.requests.append((role, method, urlsplit(target).path))
                auth = self.headers.get("Authorization")
                if auth:
                    hub.authorized.append((role, method, urlsplit(target).path, auth))
            slow = hub._take("slow", role, method, target)
            if slow is not None:
                time.sleep(slow.seconds)
            fail = hub._take("fail", role, method, target)
            try:
                if fail is not None:
                    self._error(fail.status, "Injected", f"injected HTTP {fail.status}")
                elif role == "cdn":
                    self._cdn(method, target)
                else:
                    self._hub(method, target)
            except (BrokenPipeError, ConnectionResetError):
                pass
            finally:
                after = hub._take("after", role, method, target)
                if after is not None and after.action is not None:
                    after.action()

        def _send(
            self, status: int, headers: Mapping[str, str], body: bytes = b"", *, method: str = "GET"
        ) -> None:
            override = hub._take("headers", role, method, self.path)
            if override is not None and override.headers:
                headers = {**headers, **override.headers}
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            if "Content-Length" not in headers:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if method != "HEAD" and body:
                self.wfile.write(body)

        def _error(
            self, status: int, code: str, message: str, extra: Mapping[str, str] | None = None
        ) -> None:
            body = json.dumps({"error": message}).encode()
            headers = {"Content-Type": "application/json", "X-Error-Code": code, "X-Error-Message": message}
            headers.update(extra or {})
            self._send(status, headers, body, method="GET")

        def _json(self, obj: Any) -> None:
            self._send(200, {"Content-Type": "application/json"}, json.dumps(obj).encode())

        # --------------------------------------------------------------------------------------
        def _repo(self, repo_type: str, repo_id: str) -> FakeRepo | None:
            # Like the real hub: repo ids resolve case-insensitively, answers carry the canonical id.
            with hub._lock:
                found = hub.repos.get((repo_type, repo_id))
                if found is None:
                    for (rtype, rid), repo in hub.repos.items():
                        if rtype == repo_type and rid.lower() == repo_id.lower():
                            return repo
                return found

        def _hub(self, method: str, target: str) -> None:
            parts = urlsplit(target)
            segs = parts.path.strip("/").split("/")
            query = parse_qs(parts.query)
            if segs[0] == "api" and len(segs) >= 4 and segs[1] in ("models", "datasets"):
                repo_type = "model" if segs[1] == "models" else "dataset"
                repo_id = f"{unquote(segs[2])}/{unquote(segs[3])}"
                rest = segs[4:]
                repo = self._repo(repo_type, repo_id)
                if repo is None:
                    return self._error(404, "RepoNotFound", f"Repository not found: {repo_id}")
                if method == "GET" and (not rest or (rest[0] == "revision" and len(rest) == 2)):
                    return self._info(repo, unquote(rest[1]) if rest else "main", query)
                if method == "POST" and len(rest) == 2 and rest[0] == "paths-info":
                    return self._paths_info(repo, unquote(rest[1]))
                if method == "GET" and len(rest) >= 2 and rest[0] == "tree":
                    prefix = "/".join(unquote(x) for x in rest[2:])
                    recursive = query.get("recursive", ["false"])[0].lower() == "true"
                    return self._tree(repo, unquote(rest[1]), prefix, recursive)
                return self._error(404, "NotFound", "no such API route")
            # /[datasets/]org/name/resolve/rev/path...
            repo_type = "model"
            if segs[0] == "datasets":
                repo_type, segs = "dataset", segs[1:]
            if len(segs) >= 5 and segs[2] == "resolve":
                repo_id = f"{unquote(segs[0])}/{unquote(segs[1])}"
                rev = unquote(segs[3])
                path = "/".join(unquote(s) for s in segs[4:])
                return self._resolve(method, repo_type, repo_id, rev, path)
            return self._error(404, "NotFound", "no such route")

        def _info(self, repo: FakeRepo, rev: str, query: Mapping[str, list[str]]) -> None:
            with hub._lock:
                commit = repo.resolve(rev)
                tree = dict(repo.commits.get(commit, {})) if commit else {}
            if commit is None:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            expand = query.get("expand") or query.get("expand[]")
            if expand:
                out: dict[str, Any] = {"id": repo.repo_id, "_id": repo.repo_id}
                if "sha" in expand:
                    out["sha"] = commit
                return self._json(out)
            blobs = query.get("blobs", ["false"])[0].lower() == "true"
            return self._json(
                {
                    "_id": repo.repo_id,
                    "id": repo.repo_id,
                    "sha": commit,
                    "private": False,
                    "tags": [],
                    "siblings": [tree[p].sibling(blobs) for p in sorted(tree)],
                }
            )

        def _paths_info(self, repo: FakeRepo, rev: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            form = parse_qs(self.rfile.read(length).decode())
            with hub._lock:
                commit = repo.resolve(rev)
                tree = dict(repo.commits.get(commit, {})) if commit else {}
            if commit is None:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            wanted = form.get("paths", [])
            return self._json([tree[p].path_info() for p in wanted if p in tree])

        def _tree(self, repo: FakeRepo, rev: str, prefix: str, recursive: bool) -> None:
            with hub._lock:
                commit = repo.resolve(rev)
                tree = dict(repo.commits.get(commit, {})) if commit else {}
            if commit is None:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            base = f"{prefix}/" if prefix else ""
            out: list[dict[str, Any]] = []
            dirs: set[str] = set()
            for p in sorted(tree):
                if not p.startswith(base):
                    continue
                rest = p[len(base) :].split("/")
                for i in range(1, len(rest)):
                    d = base + "/".join(rest[:i])
                    if (recursive or i == 1) and d not in dirs:
                        dirs.add(d)
                        out.append(
                            {
                                "type": "directory",
                                "oid": hashlib.sha1(d.encode()).hexdigest(),
                                "size": 0,
                                "path": d,
                            }
                        )
                if recursive or len(rest) == 1:
                    out.append(tree[p].path_info())
            return self._json(out)

        def _resolve(self, method: str, repo_type: str, repo_id: str, rev: str, path: str) -> None:
            repo = self._repo(repo_type, repo_id)
            if repo is None:
                return self._error(404, "RepoNotFound", f"Repository not found: {repo_id}")
            with hub._lock:
                commit = repo.resolve(rev)
                f = repo.commits[commit].get(path) if commit else None
            if commit is None:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            if f is None:
                return self._error(404, "EntryNotFound", f"{path} does not exist", {"X-Repo-Commit": commit})
            if f.lfs:
                headers = {
                    "X-Repo-Commit": commit,
                    "ETag": f'"{f.oid}"',
                    "X-Linked-Etag": f'"{f.sha256}"',
                    "X-Linked-Size": str(len(f.data)),
                    "Location": f"{hub.cdn_url}/lfs/{f.sha256}/{quote(path)}",
                }
                return self._send(302, headers, b"", method=method)
            headers = {
                "X-Repo-Commit": commit,
                "ETag": f'"{f.oid}"',
                "Content-Type": "application/octet-stream",
            }
            return self._body(method, target_path=path, data=f.data, headers=headers)

        def _cdn(self, method: str, target: str) -> None:
            segs = urlsplit(target).path.strip("/").split("/")
            if len(segs) < 3 or segs[0] != "lfs":
                return self._error(404, "NotFound", "no such blob")
            sha, path = segs[1], "/".join(unquote(s) for s in segs[2:])
            with hub._lock:
                data = next(
                    (
                        f.data
                        for repo in hub.repos.values()
                        for tree in repo.commits.values()
                        for f in tree.values()
                        if f.lfs and f.sha256 == sha
                    ),
                    None,
                )
            if data is None:
                return self._error(404, "NotFound", "no such blob")
            return self._body(
                method, target_path=path, data=data, headers={"Content-Type": "application/octet-stream"}
            )

        def _body(self, method: str, *, target_path: str, data: bytes, headers: dict[str, str]) -> None:
            quoted = quote(target_path)
            if method == "GET" and hub._take("tamper", role, method, quoted) is not None and data:
                data = bytes([data[0] ^ 0x01]) + data[1:]
            start = 0
            rng = self.headers.get("Range")
            status = 200
            if method == "GET" and rng and rng.startswith("bytes=") and rng.endswith("-"):
                start = min(int(rng[len("bytes=") : -1]), len(data))
                status = 206
                headers = dict(headers, **{"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"})
            body = data[start:]
            headers = dict(headers, **{"Content-Length": str(len(body)), "Accept-Ranges": "bytes"})
            trunc = hub._take("truncate", role, method, quoted) if method == "GET" else None
            if trunc is None:
                return self._send(status, headers, body, method=method)
            cut = len(data) // 2 if trunc.at is None else trunc.at
            sent = body[: max(0, cut - start)]
            if trunc.short:
                return self._send(status, {**headers, "Content-Length": str(len(sent))}, sent, method=method)
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(sent)
            self.wfile.flush()
            self.close_connection = True

    return Handler


# -------------------------------------------------------------------------------------------------
# Pointing huggingface_hub at a FakeHub


class _InstantTime:
    """Stands in for the ``time`` module inside huggingface_hub's retry code: sleeps are recorded, not slept."""

    def __init__(self) -> None:
        import time as _t

        self._t = _t
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._t, name)


def use_fake_hub(monkeypatch: Any, hub: FakeHub, tmp_path: Path, *, instant_retries: bool = True) -> Path:
    """Point huggingface_hub (env + already-imported constants) at ``hub``; return the HF cache dir."""
    from huggingface_hub import constants, file_download
    from huggingface_hub.utils import _http

    home = tmp_path / "hf_home"
    cache = home / "hub"
    cache.mkdir(parents=True, exist_ok=True)
    env = {
        "HF_ENDPOINT": hub.url,
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(cache),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "PIPEWARDEN_QUIET": "1",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    for k in (
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "HUGGINGFACE_HUB_CACHE",
    ):
        monkeypatch.delenv(k, raising=False)
    patches = {
        "ENDPOINT": hub.url,
        "HUGGINGFACE_CO_URL_TEMPLATE": hub.url + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(cache),
        "HUGGINGFACE_HUB_CACHE": str(cache),
        "HF_HUB_OFFLINE": False,
        "HF_TOKEN_PATH": str(home / "token"),
        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
        "HF_HUB_DISABLE_IMPLICIT_TOKEN": True,
        "AGENT_HARNESSES_PATH": str(home / ".agent_harnesses.json"),
        "CHECK_FOR_UPDATE_DONE_PATH": str(home / ".check_for_update_done"),
        "HF_XET_CACHE": str(home / "xet"),
    }
    for k, v in patches.items():
        monkeypatch.setattr(constants, k, v)
    if instant_retries:
        monkeypatch.setattr(_http, "time", _InstantTime())
        monkeypatch.setattr(file_download, "time", _InstantTime())
    return cache


def set_offline(monkeypatch: Any, offline: bool = True) -> None:
    """HF_HUB_OFFLINE as a user would set it before starting Python (env + constant)."""
    from huggingface_hub import constants

    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)


# -------------------------------------------------------------------------------------------------
# Cache inspection for assertions


def untrusted_cache_entries(cache: Path) -> list[str]:
    """Everything in the HF cache a later load could wrongly trust: blobs whose content does not hash to
    their name, and snapshot entries that resolve to such blobs. Partial downloads are reported too."""
    bad: list[str] = []
    for blob in sorted(cache.glob("*/blobs/*")):
        data = blob.read_bytes()
        name = blob.name
        if name.endswith(".incomplete"):
            bad.append(f"partial {blob}")
        elif len(name) == 64 and hashlib.sha256(data).hexdigest() != name:
            bad.append(f"sha256 mismatch {blob}")
        elif len(name) == 40 and git_blob_sha1(data) != name:
            bad.append(f"git sha1 mismatch {blob}")
        elif len(name) not in (40, 64):
            bad.append(f"unexpected blob {blob}")
    for entry in sorted(cache.glob("*/snapshots/*/**/*")):
        if entry.is_symlink() and not entry.exists():
            continue  # dangling link: huggingface_hub re-downloads it
        if entry.is_symlink() and any(str(entry.resolve()) in b for b in bad):
            bad.append(f"snapshot entry to bad blob {entry}")
    return bad


def blob_names(cache: Path, repo_folder: str) -> list[str]:
    return sorted(p.name for p in (cache / repo_folder / "blobs").glob("*"))
