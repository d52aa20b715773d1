"""LaMa's dtype rule (models/lama_backend.py): bf16 by default on a CUDA device that computes it
natively, fp32 elsewhere; fp16 refused, saying why and naming bf16. The rule is a pure function of
(dtype, device, bf16 supported), so CUDA devices are stood in for by their names; the refusal goes
through the real job config, `run` and the loader."""

from __future__ import annotations

import pytest

pytest.importorskip("spandrel", reason="the lama extra is not installed")

import torch  # noqa: E402

from batch_inpaint.errors import ConfigError  # noqa: E402
from batch_inpaint.models import load_inpainter  # noqa: E402
from batch_inpaint.models.lama_backend import lama_dtype_name, resolve_lama_dtype  # noqa: E402
from batch_inpaint.models.lama_tiny import make_tiny_lama  # noqa: E402


@pytest.fixture(scope="module")
def lama_dir(tmp_path_factory):
    return make_tiny_lama(tmp_path_factory.mktemp("models") / "tiny-lama")


@pytest.mark.parametrize(
    ("dtype", "device", "bf16", "expected"),
    [
        (None, "cuda", True, "bf16"),  # Ampere and later: bf16 by default
        ("auto", "cuda:1", True, "bf16"),
        ("auto", "cuda", False, "fp32"),  # a T4 or V100: no native bf16
        ("auto", "cpu", False, "fp32"),
        ("bf16", "cuda", True, "bf16"),
        ("fp32", "cuda", True, "fp32"),  # an explicit choice stands
    ],
)
def test_lama_dtype_rule_bf16_on_cuda_that_has_it_fp32_elsewhere(dtype, device, bf16, expected):
    assert lama_dtype_name(dtype, device, bf16) == expected


@pytest.mark.parametrize("dtype", ["fp16", "float16", "half", torch.float16])
def test_lama_refuses_fp16_saying_why_and_naming_bf16(dtype):
    with pytest.raises(ConfigError, match="supports_half=False") as err:
        lama_dtype_name(dtype, "cuda", True)
    assert "FFT" in str(err.value) and "use bf16" in str(err.value)


def test_fp16_for_lama_is_refused_by_the_job_config_the_run_cli_and_the_loader(
    lama_dir, tmp_path, capsys
):
    from batch_inpaint.cli import main
    from batch_inpaint.config import JobConfig

    with pytest.raises(ConfigError, match="config field 'dtype'.*supports_half=False.*bf16"):
        JobConfig(backend="lama", model=str(lama_dir), dtype="fp16")
    assert JobConfig(backend="lama", model=str(lama_dir), dtype="bf16").dtype == "bf16"
    code = main(["run", "--manifest", str(tmp_path / "m.parquet"), "--output",
                 str(tmp_path / "out"), "--backend", "lama", "--model", str(lama_dir),
                 "--dtype", "fp16"])  # fmt: skip
    assert code == 2 and "supports_half=False" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match="use bf16"):
        load_inpainter("lama", str(lama_dir), device="cpu", dtype="fp16")
    # on the CPU 'auto' is fp32 by the same rule (this machine's torch answers for the device)
    assert resolve_lama_dtype("auto", "cpu") == torch.float32
