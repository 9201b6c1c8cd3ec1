"""Runtimes for exported models: ONNX Runtime and Paddle Inference sessions, latency, dynamic
batching, and evaluation of an export directory (reads its ``manifest.json``)."""
