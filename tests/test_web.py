"""The web page's handlers without a browser: uploads, masks, parameters, runs, manifests and
each event of the page as a plain function (the page's memory: test_web_memory.py)."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from batch_inpaint.config import JobConfig
from batch_inpaint.errors import ConfigError, DecodeError, MaskError
from batch_inpaint.image.masks import mask_from_image
from batch_inpaint.manifest.schema import MANIFEST_SCHEMA
from batch_inpaint.models import load_inpainter
from batch_inpaint.params import GeometryOptions
from batch_inpaint.vocab import ExitCode
from batch_inpaint.web import handlers as h
from batch_inpaint.web import inputs

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def png_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def settings(tmp_path) -> inputs.ServeSettings:
    return inputs.ServeSettings(max_upload_mb=1, max_pixels=1_000_000, manifest_root=tmp_path / "m")


@pytest.fixture(scope="module")
def opencv():
    return load_inpainter("opencv")


@pytest.fixture
def picture() -> inputs.Picture:
    rng = np.random.default_rng(0)
    return inputs.Picture(rgb=rng.integers(0, 256, (64, 96, 3), dtype=np.uint8), name="noise")


def options(*fields):
    """The page's settings column, in its order (handlers.Fields), as options and a seed."""
    return h.make_options(h.Fields(*fields))


def box_mask(shape=(64, 96), box=(20, 40, 16, 32)) -> np.ndarray:
    m = np.zeros(shape, bool)
    y0, y1, x0, x1 = box
    m[y0:y1, x0:x1] = True
    return m


# -- uploads ------------------------------------------------------------------------------------
def test_upload_decodes_an_image(tmp_path, settings):
    a = np.full((30, 40, 3), 7, np.uint8)
    p = tmp_path / "My photo (1).png"
    p.write_bytes(png_bytes(a))
    pic = inputs.load_upload(p, settings, name=p.name)
    assert pic.rgb.shape == (30, 40, 3) and (pic.rgb == 7).all()
    assert pic.name == "My-photo-1" and pic.source_uri is None


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"hello, I am text", "not an image"),
        (b"", "empty"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "image"),  # a PNG signature and nothing usable
    ],
)
def test_bad_upload_says_why_and_what_is_accepted(tmp_path, settings, content, expected):
    p = tmp_path / "bad.png"
    p.write_bytes(content)
    with pytest.raises(DecodeError) as err:
        inputs.load_upload(p, settings, name="bad.png")
    msg = str(err.value)
    assert "bad.png" in msg and expected in msg
    assert "PNG, JPEG, WebP, TIFF or BMP, up to 1 MB and 1 megapixels" in msg


def test_upload_over_the_size_limit_is_refused_before_reading(tmp_path, settings):
    p = tmp_path / "big.bin"
    p.write_bytes(b"\0" * (settings.max_upload_bytes + 1))
    with pytest.raises(DecodeError, match=r"big.bin is 1.0 MB; this page accepts .* up to 1 MB"):
        inputs.load_upload(p, settings)


def test_decompression_bomb_is_refused(tmp_path, settings):
    # 2000x2000 of one colour: a few KB of PNG, 4 megapixels once decoded (limit: 1)
    p = tmp_path / "bomb.png"
    Image.new("L", (2000, 2000)).save(p, "PNG")
    assert p.stat().st_size < 50_000
    with pytest.raises(DecodeError, match="decompression bomb guard"):
        inputs.load_upload(p, settings)


def test_a_mistake_is_a_message_and_one_log_line_without_traceback(caplog):
    pytest.importorskip("gradio")
    from batch_inpaint.web.events import ERROR_MARK, error_message

    exc = DecodeError("my_photo*.png can't be used: not an image")
    with caplog.at_level("WARNING", logger="batch_inpaint.web"):
        shown = error_message("upload", exc)
    assert shown.startswith(ERROR_MARK) and "**Not a usable image:**" in shown
    assert r"my\_photo\*.png can't be used: not an image" in shown  # Markdown shows it as is
    assert [r.getMessage() for r in caplog.records] == [
        "web upload: my_photo*.png can't be used: not an image (decode)"
    ]
    assert all(r.exc_info is None for r in caplog.records)


# -- samples ----------------------------------------------------------------------------------
def test_samples_are_picked_by_name_never_by_path(settings):
    samples = inputs.find_samples(EXAMPLES / "images")
    assert "coffee" in samples and samples["coffee"].mask is not None
    pic = inputs.load_sample("coffee", samples, settings)
    assert pic.rgb.shape == (400, 600, 3) and pic.source_uri == str(samples["coffee"].image)
    for name in ("../images/coffee", str(EXAMPLES / "images" / "coffee.png"), "nope"):
        with pytest.raises(ConfigError, match="no sample called"):
            inputs.load_sample(name, samples, settings)


def test_no_samples_folder_means_no_samples(tmp_path):
    assert inputs.find_samples(tmp_path / "missing") == {}


# -- masks ------------------------------------------------------------------------------------
@pytest.mark.parametrize("as_file", [True, False], ids=["png-files", "arrays"])
def test_painted_layers_become_the_mask(tmp_path, as_file):
    layer = np.zeros((64, 96, 4), np.uint8)
    layer[10:20, 10:30] = (255, 0, 255, 153)  # the brush: magenta at 0.6
    layer[40:50, 50:60] = (255, 0, 255, 20)  # a faint antialiased fringe: not painted
    layers = [layer, np.zeros((64, 96, 3), np.uint8)]
    if as_file:  # how the editor hands them over
        for i, a in enumerate(layers):
            (tmp_path / f"layer{i}.png").write_bytes(png_bytes(a))
        layers = [str(tmp_path / "layer0.png"), tmp_path / "layer1.png"]
    mask = inputs.mask_from_layers(layers, (96, 64))
    assert mask.dtype == bool and mask.sum() == 200 and mask[10:20, 10:30].all()


def test_layers_painted_on_a_smaller_preview_are_scaled_to_the_image():
    layer = np.zeros((32, 48, 4), np.uint8)
    layer[5:10, 5:15, 3] = 255
    mask = inputs.mask_from_layers([layer], (96, 64))
    assert mask.shape == (64, 96) and mask[10:20, 10:30].all() and mask.sum() == 200


def test_uploaded_mask_is_resized_to_the_picture(tmp_path, settings, picture):
    m = np.zeros((32, 48), np.uint8)
    m[8:16, 8:24] = 255
    p = tmp_path / "mask.png"
    p.write_bytes(png_bytes(m))
    mask = inputs.load_mask_upload(p, picture, settings)
    assert mask.shape == (64, 96) and mask[16:32, 16:48].all() and mask.sum() == 16 * 32
    p.write_bytes(b"nope")
    with pytest.raises(DecodeError, match="the mask can't be used: not an image"):
        inputs.load_mask_upload(p, picture, settings)


@pytest.mark.parametrize(
    "size, max_bytes, expected",
    [
        ((600, 400), 20 * 2**20, (600, 400)),  # small: shown as it is
        ((6000, 4000), 2**62, (2048, 1365)),  # large: 2048 on the long side
        ((1400, 1000), 2**20, (567, 405)),  # a 1 MB upload limit: the RGBA PNG must fit in it
    ],
)
def test_editor_preview_fits_the_side_and_upload_limits(size, max_bytes, expected):
    w, hgt = inputs.preview_size(*size, max_side=2048, max_bytes=max_bytes)
    assert (w, hgt) == expected and w * hgt * 4.1 <= max_bytes
    small = inputs.preview(np.zeros((size[1], size[0], 3), np.uint8), 2048, max_bytes)
    assert small.shape == (hgt, w, 3)


def test_mask_png_round_trips_through_the_mask_reader():
    mask = box_mask()
    assert (mask_from_image(inputs.mask_png(mask), (96, 64)) == mask).all()


# -- parameters -------------------------------------------------------------------------------
def test_fixed_seed_is_used_and_random_seed_is_drawn():
    opts, seed = options("a sofa", "", 20, 7.5, 1234, False, "crop", 4, 2)
    assert seed == 1234 and opts.generation.seed == 1234
    assert opts.generation.negative_prompt is None and opts.geometry.mode == "crop"
    assert (opts.mask.dilate, opts.mask.feather) == (4, 2)
    seeds = {options("x", None, 20, 7.5, 1234, True, "full", 0, 0)[1] for _ in range(5)}
    assert len(seeds) > 1 and all(0 <= s < h.SEED_LIMIT for s in seeds)


@pytest.mark.parametrize(
    "args, field",
    [
        (("p", None, 0, 7.5, 1, False, "full", 0, 0), "num_inference_steps"),
        (("p", None, 20, 7.5, -3, False, "full", 0, 0), "seed"),
        (("p", None, 20, 7.5, 1.5, False, "full", 0, 0), "seed"),
        (("p", None, 20, 7.5, 1, False, "tiles", 0, 0), "mode"),
        (("p", None, 20, 7.5, 1, False, "full", 999, 0), "dilate"),
    ],
)
def test_bad_settings_name_the_field(args, field):
    with pytest.raises(ConfigError, match=field):
        options(*args)


def test_shown_params_paste_into_a_job_config_and_a_manifest_row():
    opts, seed = options("a wall", "people", 25, 6.0, 77, False, "crop", 3, 5)
    params = h.reproduction_params(opts, seed, {"backend": "diffusers", "model": "m/x"})
    import yaml

    job = yaml.safe_load(h.job_yaml(params))
    cfg = JobConfig.from_dict(job)  # every key is a JobConfig field with a valid value
    g, m, geo = (o := cfg.inpaint_options()).generation, o.mask, o.geometry
    assert (g.prompt, g.negative_prompt, g.num_inference_steps, g.guidance_scale) == (
        "a wall",
        "people",
        25,
        6.0,
    )
    assert (geo.mode, m.dilate, m.feather, cfg.model) == ("crop", 3, 5, "m/x")
    row = json.loads(h.row_json(params))
    assert row["seed"] == 77 and set(row) <= set(MANIFEST_SCHEMA.names)
    tiny = h.reproduction_params(opts, seed, {"backend": "tiny", "model": "batch-inpaint/tiny"})
    assert "model" not in tiny["job_config"]  # rebuilt from code, not loadable by id


def test_controls_a_backend_ignores_are_named_and_left_out_of_the_exports(opencv):
    from batch_inpaint.models import model_spec

    assert h.ignored_controls(opencv.spec.ignores) == {
        "prompt", "negative_prompt", "steps", "guidance", "seed", "random_seed"
    }  # fmt: skip
    assert h.ignored_controls(model_spec("tiny").ignores) == set()
    opts, seed = options("a wall", "people", 25, 6.0, 77, False, "crop", 3, 5)
    params = h.reproduction_params(opts, seed, opencv.describe(), opencv.spec.ignores)
    assert params["manifest_row"] == {}
    assert set(params["job_config"]) == {
        "mode", "max_side", "mask_threshold", "invert_mask", "dilate", "feather", "mask_resize",
        "backend",
    }  # fmt: skip
    lama_like = ("prompt", "num_inference_steps")  # a spec ignoring only some fields
    params = h.reproduction_params(opts, seed, {"backend": "diffusers"}, lama_like)
    assert "steps" not in params["job_config"] and "guidance_scale" in params["job_config"]
    assert set(params["manifest_row"]) == {"negative_prompt", "guidance_scale", "strength", "seed"}


# -- running ----------------------------------------------------------------------------------
def test_run_changes_only_the_masked_pixels(picture, opencv):
    mask = box_mask()
    opts, seed = options("background", None, 5, 7.5, 5, False, "full", 0, 0)
    res = h.run_inpaint(picture, mask, opencv, opts, seed)
    assert res.status == "ok" and res.seed == 5 and res.image.shape == picture.rgb.shape
    assert (res.image[~mask] == picture.rgb[~mask]).all()
    assert (res.image[mask] != picture.rgb[mask]).any(axis=-1).mean() > 0.9
    decoded = np.asarray(Image.open(io.BytesIO(res.png)))
    assert (decoded == res.image).all()
    # opencv ignores the prompt, steps, guidance and seed: none of them is exported
    assert res.params["manifest_row"] == {} and res.params["job_config"]["backend"] == "opencv"
    assert not {"prompt", "steps", "guidance_scale", "seed"} & set(res.params["job_config"])
    JobConfig.from_dict(res.params["job_config"])  # still a config a job takes


def test_run_with_nothing_painted_says_so(picture, opencv):
    opts, seed = options("background", None, 5, 7.5, 5, False, "full", 0, 0)
    with pytest.raises(MaskError, match="paint over what should go"):
        h.run_inpaint(picture, np.zeros((64, 96), bool), opencv, opts, seed)


@pytest.mark.slow
def test_same_seed_same_result_with_the_tiny_model(picture, tiny_inpainter):
    mask = box_mask()
    opts, seed = options("background", None, 2, 7.5, 42, False, "full", 0, 0)
    opts = dataclasses.replace(opts, geometry=GeometryOptions(mode="crop", crop_size=64))  # fast
    a = h.run_inpaint(picture, mask, tiny_inpainter, opts, seed)
    b = h.run_inpaint(picture, mask, tiny_inpainter, opts, seed)
    assert a.png == b.png and a.params == b.params
    assert (a.image[~mask] == picture.rgb[~mask]).all()


# -- command line -----------------------------------------------------------------------------
def test_serve_command_defaults_are_safe():
    from batch_inpaint.cli import build_parser

    args = build_parser().parse_args(["serve"])
    assert args.host == "127.0.0.1" and args.manifest_root == "manifests"
    defaults = (
        inputs.DEFAULT_MAX_UPLOAD_MB,
        inputs.DEFAULT_MAX_PIXELS,
        inputs.DEFAULT_IDLE_MINUTES,
    )
    assert (args.max_upload_mb, args.max_pixels, args.idle_minutes) == defaults
    args = build_parser().parse_args(["serve", "--backend", "opencv", "--port", "8000"])
    assert (args.backend, args.port) == ("opencv", 8000)


def test_serve_refuses_a_bad_port():
    from batch_inpaint.cli import main

    assert main(["serve", "--backend", "opencv", "--port", "70000"]) == ExitCode.CONFIG


# -- the page's events as plain functions ------------------------------------------------------
def test_upload_paint_run_and_add_without_gradio(tmp_path, settings, opencv):
    image = tmp_path / "photo.png"
    image.write_bytes(png_bytes(np.full((64, 96, 3), 90, np.uint8)))
    state, editor = h.upload_image(str(image), settings)
    assert state.picture.name == "photo" and editor["background"].shape == (64, 96, 3)
    mask_file = tmp_path / "mask.png"
    mask_file.write_bytes(png_bytes((box_mask() * 255).astype(np.uint8)))
    state, editor = h.upload_mask(str(mask_file), state, settings)
    assert (editor["background"] != 90).any()  # the uploaded mask, tinted on the preview
    layer = np.zeros((64, 96, 4), np.uint8)
    layer[0:8, 0:8, 3] = 255
    (tmp_path / "layer.png").write_bytes(png_bytes(layer))
    value = {"background": str(image), "layers": [str(tmp_path / "layer.png")]}
    mask = h.painted_mask(state, value, settings)
    assert mask.sum() == box_mask().sum() + 64  # painted and uploaded, together

    fields = h.Fields(steps=5, seed=3, random_seed=False)
    result, state = h.run(state, value, fields, opencv, settings)
    assert result.seed == 3 and state.last_seed == 3 and (result.image[~mask] == 90).all()
    message, row = h.add(state, value, fields, "made here", opencv.describe(), settings)
    assert message.startswith("Added row") and json.loads(row)["seed"] == 3
    again, same = h.add(state, value, fields, "made here", opencv.describe(), settings)
    where = settings.manifest_root.resolve() / "made-here" / "manifest.parquet"
    assert again.startswith(
        f"Already in `{where}` as row"
    )  # absolute: the server's cwd is not ours
    assert "nothing added" in again and json.loads(same)["id"] == json.loads(row)["id"]
    ignoring, row = h.add(state, value, fields, "made here", opencv.describe(), settings,
                          opencv.spec.ignores)  # fmt: skip
    assert ignoring.startswith("Added row") and "seed" not in json.loads(row)
