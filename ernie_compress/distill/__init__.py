"""Distillation losses (Hinton et al. 2015; MiniLM, Wang et al. 2020); the stage is ``stages/distill.py``."""
