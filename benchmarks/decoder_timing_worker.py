"""One timing process of ``decoder_peers.py``: load one decoder, then per measurement warm up once at
the measured shape and time it once; print the times as JSON on the last line of stdout.

    python benchmarks/decoder_timing_worker.py ours|genai MODEL --threads 2 --prompts 128,512
        --batches 1,8 --decode-prompt 32 --new-tokens 32 --vocab V --seed 1

``ours``: ``onnx/decoder.onnx`` of an ``ernie-compress export`` in ONNX Runtime through the
package's own loop (``runtime/decoding.OnnxDecoder``: prefill, then one step per token, greedy),
run in this repository's environment. ``genai``: a folder onnxruntime-genai's model builder wrote,
through onnxruntime-genai's own generator (``append_tokens`` is the prefill, ``generate_next_token``
picks a token and, from the second call on, runs the step that computes the next logits; greedy),
run in the reference venv that has onnxruntime-genai (``tests/interop/make_reference_venvs.sh``).
Both read the same token ids (uniform over the vocabulary from ``--seed``) and use ``--threads``
intra-op threads.

Time to first token = prefill of one prompt + the first pick. Decode tokens/s = ``--new-tokens``
steps after a ``--decode-prompt``-token prefill of ``batch`` rows, times ``batch``.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np


def peak_rss_mib() -> float:
    """This process's own peak resident memory: ``VmHWM`` of /proc/self/status (its address space's
    high-water mark). Not ``getrusage``'s ``ru_maxrss``: Linux keeps the larger of it and the parent's
    at exec, so every worker reported the benchmark process's own peak (2,819 MiB in every row)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux


def token_rows(vocab: int, seed: int, rows: int, length: int) -> np.ndarray:
    """[rows, length] token ids, the same on both sides (ids 5 .. vocab-1: past the special tokens)."""
    return np.random.default_rng(seed).integers(5, vocab, size=(rows, length), dtype=np.int64)


class Ours:
    def __init__(self, export: Path, threads: int):
        import onnxruntime as ort

        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from ernie_compress.runtime.decoding import OnnxDecoder, shares_buffer

        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.log_severity_level = 3
        session = ort.InferenceSession(str(export / "onnx" / "decoder.onnx"), options,
                                       providers=["CPUExecutionProvider"])
        # as OnnxDecoder.open on a CPU: one shared past/present buffer where the graph allows it
        self.decoder = OnnxDecoder(session, cache_on="cpu" if shares_buffer(session) else None)

    def first_token(self, prompt: np.ndarray) -> float:
        decoder = self.decoder.fork()
        start = time.perf_counter()
        int(np.argmax(decoder.prefill(prompt.tolist())[0]))
        return time.perf_counter() - start

    def decode(self, rows: np.ndarray, steps: int) -> float:
        decoder = self.decoder.fork()
        picks = decoder.prefill(rows.tolist()).argmax(axis=1)
        start = time.perf_counter()
        for _ in range(steps):
            picks = decoder.step(picks).argmax(axis=1)
        return time.perf_counter() - start


class GenAI:
    def __init__(self, folder: Path, threads: int):
        import onnxruntime_genai as og

        self.og = og
        config = og.Config(str(folder))
        config.overlay(json.dumps({"model": {"decoder": {"session_options": {
            "intra_op_num_threads": threads, "inter_op_num_threads": 1}}}}))
        self.model = og.Model(config)

    def _generator(self, rows: np.ndarray, new_tokens: int):
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(do_sample=False, batch_size=rows.shape[0], max_length=rows.shape[1] + new_tokens + 1)
        return self.og.Generator(self.model, params)

    def first_token(self, prompt: np.ndarray) -> float:
        generator = self._generator(prompt, 1)
        start = time.perf_counter()
        generator.append_tokens(prompt.astype(np.int32))
        generator.generate_next_token()  # the first pick from the prefill's logits
        generator.get_next_tokens()
        return time.perf_counter() - start

    def decode(self, rows: np.ndarray, steps: int) -> float:
        generator = self._generator(rows, steps)
        generator.append_tokens(rows.astype(np.int32))
        generator.generate_next_token()  # first pick (prefill's logits), untimed as on our side
        start = time.perf_counter()
        for _ in range(steps):
            generator.generate_next_token()
        generator.get_next_tokens()
        return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runtime", choices=("ours", "genai"))
    parser.add_argument("model", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompts", default="128,512")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--decode-prompt", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--vocab", type=int, required=True)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)

    start = time.perf_counter()
    runner = (Ours if args.runtime == "ours" else GenAI)(args.model, args.threads)
    result = {"load_s": round(time.perf_counter() - start, 3), "ttft_ms": {}, "decode_tokens_per_s": {}}
    for length in (int(p) for p in args.prompts.split(",")):
        prompt = token_rows(args.vocab, args.seed, 1, length)
        runner.first_token(prompt)  # warm-up at this length: first runs allocate
        result["ttft_ms"][str(length)] = 1000 * runner.first_token(prompt)
    for batch in (int(b) for b in args.batches.split(",")):
        rows = token_rows(args.vocab, args.seed + 1, batch, args.decode_prompt)
        runner.decode(rows, 4)  # warm-up at this batch size
        result["decode_tokens_per_s"][str(batch)] = batch * args.new_tokens / runner.decode(rows, args.new_tokens)
    result["peak_rss_mib"] = peak_rss_mib()
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
