"""Quantization algorithms (INT8 scheme, observers, fake-quant, calibration; weight-only RTN and
GPTQ) and the scheme registry (``registry.py``: how each scheme deploys). ``stages/quantize.py``
runs them, one runner per method; ``stages/export.py`` deploys what they write."""
