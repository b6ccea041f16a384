"""The landing area: one folder per source under `landing/`, each with a `source.yaml` descriptor.

The sensor and the CLI both read it through here, so "what is waiting to be ingested" has one answer.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from llm_assets.ingestion.descriptor import (
    DESCRIPTOR_FILENAME,
    IngestError,
    SourceDescriptor,
    parse_descriptor,
)
from llm_assets.lake import LakeStorage, ObjectInfo

LANDING_PREFIX = "landing/"


@dataclass(frozen=True)
class LandingSource:
    """A source folder found in the landing area."""

    name: str
    descriptor: SourceDescriptor | None
    error: str | None
    files: tuple[ObjectInfo, ...]  # data files, descriptor excluded
    fingerprint: str  # changes whenever a file is added, removed or rewritten

    def relpath(self, info: ObjectInfo) -> str:
        return info.key[len(landing_key(self.name, "")) :]


def landing_key(source: str, relpath: str) -> str:
    return f"{LANDING_PREFIX}{source}/{relpath}"


def _fingerprint(objects: list[ObjectInfo]) -> str:
    digest = hashlib.sha256()
    for info in objects:
        digest.update(f"{info.key}\t{info.size}\t{info.version}\n".encode())
    return digest.hexdigest()


def scan_landing(storage: LakeStorage) -> dict[str, LandingSource]:
    """Every source folder under `landing/`, with its parsed descriptor or the reason it is unusable."""
    by_source: dict[str, list[ObjectInfo]] = {}
    for info in storage.list_objects(LANDING_PREFIX):
        rest = info.key[len(LANDING_PREFIX) :]
        if "/" not in rest:
            continue  # loose files at the top of landing/ belong to no source
        by_source.setdefault(rest.split("/", 1)[0], []).append(info)
    found: dict[str, LandingSource] = {}
    for name, objects in sorted(by_source.items()):
        descriptor_key = landing_key(name, DESCRIPTOR_FILENAME)
        files = tuple(o for o in objects if o.key != descriptor_key)
        descriptor: SourceDescriptor | None = None
        error: str | None = None
        if not any(o.key == descriptor_key for o in objects):
            error = f"{storage.uri(descriptor_key)} is missing: add a {DESCRIPTOR_FILENAME} describing the source"
        else:
            try:
                descriptor = parse_descriptor(storage.read_bytes(descriptor_key), storage.uri(descriptor_key))
            except IngestError as exc:
                error = str(exc)
            else:
                if descriptor.name != name:
                    error = (
                        f"{storage.uri(descriptor_key)}: name '{descriptor.name}' does not match its folder "
                        f"'{name}'; rename the folder or the source"
                    )
                    descriptor = None
        found[name] = LandingSource(name, descriptor, error, files, _fingerprint(objects))
    return found


def stage_source_folder(storage: LakeStorage, folder: Path, name: str | None = None) -> str:
    """Copy a local source folder (with its descriptor) into the landing area; returns the source name.

    Files whose content is unchanged are not rewritten, so staging the same folder twice does not change
    the landing fingerprint and triggers no new ingestion run.
    """
    descriptor_path = folder / DESCRIPTOR_FILENAME
    if not descriptor_path.is_file():
        raise IngestError(f"{descriptor_path}: not found; every source folder needs a {DESCRIPTOR_FILENAME}")
    descriptor = parse_descriptor(descriptor_path.read_bytes(), str(descriptor_path))
    source = name or descriptor.name
    if source != descriptor.name:
        raise IngestError(f"{descriptor_path}: name '{descriptor.name}' does not match requested '{source}'")
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel.startswith(".") or "/." in rel or "__pycache__" in rel:
            continue
        key = landing_key(source, rel)
        data = path.read_bytes()
        if storage.exists(key) and storage.read_bytes(key) == data:
            continue
        storage.write_bytes(key, data)
    return source
