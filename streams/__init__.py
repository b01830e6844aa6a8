"""Topics and schemas, the stream worker, the producer SDK and the synthetic generator."""
