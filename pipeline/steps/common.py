"""Glue shared by several steps: location arguments, the data version, required inputs.

Reading the stored rows and building their features: ``pipeline/inputs.py``."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import yaml

from pipeline.context import Context
from pipeline.errors import MissingInputError, PipelineError
from pipeline.io.storage import raw_files


def parse_locations(ctx: Context, locations: str | Sequence[str]) -> list[str]:
    """Location ids from ``a,b,c`` (or a list), each one of params.yaml's; else an error."""
    wanted = [w.strip() for w in locations.split(",")] if isinstance(locations, str) \
        else [str(w) for w in locations]
    wanted = [w for w in wanted if w]
    known = set(ctx.params.location_ids)
    unknown = [w for w in wanted if w not in known]
    if unknown or not wanted:
        raise PipelineError(f"--locations: unknown location id(s) {unknown or wanted}; "
                            f"params.yaml has {len(known)} ({', '.join(sorted(known)[:10])}"
                            f"{', ...' if len(known) > 10 else ''})")
    return wanted


def data_version(ctx: Context) -> dict[str, str | None]:
    """The DVC hash of data/ (from data.dvc) and a content hash of the files actually read."""
    dvc_md5 = None
    dvc_file = ctx.paths.root / "data.dvc"
    if dvc_file.exists():
        outs = (yaml.safe_load(dvc_file.read_text()) or {}).get("outs") or [{}]
        dvc_md5 = outs[0].get("md5")
    digest = hashlib.sha256()
    for path in raw_files(ctx.paths.raw_dir, ctx.params.source.kind, ctx.params.location_ids):
        digest.update(str(Path(path).relative_to(ctx.paths.raw_dir)).encode())
        digest.update(hashlib.md5(Path(path).read_bytes()).digest())
    return {"dvc_md5": dvc_md5, "raw_content_sha256": digest.hexdigest()}


def require(path: Path, produced_by: str) -> Path:
    if not Path(path).exists():
        raise MissingInputError(f"{path} not found: run `python -m pipeline {produced_by}` first")
    return path

