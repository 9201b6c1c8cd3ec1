"""Structured pruning: importance scores, selection, physical removal (``stages/prune.py`` runs them)."""
