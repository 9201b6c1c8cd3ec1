"""Automatic compression search (issue #32): the stages' own options as a search space, and a
multi-objective study over them in Optuna's storage. The trial runner (a recipe per trial) and the
``search`` command build on these."""
