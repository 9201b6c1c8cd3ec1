"""Export a dygraph model to a Paddle static graph (PIR): ``model.json`` + ``model.pdiparams``.

``paddle.jit.to_static`` traces ``forward(input_ids, token_type_ids)`` with both dimensions
dynamic (``InputSpec([None, None], "int64")``) and ``full_graph=True``; ``paddle.jit.save`` then
writes the program. On Paddle 3.3.1 only the PIR format (``.json``) exists; Paddle Inference and
paddle2onnx both read it.
"""

from __future__ import annotations

from pathlib import Path

from ..models.families import family_of
from ..paddle_env import import_paddle

MODEL_PREFIX = "model"


def input_names(model) -> tuple[str, ...]:
    """The inputs a model reads: ERNIE 3.0 encoders take token types, ERNIE 4.5 decoders do not."""
    return family_of(model.config).input_names


def _inference_wrapper(model):
    """A layer whose forward takes exactly the exported inputs and returns logits."""
    paddle = import_paddle()

    class InferenceModel(paddle.nn.Layer):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, token_type_ids):
            return self.inner(input_ids, token_type_ids)

    class DecoderInferenceModel(InferenceModel):
        def forward(self, input_ids):
            return self.inner(input_ids)

    return (DecoderInferenceModel if input_names(model) == ("input_ids",) else InferenceModel)(model)


def export_static_graph(model, out_dir: Path) -> dict[str, str]:
    """Write ``out_dir/model.json`` and ``model.pdiparams``; returns the file names."""
    paddle = import_paddle()
    from paddle.static import InputSpec

    model.eval()
    wrapper = _inference_wrapper(model)
    wrapper.eval()
    specs = [InputSpec([None, None], "int64", name=name) for name in input_names(model)]
    static = paddle.jit.to_static(wrapper, input_spec=specs, full_graph=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    paddle.jit.save(static, str(out_dir / MODEL_PREFIX))
    files = {"program": f"{MODEL_PREFIX}.json", "params": f"{MODEL_PREFIX}.pdiparams"}
    for name in files.values():
        if not (out_dir / name).is_file():
            raise RuntimeError(f"paddle.jit.save did not write {name}")
    return files
