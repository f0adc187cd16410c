"""A worker host's copy of the home host's project state, through the home host's gateway.

A Celery worker on another host shares nothing with the home host (scheduler, database,
broker, the project directory) but the network. Each of its tasks runs in a workspace of
its own (one per task slot: two tasks of one host never touch each other's files), made
from the worker's checkout (code, ``dvc.yaml``); before the task, :meth:`Mirror.pull` makes
the workspace's shared state (:data:`SHARED_DIRS`, :data:`SHARED_FILES`, and ``params.yaml``
read-only) what the home project holds; after the task succeeded, :meth:`Mirror.push` sends
back what the task wrote, in the order it wrote it (a stage's ``dvc.lock`` after its
outputs, a batch's ``status.json`` after its forecasts), and deletes what it removed. A
failed task sends nothing: the home project only ever sees whole task results, and the
retry starts again from it. The objects a task's DVC command put in the workspace's DVC
cache (:data:`CACHE_OBJECTS`) go to the home project's cache first, before the outputs and
the ``dvc.lock`` that name them: the home project can check out, push and ``dvc status``
every version a worker recorded (the cache is only ever sent, never pulled). Tasks that
write the same file at once are kept apart as on one host: the ``dvc`` pool (one slot for
the whole deployment) and the batches' own locations.

The gateway (``stack/gateway.py``) serves the home project's shared paths with nginx
(GET, PUT and DELETE of files, JSON directory listings) behind a password; every request
here is bounded in time and every download in bytes.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from urllib.parse import quote

from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

SHARED_DIRS = ("data", "build", "models", "predictions", "reports")
SHARED_FILES = ("dvc.lock", "data.dvc", "metrics.json")
READ_ONLY = ("params.yaml",)  # the home project's, pulled, never sent back
# not code: never copied from the checkout into a workspace
NOT_CODE = {*SHARED_DIRS, *SHARED_FILES, *READ_ONLY, ".stack", ".airflow", ".venv", ".git",
            ".pytest_cache", ".ruff_cache", "__pycache__", ".mypy_cache", "workspaces"}
# DVC 3's content-addressed cache objects (``<2 hex>/<30 hex>``, ``.dir`` for a directory)
CACHE_OBJECTS = ".dvc/cache/files/md5"
_HEX = frozenset("0123456789abcdef")
USER = "worker"  # the gateway's one user
TIMEOUT_S = (10.0, 120.0)  # connect, then between bytes
MAX_FILE_BYTES = 8 * 1024**3
RACY_S = 2  # a file changed this close to the listing may change again within its second


class MirrorError(PipelineError):
    """The home project cannot be mirrored or updated; the message names the path."""


def _shared(rel: str) -> bool:
    top = rel.split("/", 1)[0]
    name = rel.rsplit("/", 1)[-1]
    if name.startswith("."):  # locks, temporary files, DVC's state
        return False
    return top in SHARED_DIRS or rel in SHARED_FILES


def local_state(root: Path) -> dict[str, tuple[int, int]]:
    """Shared files of ``root``: relative path -> (size, mtime_ns)."""
    found = {}
    for top in (*SHARED_DIRS, *SHARED_FILES):
        base = root / top
        if base.is_file():
            st = base.stat()
            found[top] = (st.st_size, st.st_mtime_ns)
            continue
        for directory, dirs, files in os.walk(base):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for name in files:
                path = Path(directory) / name
                rel = path.relative_to(root).as_posix()
                if _shared(rel):
                    st = path.stat()
                    found[rel] = (st.st_size, st.st_mtime_ns)
    return found


def _object_name(prefix: str, name: str) -> bool:
    digest = name.removesuffix(".dir")
    return (len(prefix) == 2 and len(digest) == 30 and set(prefix + digest) <= _HEX)


def cache_objects(root: Path) -> dict[str, tuple[int, int]]:
    """The DVC cache objects of ``root``: relative path -> (size, mtime_ns); DVC's
    temporary files left out."""
    found = {}
    base = root / CACHE_OBJECTS
    for prefix in (os.listdir(base) if base.is_dir() else []):
        if not (base / prefix).is_dir():
            continue
        for name in os.listdir(base / prefix):
            if _object_name(prefix, name):
                st = (base / prefix / name).stat()
                found[f"{CACHE_OBJECTS}/{prefix}/{name}"] = (st.st_size, st.st_mtime_ns)
    return found


def local_dirs(root: Path) -> set[str]:
    """Shared directories of ``root`` (relative paths)."""
    found = set()
    for top in SHARED_DIRS:
        for directory, dirs, _ in os.walk(root / top):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            found |= {(Path(directory) / d).relative_to(root).as_posix() for d in dirs}
    return found


def _topmost(paths: set[str]) -> list[str]:
    """The paths none of whose parents is in ``paths``."""
    return sorted(p for p in paths if not any(p.startswith(q + "/") for q in paths))


@dataclass
class Mirror:
    """The home project at ``url`` (the gateway) mirrored into the workspace ``root``."""

    url: str
    password: str
    root: Path

    def __post_init__(self) -> None:
        import requests

        self.url = self.url.rstrip("/")
        self.session = requests.Session()
        self.session.auth = (USER, self.password)
        self.record_path = self.root / ".mirror.json"

    # ---------------------------------------------------------------- HTTP

    def _request(self, method: str, rel: str, **kwargs):
        import requests

        try:
            reply = self.session.request(method, f"{self.url}/{quote(rel)}",
                                         timeout=TIMEOUT_S, **kwargs)
        except requests.RequestException as exc:
            raise MirrorError(f"home project at {self.url}: {method} {rel}: "
                              f"{type(exc).__name__}: {exc}") from None
        if reply.status_code == 401:
            raise MirrorError(f"home project at {self.url} refused the password "
                              "(AQ_STATE_PASSWORD)")
        return reply

    def listing(self) -> tuple[dict[str, tuple[int, str]], set[str], float]:
        """Every shared file of the home project (path -> (size, mtime)), its shared
        directories, and the server's clock when the listing began."""
        files: dict[str, tuple[int, str]] = {}
        dirs: set[str] = set()
        started = None
        for top in SHARED_FILES + READ_ONLY:
            reply = self._request("HEAD", top)
            started = started or _server_time(reply)
            if reply.status_code == 200:
                files[top] = (int(reply.headers["Content-Length"]),
                              reply.headers["Last-Modified"])
            elif reply.status_code != 404:
                raise MirrorError(f"home project: HEAD {top}: HTTP {reply.status_code}")
        pending = [f"{top}/" for top in SHARED_DIRS]
        while pending:
            directory = pending.pop()
            reply = self._request("GET", directory)
            if reply.status_code == 404:
                continue
            if reply.status_code != 200:
                raise MirrorError(f"home project: list {directory}: HTTP {reply.status_code}")
            for entry in json.loads(reply.text):
                rel = directory + entry["name"]
                if entry["type"] == "directory":
                    if not entry["name"].startswith("."):
                        pending.append(rel + "/")
                        dirs.add(rel)
                elif entry["type"] == "file" and _shared(rel):
                    files[rel] = (int(entry["size"]), entry["mtime"])
        return files, dirs, started or time.time()

    def _download(self, rel: str, size: int) -> str:
        """Fetch ``rel`` into the workspace atomically; its Last-Modified."""
        if size > MAX_FILE_BYTES:
            raise MirrorError(f"home project: {rel} is {size} bytes, more than the "
                              f"{MAX_FILE_BYTES} a worker mirrors")
        target = self.root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        reply = self._request("GET", rel, stream=True)
        with reply:
            if reply.status_code != 200:
                raise MirrorError(f"home project: GET {rel}: HTTP {reply.status_code}")
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp",
                                       dir=target.parent)
            try:
                got = 0
                with os.fdopen(fd, "wb") as handle:
                    for chunk in reply.iter_content(1 << 20):
                        got += len(chunk)
                        if got > MAX_FILE_BYTES:
                            raise MirrorError(f"home project: {rel} grew past "
                                              f"{MAX_FILE_BYTES} bytes while read")
                        handle.write(chunk)
                os.replace(tmp, target)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
            return reply.headers.get("Last-Modified", "")

    def _upload(self, rel: str) -> str:
        path = self.root / rel
        with open(path, "rb") as handle:
            reply = self._request("PUT", rel, data=handle,
                                  headers={"Content-Length": str(path.stat().st_size)})
        if reply.status_code not in (200, 201, 204):
            raise MirrorError(f"home project: PUT {rel}: HTTP {reply.status_code}")
        head = self._request("HEAD", rel)
        return head.headers.get("Last-Modified", "") if head.status_code == 200 else ""

    # ---------------------------------------------------------------- the record

    def _record(self) -> dict[str, list]:
        try:
            return json.loads(self.record_path.read_text())
        except (OSError, ValueError):
            return {}

    def _save_record(self, record: dict) -> None:
        tmp = self.record_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, self.record_path)

    # ---------------------------------------------------------------- the two moves

    def pull(self) -> tuple[dict[str, tuple[int, int]], set[str]]:
        """Make the workspace's shared state the home project's; returns the local files and
        directories after it (what :meth:`push` compares with)."""
        started = time.monotonic()
        remote, remote_dirs, server_now = self.listing()
        record = self._record()
        local = local_state(self.root)
        fetched = 0
        for rel, (size, mtime) in sorted(remote.items()):
            known = record.get(rel)
            here = local.get(rel)
            if (known and here and known[0] == size and known[1] == mtime
                    and tuple(known[2]) == here):
                continue
            modified = self._download(rel, size) or mtime
            fetched += 1
            st = (self.root / rel).stat()
            racy = _http_time(modified) > server_now - RACY_S
            record[rel] = None if racy else [size, modified, [st.st_size, st.st_mtime_ns]]
        for rel in set(local) - set(remote):
            (self.root / rel).unlink(missing_ok=True)
            record.pop(rel, None)
        for rel in _topmost(local_dirs(self.root) - remote_dirs):
            shutil.rmtree(self.root / rel, ignore_errors=True)
        record = {k: v for k, v in record.items() if v is not None
                  and (k in remote or k.startswith(CACHE_OBJECTS + "/"))}
        self._save_record(record)
        log.info("mirrored the home project: %d files fetched of %d, %d removed, %.1f s",
                 fetched, len(remote), len(set(local) - set(remote)),
                 time.monotonic() - started)
        return local_state(self.root), local_dirs(self.root)

    def send_cache_objects(self, record: dict) -> int:
        """Send the home project the workspace's DVC cache objects not sent before (the
        record says which were; a failed task's are sent with the next push), unless it
        has them; returns how many were sent."""
        sent = 0
        objects = cache_objects(self.root)
        for rel in sorted(set(objects) - set(record), key=lambda rel: objects[rel][1]):
            head = self._request("HEAD", rel)
            if head.status_code == 200 and int(head.headers.get("Content-Length", -1)) == \
                    objects[rel][0]:
                modified = head.headers.get("Last-Modified", "")
            else:
                modified = self._upload(rel)
                sent += 1
            record[rel] = [objects[rel][0], modified, list(objects[rel])]
        return sent

    def push(self, before: tuple[dict[str, tuple[int, int]], set[str]]) -> dict[str, int]:
        """Send back the DVC cache objects the task added, then what changed since
        ``before`` (:meth:`pull`'s), oldest write first; delete the files and directories
        the task removed."""
        before_files, before_dirs = before
        after = local_state(self.root)
        changed = sorted((rel for rel, state in after.items()
                          if before_files.get(rel) != state),
                         key=lambda rel: after[rel][1])
        removed_dirs = _topmost(before_dirs - local_dirs(self.root))
        removed = sorted(rel for rel in set(before_files) - set(after)
                         if not any(rel.startswith(d + "/") for d in removed_dirs))
        record = self._record()
        objects = self.send_cache_objects(record)  # before the dvc.lock naming them
        for rel in changed:
            modified = self._upload(rel)
            record[rel] = [after[rel][0], modified, list(after[rel])]
        for rel in removed:
            reply = self._request("DELETE", rel)
            if reply.status_code not in (200, 204, 404):
                raise MirrorError(f"home project: DELETE {rel}: HTTP {reply.status_code}")
            record.pop(rel, None)
        for rel in removed_dirs:  # nginx deletes a directory with what it holds
            reply = self._request("DELETE", rel + "/")
            if reply.status_code not in (200, 204, 404):
                raise MirrorError(f"home project: DELETE {rel}/: HTTP {reply.status_code}")
            record = {k: v for k, v in record.items() if not k.startswith(rel + "/")}
        self._save_record(record)
        log.info("sent back to the home project: %d DVC cache objects, %d files written, "
                 "%d files and %d directories removed", objects, len(changed), len(removed),
                 len(removed_dirs))
        return {"objects": objects, "written": len(changed),
                "removed": len(removed) + len(removed_dirs)}


def _http_time(value: str) -> float:
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return float("inf")  # unknown: treat as racy (fetched again next time)


def _server_time(reply) -> float | None:
    value = reply.headers.get("Date")
    return None if value is None else _http_time(value)


# -------------------------------------------------------------------- workspaces


def workspace_root(checkout: Path) -> Path:
    return checkout / ".stack" / "workspaces"


def refresh_code(checkout: Path, workspace: Path) -> None:
    """Copy the checkout's code (everything but state and local tools) into ``workspace``:
    files whose size or mtime differ; DVC there works without git (``no_scm``)."""
    for directory, dirs, files in os.walk(checkout):
        here = Path(directory)
        rel_dir = here.relative_to(checkout)
        dirs[:] = [d for d in dirs if d not in NOT_CODE
                   and (rel_dir.as_posix(), d) not in ((".dvc", "cache"), (".dvc", "tmp"))]
        if rel_dir == Path("."):
            files = [f for f in files if f not in NOT_CODE]
        for name in files:
            source = here / name
            target = workspace / rel_dir / name
            st = source.stat()
            if target.exists() and (target.stat().st_size, target.stat().st_mtime_ns) == (
                    st.st_size, st.st_mtime_ns):
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    local = workspace / ".dvc" / "config.local"
    if (workspace / ".dvc").is_dir() and not local.exists():
        local.write_text("[core]\n    no_scm = true\n")


@dataclass
class Workspace:
    """A task slot's own copy of the project, held (an ``flock``) while its task runs."""

    root: Path
    handle: object

    @classmethod
    def claim(cls, checkout: Path, slots: int, timeout_s: float = 600.0) -> Workspace:
        base = workspace_root(checkout)
        base.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + timeout_s
        while True:
            for index in range(max(1, slots)):
                handle = open(base / f"{index}.lock", "a+")  # noqa: SIM115 (held until exit)
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    handle.close()
                    continue
                root = base / str(index)
                root.mkdir(exist_ok=True)
                refresh_code(checkout, root)
                return cls(root, handle)
            if time.monotonic() > deadline:
                raise MirrorError(f"no free workspace in {base} after {timeout_s:.0f} s "
                                  f"({slots} slots)")
            time.sleep(0.5)
