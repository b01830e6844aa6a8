"""featflow benchmarks: stream throughput, freshness, backfill speed, state memory."""
