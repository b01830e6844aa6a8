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
alias is replaced atomically, so a reader never sees half a model. Loading
checks the sha256 and the feature list: a model that fails either is refused
and whatever serves now keeps serving.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from inference.exceptions import ModelRejected, UnknownVersion

_VERSION = re.compile(r"^v(\d{4,})$")


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
        return ModelVersion(version, path, json.loads(meta.read_text()))

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
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.root))
        (staging / "model.onnx").write_bytes(model)
        (staging / "metadata.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
        os.replace(staging, self.root / version)
        return self.get(version)

    # -- champion alias ------------------------------------------------------
    def _alias(self) -> dict[str, Any]:
        path = self.root / "champion.json"
        alias = json.loads(path.read_text()) if path.exists() else {}
        return {"version": None, "history": [], "shadow": None, **alias}

    def _write_alias(self, alias: dict[str, Any]) -> None:
        tmp = self.root / f".champion.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(alias))
        os.replace(tmp, self.root / "champion.json")

    def champion_version(self) -> str | None:
        """The champion's version name, or None."""
        return self._alias()["version"]

    def champion(self) -> ModelVersion | None:
        """The champion, or None before any promotion."""
        version = self.champion_version()
        return self.get(version) if version else None

    def promote(self, version: str, feature_names: Sequence[str] | None = None) -> None:
        """Make ``version`` the champion, after checking it would load."""
        self.load_verified(version, feature_names)
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
        self._write_alias({**alias, "version": previous, "history": rest})
        return previous

    # -- shadow alias --------------------------------------------------------
    def shadow_version(self) -> str | None:
        """The challenger scored in shadow beside the champion, or None."""
        return self._alias()["shadow"]

    def start_shadow(self, version: str, feature_names: Sequence[str] | None = None) -> None:
        """Score ``version`` in shadow from now on (after checking it would load)."""
        self.load_verified(version, feature_names)
        self._write_alias({**self._alias(), "shadow": version})

    def end_shadow(self) -> None:
        """Stop shadow scoring (the champion is unchanged)."""
        self._write_alias({**self._alias(), "shadow": None})

    # -- integrity -----------------------------------------------------------
    def load_verified(
        self, version: str, feature_names: Sequence[str] | None = None
    ) -> tuple[ModelVersion, bytes]:
        """The version and its model bytes, or ``ModelRejected`` saying why not."""
        model = self.get(version)
        data = model.model_path.read_bytes()
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
