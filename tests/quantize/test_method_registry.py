"""Contract for quantization methods: every config type the quantize stage offers has a runner,
every scheme method a runner writes has a scheme entry, and every scheme an export path. A method
added without one of them fails here, not at a user's first export."""

from __future__ import annotations

import pytest

from ernie_compress.errors import UserError
from ernie_compress.quantize.registry import SCHEMES, scheme_of
from ernie_compress.stages import STAGES
from ernie_compress.stages import quantize as quantize_stage
from ernie_compress.stages.export import EXPORT_PATHS


@pytest.mark.parametrize("config_type", STAGES["quantize"].configs, ids=lambda cls: cls.__name__)
def test_every_quantize_config_type_has_a_runner_and_a_scheme_with_an_export_path(config_type):
    runner = quantize_stage.RUNNERS.get(config_type)
    assert runner is not None, f"{config_type.__name__} has no runner (stages/quantize.runs)"
    assert runner.methods, f"{config_type.__name__}'s runner declares no scheme method"
    for method in runner.methods:
        scheme = scheme_of({"method": method})  # UserError: no scheme in quantize/registry.py lists it
        assert scheme.export in EXPORT_PATHS, f"scheme {scheme.name} names export path {scheme.export!r}, not in " \
                                              f"stages/export.EXPORT_PATHS"


def test_every_runner_is_a_method_of_the_stage():
    assert set(quantize_stage.RUNNERS) == set(STAGES["quantize"].configs)


@pytest.mark.parametrize("name", sorted(SCHEMES))
def test_every_scheme_has_an_export_path(name):
    assert SCHEMES[name].export in EXPORT_PATHS


def test_the_schemes_of_todays_checkpoints():
    assert scheme_of(None).name == "fp32" and scheme_of({}).name == "fp32"
    assert scheme_of({"method": "qat", "dtype": "int8"}).name == "int8"
    assert scheme_of({"method": "ptq", "dtype": "int8"}).name == "int8"
    assert scheme_of({"method": "fp16", "dtype": "fp16"}).precision == "fp16"
    only = scheme_of({"method": "weight_only_gptq", "dtype": "int4"})
    assert only.name == "weight_only" and only.precision == "fp32" and only.kernels == ("MatMulNBits",)


def test_an_unknown_method_is_refused_by_name():
    with pytest.raises(UserError, match="quantization method 'awq' is not one this version deploys"):
        scheme_of({"method": "awq", "dtype": "int4"})
