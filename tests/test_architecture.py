"""The package's layers and the stages' independence are import-linter contracts (pyproject.toml):
an import from a lower layer up to a higher one, or between two stages, fails here."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("lint-imports")
    return subprocess.run([str(exe), "--no-cache"], cwd=root, capture_output=True, text=True,
                          env={"PYTHONPATH": str(root), "PATH": ""})


def test_the_import_contracts_hold():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


def test_an_import_up_the_layers_breaks_a_contract(tmp_path):
    shutil.copytree(ROOT / "ernie_compress", tmp_path / "ernie_compress",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    config = tmp_path / "ernie_compress" / "models" / "config.py"
    config.write_text(config.read_text() + "\nfrom ..stages import run_stage  # planted\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0 and "BROKEN" in result.stdout


# --- architecture knowledge lives in models/ ---------------------------------------------------
# Outside ernie_compress/models/ no module spells a parameter name or tests a model_type: it asks the
# family (models/families.py). A parameter-name literal is a string (f-string parts included,
# docstrings not) that starts with the first component of a family's parameter names plus a dot
# ("ernie.", "lm_head.", "classifier.", "score."), or that holds a module path from inside a layer
# ("self_attn.q_proj", "mlp.down_proj", "q_proj", "linear1", "input_layernorm") as whole dotted
# components.
# The vocabulary comes from the registered families, so a new family's names are covered too.
def _vocabulary() -> tuple[tuple[str, ...], tuple[str, ...]]:
    from ernie_compress.models.families import FAMILIES

    roots, inner = set(), set()
    for family in FAMILIES.values():
        names = family.names
        tops = (names.layer_prefix, names.embedding, *names.task_heads, names.lm_head, names.final_norm,
                names.embedding_norm)
        roots.update(f"{name.split('.')[0]}." for name in tops if name)
        modules = (*names.layer_modules(), names.attention)
        inner.update((*modules, *(module.split(".")[-1] for module in modules)))
    return tuple(sorted(roots)), tuple(sorted(inner))


def _docstrings(tree: ast.AST) -> set[int]:
    return {id(node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)}


def _mentions_model_type(node: ast.AST) -> bool:
    for sub in ast.walk(node):
        if isinstance(sub, ast.Attribute) and sub.attr == "model_type":
            return True
        if isinstance(sub, ast.Name) and sub.id == "model_type":
            return True
        if isinstance(sub, ast.Constant) and sub.value == "model_type":
            return True
    return False


def architecture_knowledge(source: str) -> list[str]:
    """Parameter-name literals and model_type tests in a module's source, as 'line: what'."""
    roots, inner = _vocabulary()
    inner_runs = [re.compile(rf"(?:^|\.){re.escape(m)}(?:\.|$)") for m in inner]
    tree = ast.parse(source)
    docstrings = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            text = node.value
            if text.startswith(roots) or any(run.search(text) for run in inner_runs):
                found.append(f"{node.lineno}: parameter name {text!r}")
        elif isinstance(node, ast.Compare) and _mentions_model_type(node):
            found.append(f"{node.lineno}: model_type comparison")
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
              and node.args and isinstance(node.args[0], ast.Constant) and node.args[0].value == "model_type"):
            found.append(f"{node.lineno}: .get('model_type', ...)")
    return found


def test_no_parameter_name_or_model_type_test_outside_models():
    package = ROOT / "ernie_compress"
    found = []
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package).as_posix()
        if relative.startswith("models/"):
            continue
        found += [f"{relative}:{line}" for line in architecture_knowledge(path.read_text())]
    assert not found, "ask the model family (models/families.py) instead:\n" + "\n".join(found)


@pytest.mark.parametrize("source", [
    'w = state[f"ernie.layers.{i}.self_attn.qkv_proj.weight"]',
    'name = prefix + "self_attn.q_proj"',
    'for proj in ("q_proj", "k_proj", "v_proj"): pass',
    'for proj in ("linear1", "linear2"): pass',
    'x = state["lm_head.weight"]',
    'head = "classifier.bias"',
    'ok = config.model_type == "ernie"',
    'ok = "ernie4_5" in keys["model_type"]',
    'family = keys.get("model_type", "ernie")',
    'ok = getattr(config, "model_type") != other',
])
def test_the_scan_finds_architecture_knowledge(source):
    assert architecture_knowledge(source), source


@pytest.mark.parametrize("source", [
    '"""Docstrings may cite ernie.encoder.layers.0.linear1.weight."""',
    'row = dict(model_type=config.model_type)',
    'path = "model.safetensors"',
    'key = "ernie_compress"',
    'text = "the lm head"',
])
def test_the_scan_leaves_other_strings(source):
    assert not architecture_knowledge(source), source
