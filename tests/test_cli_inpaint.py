"""`batch-inpaint inpaint` and `make-tiny-model`, run in process through batch_inpaint.cli.main."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
from PIL import Image

from batch_inpaint.cli import build_parser, main
from batch_inpaint.cli.flags import options_from_args
from batch_inpaint.models.tiny import is_tiny_model_dir
from batch_inpaint.option import meta
from batch_inpaint.params import GenerationParams, GeometryOptions, MaskOptions

H, W = 48, 64


@pytest.fixture()
def files(tmp_path):
    image = np.random.default_rng(2).integers(0, 256, (H, W, 3), dtype=np.uint8)
    mask = np.zeros((H, W), np.uint8)
    mask[8:28, 16:44] = 255
    Image.fromarray(image).save(tmp_path / "in.png")
    Image.fromarray(mask).save(tmp_path / "mask.png")
    return tmp_path, image, mask


def inpaint(tmp_path, model_dir, *extra, out="out.png"):
    argv = ["inpaint", str(tmp_path / "in.png"), str(tmp_path / "mask.png"),
            "-o", str(tmp_path / out), "--backend", "tiny", "--model", str(model_dir),
            "--device", "cpu", "--steps", "2", *extra]  # fmt: skip
    return main(argv)


def test_inpaint_writes_output_seed_and_timings(files, tiny_model_dir, capsys):
    tmp_path, image, mask = files
    assert inpaint(tmp_path, tiny_model_dir, "--seed", "7", "--prompt", "a wall") == 0
    printed = capsys.readouterr().out
    assert f"wrote {tmp_path / 'out.png'}" in printed
    assert "seed 7" in printed
    assert re.search(r"timings: .*load model [\d.]+s.*model [\d.]+s.*total [\d.]+s", printed)
    out = np.asarray(Image.open(tmp_path / "out.png"))
    assert out.shape == (H, W, 3)
    assert np.array_equal(out[mask == 0], image[mask == 0])
    assert np.any(out[mask > 0] != image[mask > 0])


def test_same_seed_same_file_and_random_seed_is_printed(files, tiny_model_dir, capsys):
    tmp_path, _, _ = files
    inpaint(tmp_path, tiny_model_dir, "--seed", "9", out="a.png")
    inpaint(tmp_path, tiny_model_dir, "--seed", "9", out="b.png")
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    capsys.readouterr()
    inpaint(tmp_path, tiny_model_dir, out="c.png")
    seed = int(re.search(r"^seed (\d+)$", capsys.readouterr().out, re.M).group(1))
    inpaint(tmp_path, tiny_model_dir, "--seed", str(seed), out="d.png")
    assert (tmp_path / "c.png").read_bytes() == (tmp_path / "d.png").read_bytes()


def test_every_option_is_accepted(files, tiny_model_dir):
    tmp_path, image, mask = files
    code = inpaint(tmp_path, tiny_model_dir, "--negative-prompt", "blur", "--guidance-scale", "5",
                   "--strength", "0.9", "--eta", "0.3", "--scheduler", "ddim", "--dilate", "2",
                   "--feather", "2", "--mask-threshold", "0.4", "--mode", "crop", "--max-side",
                   "512", "--attention", "sdpa", "--dtype", "fp32", "--vae-tiling",
                   "--num-images", "2", out="many.webp")  # fmt: skip
    assert code == 0
    a, b = (np.asarray(Image.open(tmp_path / f"many-{j}.webp")) for j in range(2))
    assert a.shape == b.shape == (H, W, 3) and np.any(a != b)


def test_invert_and_resize_mask(files, tiny_model_dir):
    tmp_path, image, mask = files
    Image.fromarray(mask).resize((W * 2, H * 2), Image.NEAREST).save(tmp_path / "mask.png")
    assert inpaint(tmp_path, tiny_model_dir, "--mask-resize", "--invert-mask") == 0
    out = np.asarray(Image.open(tmp_path / "out.png"))
    assert np.array_equal(out[mask > 0], image[mask > 0])  # inverted: the box is kept


def test_opencv_backend(files, capsys):
    tmp_path, image, mask = files
    argv = ["inpaint", str(tmp_path / "in.png"), str(tmp_path / "mask.png"),
            "-o", str(tmp_path / "cv.jpg"), "--backend", "opencv"]  # fmt: skip
    assert main(argv) == 0
    assert Image.open(tmp_path / "cv.jpg").size == (W, H)


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--steps", "0"], "--steps must be in [1, 1000], got 0"),
        (["--dtype", "fp16"], "fp16 is not supported on CPU"),
        (["--max-side", "100"], "--max-side must be a multiple of 8"),
        (["--dilate", "-1"], "--dilate must be in [0, 512]"),
        (["--device", "tpu"], "device must be one of"),
        (["--num-images", "17"], "--num-images must be in [1, 16]"),
        (["--seed", "-5"], "--seed must be in [0, 2**63)"),
    ],
)
def test_bad_values_exit_2_with_one_line(files, tiny_model_dir, capsys, extra, match):
    tmp_path, _, _ = files
    assert inpaint(tmp_path, tiny_model_dir, *extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("batch-inpaint inpaint: error:") and match in err
    assert err.count("\n") == 1
    assert not (tmp_path / "out.png").exists()


def test_missing_input_and_bad_output_suffix(files, tiny_model_dir, capsys):
    tmp_path, _, _ = files
    (tmp_path / "in.png").unlink()
    assert inpaint(tmp_path, tiny_model_dir) == 2
    assert "error:" in capsys.readouterr().err
    assert inpaint(tmp_path, tiny_model_dir, out="out.gif") == 2
    assert "must end in one of" in capsys.readouterr().err


def test_argparse_errors_exit_non_zero(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["inpaint", "a.png", "m.png"])  # no -o
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["inpaint", "a.png", "m.png", "-o", "o.png", "--mode", "tile"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["inpaint", "--help"])
    text = capsys.readouterr().out
    for flag in ("--prompt", "--negative-prompt", "--model", "--revision", "--backend", "--device",
                 "--dtype", "--attention", "--mode", "--steps", "--guidance-scale", "--strength",
                 "--seed", "--scheduler", "--dilate", "--feather", "--mask-threshold",
                 "--invert-mask", "--mask-resize", "--max-side"):  # fmt: skip
        assert re.search(rf"{flag}\b.*\n?\s+\S", text), flag


def test_make_tiny_model(tmp_path, capsys):
    assert main(["make-tiny-model", str(tmp_path / "tiny")]) == 0
    assert is_tiny_model_dir(tmp_path / "tiny")
    assert str(tmp_path / "tiny") in capsys.readouterr().out
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    assert main(["make-tiny-model", str(tmp_path / "busy")]) == 2


# (flag, value) -> (options class, field): the flags that existed before they were derived keep
# their names, and each sets its own field
FLAGS = {
    ("--prompt", "sky"): (GenerationParams, "prompt"),
    ("--negative-prompt", "blur"): (GenerationParams, "negative_prompt"),
    ("--steps", "20"): (GenerationParams, "num_inference_steps"),
    ("--guidance-scale", "5.5"): (GenerationParams, "guidance_scale"),
    ("--eta", "0.5"): (GenerationParams, "eta"),
    ("--strength", "0.75"): (GenerationParams, "strength"),
    ("--num-images", "3"): (GenerationParams, "num_images_per_prompt"),
    ("--seed", "42"): (GenerationParams, "seed"),
    ("--scheduler", "ddim"): (GenerationParams, "scheduler"),
    ("--mask-threshold", "0.25"): (MaskOptions, "threshold"),
    ("--invert-mask", None): (MaskOptions, "invert"),
    ("--dilate", "4"): (MaskOptions, "dilate"),
    ("--feather", "6"): (MaskOptions, "feather"),
    ("--mask-resize", None): (MaskOptions, "resize"),
    ("--mode", "crop"): (GeometryOptions, "mode"),
    ("--max-side", "512"): (GeometryOptions, "max_side"),
    ("--crop-size", "256"): (GeometryOptions, "crop_size"),
}


def test_flags_cover_every_flag_field():
    fields = {(c, f.name) for c in (GenerationParams, MaskOptions, GeometryOptions)
              for f in dataclasses.fields(c) if meta(f).flag}  # fmt: skip
    assert set(FLAGS.values()) == fields


@pytest.mark.parametrize(("flag", "value"), list(FLAGS), ids=lambda x: str(x))
def test_each_option_flag_sets_its_field(flag, value):
    cls, name = FLAGS[(flag, value)]
    argv = ["inpaint", "i.png", "m.png", "-o", "o.png", flag] + ([value] if value else [])
    args = build_parser().parse_args(argv)
    got = options_from_args(cls, args)
    want = dataclasses.replace(
        cls(), **{name: True if value is None else type(getattr(got, name))(value)}
    )
    assert got == want != cls()


def test_model_flags_default_to_the_job_configs():
    args = build_parser().parse_args(
        ["inpaint", "i.png", "m.png", "-o", "o.png", "--device", "cuda:1"]
    )
    assert args.device == "cuda:1"  # in process a GPU may be named; the job refuses it
    assert args.backend is None and args.cache_dir is None  # unset: JobConfig's defaults apply
