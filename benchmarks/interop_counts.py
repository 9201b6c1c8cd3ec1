"""Interop pass counts: runs ``tests/interop`` (the reference libraries in their own venvs, built by
``tests/interop/make_reference_venvs.sh``) and counts, per library, the cases that pass in each
direction: the library saves and we load (logits or tensors equal), we save and the library loads.

    python benchmarks/interop_counts.py [--markdown benchmarks/results/interop.md]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ElementTree
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

# test file -> the reference it checks against
REFERENCES = {"test_paddlenlp": "PaddleNLP 2.8.1 (ERNIE 3.0, logits)",
              "test_paddleformers": "PaddleFormers 1.2.0, ERNIE 4.5 dense (logits)",
              "test_paddleformers_moe": "PaddleFormers 1.2.0, ERNIE 4.5 MoE (tensors; its MoE forward needs a GPU)",
              "test_transformers": "transformers 5.3 on CPU PyTorch, ERNIE 4.5 dense and MoE (logits)",
              "test_cli_on_reference_saves": "every stage of the CLI on a reference library's save"}
# test function -> direction
THEIRS_TO_OURS = ("test_a_paddlenlp_save_loads", "test_a_paddleformers_save_loads", "test_a_paddleformers_moe_save_loads",
                  "test_we_load_a_transformers_save", "test_every_stage_runs_on")


def direction(test: str) -> str:
    return "them → us" if test.startswith(THEIRS_TO_OURS) else "us → them"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", type=Path, default=None)
    args = parser.parse_args(argv)
    from _tables import markdown

    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "interop.xml"
        env = dict(os.environ, ERNIE_COMPRESS_INTEROP="required")
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/interop",
                        f"--junitxml={report}"], cwd=ROOT, env=env, check=False)
        cases = ElementTree.parse(report).getroot().iter("testcase")
        passed, total = Counter(), Counter()
        for case in cases:
            module = case.get("classname").rsplit(".", 1)[-1]
            key = (REFERENCES.get(module, module), direction(case.get("name")))
            total[key] += 1
            passed[key] += not any(child.tag in ("failure", "error", "skipped") for child in case)
    rows = []
    for reference in dict.fromkeys(r for r, _ in total):
        cells = {d: (f"{passed[(reference, d)]}/{total[(reference, d)]}" if total[(reference, d)] else "")
                 for d in ("them → us", "us → them")}
        rows.append({"reference": reference, **cells})
    table = markdown("Interop cases passed (`python benchmarks/interop_counts.py`: tests/interop against the "
                     "reference libraries in their own venvs)", rows, ["reference", "them → us", "us → them"])
    print("\n" + table)
    if args.markdown:
        args.markdown.write_text(table + "\n")
    return {"passed": sum(passed.values()), "total": sum(total.values())}


if __name__ == "__main__":
    main()
