"""INT8 quantization: scheme, observers, fake-quant, calibration (``stages/quantize.py`` runs them)."""
