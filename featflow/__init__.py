"""featflow: streaming real-time features and inference."""

__all__ = ["__version__"]

__version__ = "0.1.0"
