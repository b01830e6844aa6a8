"""ONNX model registry, training and export, the predictor and the HTTP service."""
