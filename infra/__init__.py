"""Embedded servers (Kafka-compatible broker, Redis) and deployment material."""
