"""Run inside the llama.cpp reference venv (``make_llama_cpp_venv.sh``: llama-cpp-python 0.3.36), never ours.

    python reference_llama_cpp.py REQUEST.json

REQUEST: {"gguf": path, "also": {name: path}, "ids": [token ids], "prompts": [[token ids]...],
"new_tokens": n, "texts": [str...], "out": dir}. Loads each GGUF with ``llama_cpp.Llama`` (CPU,
``logits_all``) and writes to ``out``: ``logits.npy`` (``gguf``'s logits of every position of ``ids``
evaluated at once, [len, vocab]) and ``logits_{name}.npy`` for each of ``also``; ``result.json`` with
the greedy continuation of each prompt by each file ("greedy": {"gguf" or name: [...]}; argmax of the engine's logits,
``new_tokens`` steps, one token fed back at a time through its KV cache), ``gguf``'s tokenization
of each text (no BOS, no special-token parsing), the vocabulary size, the model's metadata and the
versions.
"""

import json
import os
import sys

import numpy as np


def _greedy(llm, prompt, count):
    llm.reset()
    llm.eval(prompt)
    tokens = []
    for _ in range(count):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        tokens.append(token)
        llm.eval([token])
    return tokens


def _load(path):
    import llama_cpp

    return llama_cpp.Llama(model_path=path, logits_all=True, n_ctx=256, n_batch=256, n_threads=2, seed=0,
                           verbose=False)


def _logits(llm, ids):
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[:llm.n_tokens], dtype=np.float32)  # [len, vocab]


def main(request_path):
    import llama_cpp

    request = json.loads(open(request_path).read())
    os.makedirs(request["out"], exist_ok=True)
    greedy = {}
    for name, path in request.get("also", {}).items():
        other = _load(path)
        np.save(os.path.join(request["out"], f"logits_{name}.npy"), _logits(other, request["ids"]))
        greedy[name] = [_greedy(other, p, request["new_tokens"]) for p in request["prompts"]]
    llm = _load(request["gguf"])
    logits = _logits(llm, request["ids"])
    greedy["gguf"] = [_greedy(llm, p, request["new_tokens"]) for p in request["prompts"]]
    result = {
        "greedy": greedy,
        "tokenized": [llm.tokenize(t.encode("utf-8"), add_bos=False, special=False) for t in request["texts"]],
        "n_vocab": llm.n_vocab(), "metadata": llm.metadata,
        "versions": {"llama_cpp_python": llama_cpp.__version__},
    }
    np.save(os.path.join(request["out"], "logits.npy"), logits)
    with open(os.path.join(request["out"], "result.json"), "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1])
