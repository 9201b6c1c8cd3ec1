"""Data-parallel training (distributed.py): N processes on gloo end with the weights one process
reaches with the same seed and global batch; only rank 0 writes; bad settings are one line.

Dropout is off in these runs (the checkpoint they start from has dropout 0): dropout masks are
drawn per process, so with dropout on the runs agree in distribution, not in every weight.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from tests.helpers import train_tiny_checkpoint

CLI = str(Path(sys.executable).with_name("ernie-compress"))
TOLERANCE = 1e-5


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([CLI, "--quiet", "--json", *args], capture_output=True, text=True, timeout=300)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def max_weight_difference(a: Path, b: Path) -> float:
    x, y = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert x.keys() == y.keys()
    return max(float(np.abs(x[k] - y[k]).max()) for k in x)


@pytest.fixture(scope="module")
def start(tmp_path_factory) -> Path:
    """A tiny trained classifier with dropout off."""
    root = tmp_path_factory.mktemp("dp")
    ckpt, _ = train_tiny_checkpoint(root, epochs=2)
    config = json.loads((ckpt / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (ckpt / "config.json").write_text(json.dumps(config))
    return ckpt


STAGES = {
    "train": ["train", "--from", "{ckpt}", "--epochs", "2", "--lr", "3e-3"],
    "distill": ["distill", "--teacher", "{ckpt}", "--student", "{ckpt}", "--epochs", "2", "--lr", "1e-3",
                "--hidden-weight", "1", "--attention-weight", "1", "--no-latency"],
    "prune recovery": ["prune", "{ckpt}", "--heads", "0.25", "--recover-epochs", "2", "--no-latency"],
    "quantize --qat": ["quantize", "{ckpt}", "--qat", "int8", "--epochs", "2", "--lr", "1e-3"],
}


@pytest.mark.multiprocess
@pytest.mark.parametrize("stage", sorted(STAGES))
def test_two_processes_end_with_the_weights_of_one(start, tmp_path, stage):
    args = [a.format(ckpt=start) for a in STAGES[stage]] + ["--batch-size", "8"]
    one = json.loads(cli(*args, "--out", str(tmp_path / "one")).stdout)
    two = json.loads(cli(*args, "--out", str(tmp_path / "two"), "--nproc", "2").stdout)
    assert max_weight_difference(tmp_path / "one", tmp_path / "two") <= TOLERANCE
    assert two["steps"] == one["steps"] > 0
    metric = "metrics" if "metrics" in one else "student_metrics" if "student_metrics" in one else "accuracy"
    assert two[metric] == one[metric]  # every rank scores the whole held-out split
    if stage == "quantize --qat":  # the activation observers see the whole global batch
        s1, s2 = (json.loads((tmp_path / n / "quantization_scales.json").read_text()) for n in ("one", "two"))
        assert max(abs(s1[k]["input_absmax"] - s2[k]["input_absmax"]) for k in s1) <= TOLERANCE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]  # no state, no rank leftovers


def test_gradient_accumulation_is_the_same_step(start, tmp_path):
    args = ["train", "--from", str(start), "--epochs", "2", "--lr", "3e-3", "--batch-size", "8"]
    cli(*args, "--out", str(tmp_path / "one"))
    cli(*args, "--out", str(tmp_path / "accum"), "--grad-accum", "4")
    assert max_weight_difference(tmp_path / "one", tmp_path / "accum") <= TOLERANCE


# Token-level heads weight each micro-batch / rank by its labelled tokens (training_loop.batch_weight), so
# the loss must be a mean over labelled tokens too. The texts differ in length (2 to 14 characters), so
# the shares of a batch hold different fractions of labelled positions: a loss divided by every position
# (Paddle's reduction="mean" with ignore_index) no longer adds up to the one-process step.
NER_TEXTS = ["李鹏", "新华社报道", "江泽民访问北京", "李鹏在上海会见了记者",
             "新华社记者在北京和上海报道了这件事情", "上海", "北京新华社", "江泽民在北京"]
LM_TEXTS = ["很好", "质量很好，推荐", "太差了，浪费钱，不会再买了", "服务很差",
            "非常满意，下次还来买这家的东西", "好", "包装破损，退货", "物流很快，包装完好，东西也不错"]


def _bio_tags(text: str) -> list[str]:
    names = {"李鹏": "PER", "江泽民": "PER", "新华社": "ORG", "北京": "LOC", "上海": "LOC"}
    tags = ["O"] * len(text)
    for name, kind in names.items():
        at = text.find(name)
        while at >= 0:
            tags[at:at + len(name)] = [f"B-{kind}"] + [f"I-{kind}"] * (len(name) - 1)
            at = text.find(name, at + len(name))
    return tags


def _write_token_task(kind: str, data: Path) -> list[str]:
    """The train/dev/test files of a tiny NER or LM task in ``data``; the command-line task options."""
    data.mkdir()
    for split, repeat in (("train", 4), ("dev", 1), ("test", 1)):
        if kind == "ner":
            blocks = ["\n".join(f"{c} {t}" for c, t in zip(text, _bio_tags(text))) for text in NER_TEXTS * repeat]
            (data / f"{split}.txt").write_text("\n\n".join(blocks) + "\n", encoding="utf-8")
        else:
            (data / f"{split}.txt").write_text("\n".join(LM_TEXTS * repeat) + "\n", encoding="utf-8")
    if kind == "ner":
        return ["--task", "msra-ner", "--data", str(data), "--preset", "tiny"]
    return ["--task", "lm", "--data", str(data), "--preset", "ernie45-tiny"]


@pytest.fixture(scope="module", params=["ner", "causal lm"])
def token_level(request, tmp_path_factory) -> tuple[list[str], Path]:
    """A token-level head (``root/start``), trained one epoch with dropout off: (train args from it,
    one-process result)."""
    root = tmp_path_factory.mktemp(request.param.replace(" ", "-"))
    texts = NER_TEXTS if request.param == "ner" else LM_TEXTS
    assert len({len(t) for t in texts}) > 4  # label density differs between the shares of a batch
    cli("train", *_write_token_task(request.param, root / "data"), "--epochs", "1", "--batch-size", "8",
        "--out", str(root / "start"))
    config = json.loads((root / "start" / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (root / "start" / "config.json").write_text(json.dumps(config))
    args = ["train", "--from", str(root / "start"), "--epochs", "2", "--lr", "3e-3", "--batch-size", "8"]
    cli(*args, "--out", str(root / "one"))
    return args, root / "one"


def test_token_level_gradient_accumulation_is_the_same_step(token_level, tmp_path):
    args, one = token_level
    cli(*args, "--out", str(tmp_path / "accum"), "--grad-accum", "4")
    assert max_weight_difference(one, tmp_path / "accum") <= TOLERANCE


@pytest.mark.multiprocess
def test_token_level_two_processes_end_with_the_weights_of_one(token_level, tmp_path):
    args, one = token_level
    cli(*args, "--out", str(tmp_path / "two"), "--nproc", "2")
    assert max_weight_difference(one, tmp_path / "two") <= TOLERANCE


def test_token_level_distillation_with_hidden_states_accumulates_the_same_step(token_level, tmp_path):
    """The hidden-state term averages over real tokens while the loop weights a token-level share by
    its labelled tokens (TensorBatch.token_share reconciles the two); CE and KD average over labelled ones."""
    start = token_level[1].parent / "start"
    args = ["distill", "--teacher", str(start), "--student", str(start), "--epochs", "2", "--lr", "1e-3",
            "--kd-weight", "0.5", "--hidden-weight", "1", "--no-latency", "--batch-size", "8"]
    cli(*args, "--out", str(tmp_path / "one"))
    cli(*args, "--out", str(tmp_path / "accum"), "--grad-accum", "4")
    assert max_weight_difference(tmp_path / "one", tmp_path / "accum") <= TOLERANCE


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.multiprocess
def test_two_nodes_on_localhost_through_paddles_launcher(start, tmp_path):
    args = ["train", "--from", str(start), "--epochs", "2", "--lr", "3e-3", "--batch-size", "8"]
    cli(*args, "--out", str(tmp_path / "one"))
    master = f"127.0.0.1:{free_port()}"
    nodes = [subprocess.Popen([sys.executable, "-m", "paddle.distributed.launch", "--nnodes", "2", "--master", master,
                               "--rank", str(rank), "--nproc_per_node", "1", "--log_dir", str(tmp_path / f"log{rank}"),
                               CLI, "--quiet", "--json", *args, "--out", str(tmp_path / "two")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    outputs = [node.communicate(timeout=300) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs
    assert json.loads(outputs[0][0].strip().splitlines()[-1])["out"] == str(tmp_path / "two")
    assert max_weight_difference(tmp_path / "one", tmp_path / "two") <= TOLERANCE


@pytest.mark.parametrize("args, message", [
    (["--nproc", "0"], "--nproc must be >= 1, got 0"),
    (["--nproc", "2", "--batch-size", "7"], "--batch-size 7 (the global batch) must divide by --nproc x --nnodes x --grad-accum"),
    (["--amp", "fp16", "--device", "cpu"], "--amp fp16 needs --device gpu or npu"),
    (["--device", "gpu"], "--device gpu: "),
    (["--amp", "bf16", "--device", "tpu"], "--device must be one of cpu, gpu, npu"),
])
def test_bad_settings_are_one_line_and_write_nothing(start, tmp_path, args, message):
    if args == ["--device", "gpu"]:
        import paddle

        if paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count():
            pytest.skip("this machine has a GPU")
    result = cli("train", "--from", str(start), "--out", str(tmp_path / "o"), *args, check=False)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and list(tmp_path.iterdir()) == []


def rank_processes(parent: int) -> list[int]:
    """The spawned ranks of a CLI process (its children running multiprocessing's spawn_main)."""
    ranks = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes().decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and "spawn_main" in cmdline:
            ranks.append(int(stat.parent.name))
    return sorted(ranks)


@pytest.mark.multiprocess
def test_sigterm_to_one_rank_then_resume_matches_the_uninterrupted_run(start, tmp_path):
    import os
    import signal
    import time

    from ernie_compress.paddle_env import import_paddle

    args = ["train", "--from", str(start), "--epochs", "40", "--lr", "3e-3", "--batch-size", "8",
            "--save-every", "7", "--nproc", "2"]
    full = json.loads(cli(*args, "--out", str(tmp_path / "full")).stdout)
    state = tmp_path / ".cut.train-state" / "train_state.pdstate"
    proc = subprocess.Popen([CLI, "--quiet", "--json", *args, "--out", str(tmp_path / "cut")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not state.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    ranks = rank_processes(proc.pid)
    assert len(ranks) == 2, ranks
    os.kill(ranks[-1], signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "--resume" in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert not (tmp_path / "cut").exists() and not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    saved_step = int(import_paddle().load(str(state))["step"])
    resumed = json.loads(cli(*args, "--out", str(tmp_path / "cut"), "--resume").stdout)
    assert 0 < saved_step < full["steps"] == resumed["steps"]
    assert resumed["steps_run"] == full["steps"] - saved_step
    assert max_weight_difference(tmp_path / "full", tmp_path / "cut") <= TOLERANCE
    assert not (tmp_path / ".cut.train-state").exists()


@pytest.mark.multiprocess
def test_uneven_shares_lose_and_duplicate_no_example(start, tmp_path):
    """47 training rows at a global batch of 8: the last batch has 7 rows, 4 on one rank and 3 on
    the other (and 8 rows at --grad-accum 4 on 2 ranks: one row per micro-batch), weighted by rows."""
    data = tmp_path / "data"
    data.mkdir()
    source = json.loads((start / "config.json").read_text())["ernie_compress"]["task"]["data"]
    lines = Path(source, "train.jsonl").read_text(encoding="utf-8").splitlines()[:47]
    (data / "train.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for split in ("dev", "test"):
        (data / f"{split}.jsonl").write_text(Path(source, f"{split}.jsonl").read_text(encoding="utf-8"))
    args = ["train", "--from", str(start), "--task", "text", "--data", str(data), "--epochs", "2", "--lr", "3e-3",
            "--batch-size", "8"]
    one = json.loads(cli(*args, "--out", str(tmp_path / "one")).stdout)
    two = json.loads(cli(*args, "--out", str(tmp_path / "two"), "--nproc", "2", "--grad-accum", "4").stdout)
    assert one["steps"] == two["steps"] == 12  # 6 batches of 8 per epoch, the last one of 7
    assert max_weight_difference(tmp_path / "one", tmp_path / "two") <= TOLERANCE
    assert two["metrics"] == one["metrics"] and one["metrics"]["test"]["examples"] == 8


@pytest.mark.multiprocess
def test_two_nodes_through_our_own_options(start, tmp_path):
    args = ["train", "--from", str(start), "--epochs", "2", "--lr", "3e-3", "--batch-size", "8"]
    cli(*args, "--out", str(tmp_path / "one"))
    master = f"127.0.0.1:{free_port()}"
    nodes = [subprocess.Popen([CLI, "--quiet", "--json", *args, "--out", str(tmp_path / "two"), "--nnodes", "2",
                               "--master", master, "--node-rank", str(rank)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    outputs = [node.communicate(timeout=300) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs
    assert json.loads(outputs[0][0])["out"] == str(tmp_path / "two") and outputs[1][0] == ""  # node 0 reports
    assert max_weight_difference(tmp_path / "one", tmp_path / "two") <= TOLERANCE


@pytest.mark.multiprocess
def test_an_unreachable_master_is_one_line(start, tmp_path, monkeypatch):
    monkeypatch.setenv("ERNIE_COMPRESS_MASTER_TIMEOUT", "2")
    result = cli("train", "--from", str(start), "--out", str(tmp_path / "o"), "--nnodes", "2",
                 "--master", f"127.0.0.1:{free_port()}", "--node-rank", "1", check=False)
    assert result.returncode == 2 and "is unreachable from node 1 after 2 s" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, message", [
    (["--nnodes", "2"], "--nnodes > 1 needs --master HOST:PORT"),
    (["--nnodes", "2", "--master", "node0:http"], "--nnodes > 1 needs --master HOST:PORT"),
    (["--nnodes", "2", "--master", "127.0.0.1:9999", "--node-rank", "2"], "--node-rank 2 must be below --nnodes 2"),
])
def test_bad_node_settings(start, tmp_path, args, message):
    result = cli("train", "--from", str(start), "--out", str(tmp_path / "o"), *args, check=False)
    assert result.returncode == 2 and message in result.stderr, result.stderr
