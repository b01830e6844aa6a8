"""The model registry: a directory of immutable versions and a ``champion`` alias.

Layout under ``$FEATFLOW_HOME/models/``::

    v0001/model.onnx      the exported model
    v0001/metadata.json   features (names, order), training window, rows, data
                          fingerprint, holdout metrics, reference histograms,
                          sha256 of model.onnx, created time, parent version
    champion.json         {"version": "v0002", "history": ["v0001"], "shadow": "v0003"}

``shadow`` names a challenger scored beside the champion (stream scoring publishes its
predictions with ``role: shadow``) until it is promoted or dropped.

Versions are written to a temporary folder and renamed into place, and the
alias is replaced atomically, both fsynced (``infra.files``), so a reader, or a restart
after a kill or a power cut, never sees half a model. The staging folder of a writer that
was killed is removed by the next ``register``. Loading checks the sha256 and the feature
list: a model that fails either is refused and whatever serves now keeps serving. A file
edited into something featflow does not write (not JSON, a field of the wrong type, a
champion that names no version) raises ``RegistryDamaged`` with the file and the fault:
readers keep what they serve, and writers refuse to build on it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from inference.exceptions import ModelRejected, RegistryDamaged, UnknownVersion
from infra.files import fsync_dir, stale, temporary_writer, write_durably

_VERSION = re.compile(r"^v(\d{4,})$")
_STAGING = re.compile(r"^\.staging-(\d+)-")  # a version being written


@dataclass(frozen=True)
class ModelVersion:
    """One registered model: its folder and its metadata."""

    version: str
    path: Path
    metadata: dict[str, Any]

    @property
    def model_path(self) -> Path:
        """The ONNX file."""
        return self.path / "model.onnx"

    @property
    def feature_names(self) -> list[str]:
        """The model's input features, in column order."""
        return list(self.metadata["feature_names"])


def sha256_of(data: bytes) -> str:
    """Hex sha256 of ``data`` (stored with every version, checked on load)."""
    return hashlib.sha256(data).hexdigest()


class ModelRegistry:
    """Model versions in a folder, with a champion pointer that is swapped atomically."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    # -- versions ------------------------------------------------------------
    def versions(self) -> list[str]:
        """Registered versions, oldest first."""
        found = [p.name for p in self.root.iterdir() if p.is_dir() and _VERSION.match(p.name)]
        return sorted(found, key=lambda v: int(v[1:]))

    def get(self, version: str) -> ModelVersion:
        """The registered ``version``; ``UnknownVersion`` (a KeyError) if there is none."""
        path = self.root / version
        meta = path / "metadata.json"
        if not _VERSION.match(version) or not meta.exists():
            raise UnknownVersion(f"no model version {version!r} in {self.root}")
        metadata = _json_object(meta)
        names = metadata.get("feature_names")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise RegistryDamaged(f"{meta}: feature_names is not a list of names")
        if not isinstance(metadata.get("sha256"), str):
            raise RegistryDamaged(f"{meta}: no sha256 of the model")
        return ModelVersion(version, path, metadata)

    def register(self, model: bytes, metadata: dict[str, Any]) -> ModelVersion:
        """Store a new immutable version; returns it (not promoted)."""
        existing = self.versions()
        number = int(existing[-1][1:]) + 1 if existing else 1
        version = f"v{number:04d}"
        champion = self.champion_version()
        meta = {
            **metadata,
            "version": version,
            "sha256": sha256_of(model),
            "created_at": datetime.now(UTC).isoformat(),
            "parent_version": champion,
        }
        self._sweep()
        staging = Path(tempfile.mkdtemp(prefix=f".staging-{os.getpid()}-", dir=self.root))
        try:
            write_durably(staging / "model.onnx", model, sync_dir=False)
            text = json.dumps(meta, indent=2, sort_keys=True).encode()
            write_durably(staging / "metadata.json", text, sync_dir=False)
            fsync_dir(staging)
            os.rename(staging, self.root / version)  # refused if a racing writer took the name
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        fsync_dir(self.root)
        return self.get(version)

    # -- champion alias ------------------------------------------------------
    def _alias(self) -> dict[str, Any]:
        path = self.root / "champion.json"
        alias = {"version": None, "history": [], "shadow": None}
        if path.exists():
            alias |= _json_object(path)
        history = alias["history"]
        if not isinstance(history, list) or not all(_is_version(v) for v in history):
            raise RegistryDamaged(f"{path}: history is not a list of versions (v0001, ...)")
        for key in ("version", "shadow"):
            if alias[key] is not None and not _is_version(alias[key]):
                raise RegistryDamaged(f"{path}: {key} {alias[key]!r} is not a version name")
        return alias

    def _write_alias(self, alias: dict[str, Any]) -> None:
        self._sweep()
        write_durably(self.root / "champion.json", json.dumps(alias).encode())

    def _sweep(self) -> None:
        """Remove what writers killed mid-write left: staging folders and temporary files
        whose pid is gone (a live writer's are its own)."""
        for leftover in stale(self.root.glob(".*"), _writer_pid):
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)

    def champion_version(self) -> str | None:
        """The champion's version name, or None."""
        return self._alias()["version"]

    def champion(self) -> ModelVersion | None:
        """The champion, or None before any promotion."""
        version = self.champion_version()
        return self.get(version) if version else None

    def promote(self, version: str, feature_names: Sequence[str] | None = None) -> None:
        """Make ``version`` the champion, after checking it would load."""
        self.check_serves(version, feature_names)
        alias = self._alias()
        if alias["version"] == version:
            return
        history = [*alias["history"], alias["version"]] if alias["version"] else alias["history"]
        shadow = None if alias["shadow"] == version else alias["shadow"]
        self._write_alias({"version": version, "history": history, "shadow": shadow})

    def rollback(self) -> str:
        """Return to the previous champion; returns the version now serving."""
        alias = self._alias()
        if not alias["history"]:
            raise UnknownVersion("no earlier champion to roll back to")
        *rest, previous = alias["history"]
        self.check_serves(previous)  # never back to a file that was removed or tampered with
        self._write_alias({**alias, "version": previous, "history": rest})
        return previous

    # -- shadow alias --------------------------------------------------------
    def shadow_version(self) -> str | None:
        """The challenger scored in shadow beside the champion, or None."""
        return self._alias()["shadow"]

    def start_shadow(self, version: str, feature_names: Sequence[str] | None = None) -> None:
        """Score ``version`` in shadow from now on (after checking it would load)."""
        self.check_serves(version, feature_names)
        self._write_alias({**self._alias(), "shadow": version})

    def end_shadow(self) -> None:
        """Stop shadow scoring (the champion is unchanged)."""
        self._write_alias({**self._alias(), "shadow": None})

    # -- integrity -----------------------------------------------------------
    def check_serves(self, version: str, feature_names: Sequence[str] | None = None) -> None:
        """``ModelRejected`` unless ``version`` passes :meth:`load_verified` and
        onnxruntime loads it with one input of the feature set's width."""
        from inference.onnx_model import load_model  # onnxruntime: only when checking

        model, data = self.load_verified(version, feature_names)
        load_model(version, data, feature_names or model.feature_names)

    def load_verified(
        self, version: str, feature_names: Sequence[str] | None = None
    ) -> tuple[ModelVersion, bytes]:
        """The version and its model bytes (hash and feature list checked, not parsed), or
        ``ModelRejected`` saying why not."""
        model = self.get(version)
        try:
            data = model.model_path.read_bytes()
        except FileNotFoundError:
            raise RegistryDamaged(f"{version}: {model.model_path} is missing") from None
        if sha256_of(data) != model.metadata.get("sha256"):
            raise ModelRejected(
                f"{version}: model.onnx does not match its recorded sha256 (tampered or corrupt)"
            )
        if feature_names is not None and model.feature_names != list(feature_names):
            raise ModelRejected(
                f"{version}: trained on features {model.feature_names}, "
                f"but the feature set is {list(feature_names)}"
            )
        return model, data


def _is_version(value: object) -> bool:
    return isinstance(value, str) and _VERSION.match(value) is not None


def _writer_pid(path: Path) -> int | None:
    """The pid in a staging folder's or temporary file's name (None: not one of ours)."""
    match = _STAGING.match(path.name)
    return int(match.group(1)) if match else temporary_writer(path)


def _json_object(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``, or ``RegistryDamaged`` saying why it is not one."""
    try:
        value = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        raise RegistryDamaged(f"{path}: not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise RegistryDamaged(f"{path}: not a JSON object")
    return value
