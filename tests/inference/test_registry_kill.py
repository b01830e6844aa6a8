"""SIGKILL a process while it registers, promotes, shadows and rolls back models: after
every kill the registry holds only whole versions (each file matches its sha256 and loads),
an alias that reads and names them, and what a killed writer left is swept by the next."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest

from inference.registry import ModelRegistry
from tests.inference.test_registry import NAMES, _onnx

KILLS = 20
PAD = 4_000_000  # bytes per model file: each write spans many pages and an fsync

WRITER = """
import sys
from pathlib import Path
from inference.registry import ModelRegistry
root, names, blobs = Path(sys.argv[1]), sys.argv[2].split(","), sys.argv[3:]
registry = ModelRegistry(root)
models = [Path(b).read_bytes() for b in blobs]
print("ready", flush=True)
i = 0
while True:
    version = registry.register(models[i % len(models)], {"feature_names": names}).version
    registry.promote(version, names)
    if i % 4 == 1:
        registry.start_shadow(registry.versions()[0], names)
    if i % 3 == 2:
        registry.rollback()
    i += 1
"""


def _padded_model(seed: int, folder: Path) -> Path:
    """A valid ONNX model of ~``PAD`` bytes (the padding is a metadata property)."""
    model = onnx.load_from_string(_onnx(seed)[0])
    model.metadata_props.add(key="padding", value="x" * PAD)
    path = folder / f"model-{seed}.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def _check_whole(registry: ModelRegistry) -> None:
    for version in registry.versions():
        registry.check_serves(version, NAMES)  # hash matches, onnxruntime loads it
    champion = registry.champion_version()
    named = [champion, registry.shadow_version(), *registry._alias()["history"]]
    for version in filter(None, named):
        registry.get(version)


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.glob(".*"))


def _wait_for_a_write(root: Path, pid: int) -> None:
    """Until writer ``pid`` has a write in progress (its staging folder or temporary alias).

    Half the kills aim there: at random moments alone, how many land inside a write depends
    on the machine's load (onnxruntime loading each model is most of a writer's time), and a
    loaded machine gave 3 of 20, too few to test anything."""
    deadline = time.monotonic() + 30
    while not any(str(pid) in name for name in _leftovers(root)):
        assert time.monotonic() < deadline, "no write within 30 s"
        time.sleep(0.0005)


@pytest.mark.slow
def test_registry_writes_killed_at_random_leave_whole_versions(tmp_path: Path) -> None:
    root = tmp_path / "models"
    blobs = [str(_padded_model(seed, tmp_path)) for seed in (1, 2, 3)]
    rng = random.Random(7)
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    landed_mid_write = 0
    for i in range(KILLS):
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(root), ",".join(NAMES), *blobs],
            stdout=subprocess.PIPE, env=env,
        )  # fmt: skip
        assert writer.stdout is not None and writer.stdout.readline() == b"ready\n"
        if i % 2:
            _wait_for_a_write(root, writer.pid)  # aimed inside a write
        else:
            time.sleep(rng.uniform(0.05, 0.6))  # anywhere
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        registry = ModelRegistry(root)
        _check_whole(registry)
        landed_mid_write += bool(_leftovers(root))
    assert landed_mid_write >= KILLS // 4, "the kills should land inside writes"
    assert len(ModelRegistry(root).versions()) >= KILLS  # the writers got work done
    # the next writer sweeps what the killed ones left, and writes on
    registry = ModelRegistry(root)
    version = registry.register(Path(blobs[0]).read_bytes(), {"feature_names": NAMES}).version
    registry.promote(version, NAMES)
    assert _leftovers(root) == []
    _check_whole(registry)
