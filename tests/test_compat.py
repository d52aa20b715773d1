"""The ModelScope-compatible pipeline: one test per row of the card's parameter table, and more."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from batch_inpaint.compat import ImageInpaintingPipeline, OutputKeys, Tasks, pipeline
from batch_inpaint.errors import ConfigError, NotFoundError

H, W = 48, 64
FAST = {"num_inference_steps": 2, "seed": 3}


@pytest.fixture(scope="module")
def card(tiny_inpainter):
    return ImageInpaintingPipeline(tiny_inpainter)


@pytest.fixture(scope="module")
def pair():
    image = np.random.default_rng(1).integers(0, 256, (H, W, 3), dtype=np.uint8)
    mask = np.zeros((H, W), np.uint8)
    mask[10:30, 20:50] = 255
    return image, mask


@pytest.fixture()
def unet_calls(tiny_inpainter):
    """Batch sizes of the UNet's forward calls during one test (a hook on the real UNet)."""
    calls: list[int] = []
    hook = tiny_inpainter.pipe.unet.register_forward_pre_hook(
        lambda _m, args: calls.append(int(args[0].shape[0]))
    )
    yield calls
    hook.remove()


def rgb(out, key=OutputKeys.OUTPUT_IMG):
    return out[key][:, :, ::-1]


def changed(a, b) -> bool:
    return bool(np.any(a != b))


# Pipeline initialisation: device, torch_dtype, enable_attention_slicing


def test_card_example_with_files_and_cv2(tmp_path, tiny_model_dir, pair):
    image, mask = pair
    cv2.imwrite(str(tmp_path / "in.png"), image[:, :, ::-1])
    cv2.imwrite(str(tmp_path / "mask.png"), mask)
    inpainting = pipeline(Tasks.image_inpainting, model=str(tiny_model_dir), backend="tiny",
                          device="cpu", torch_dtype=torch.float32, enable_attention_slicing=True)  # fmt: skip
    out = inpainting({"image": str(tmp_path / "in.png"), "mask": str(tmp_path / "mask.png"),
                      "prompt": "background", **FAST})  # fmt: skip
    result = out[OutputKeys.OUTPUT_IMG]
    assert result.shape == (H, W, 3) and result.dtype == np.uint8
    assert OutputKeys.OUTPUT_IMGS not in out
    assert cv2.imwrite(str(tmp_path / "result.png"), result)
    back = cv2.imread(str(tmp_path / "result.png"))
    assert np.array_equal(back, result)
    outside = mask == 0
    assert np.array_equal(back[outside][:, ::-1], image[outside])  # BGR, untouched outside
    assert changed(back[~outside][:, ::-1], image[~outside])


def test_device_cpu_and_gpu(tiny_model_dir):
    assert (
        pipeline(model=str(tiny_model_dir), backend="tiny", device="cpu").inpainter.device == "cpu"
    )
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            pipeline(model=str(tiny_model_dir), backend="tiny", device="gpu")


def test_torch_dtype_fp16_on_cpu_is_refused(tiny_model_dir):
    with pytest.raises(ConfigError, match="fp16 is not supported on CPU.*use fp32"):
        pipeline(Tasks.image_inpainting, model=str(tiny_model_dir), backend="tiny", device="cpu",
                 torch_dtype=torch.float16)  # fmt: skip
    inp = pipeline(model=str(tiny_model_dir), backend="tiny", device="cpu").inpainter
    assert inp.dtype == torch.float32  # the default on CPU


def test_enable_attention_slicing(tiny_model_dir):
    on = pipeline(model=str(tiny_model_dir), backend="tiny", device="cpu")
    off = pipeline(model=str(tiny_model_dir), backend="tiny", device="cpu",
                   enable_attention_slicing=False)  # fmt: skip
    assert (on.inpainter.attention, off.inpainter.attention) == ("slicing", "sdpa")


def test_wrong_task_and_card_model_alias(tiny_model_dir):
    with pytest.raises(ConfigError, match="task must be"):
        pipeline("text-to-image", model=str(tiny_model_dir), backend="tiny", device="cpu")
    with pytest.raises(Exception, match="sd2-community/stable-diffusion-2-inpainting"):
        pipeline(model="damo/cv_stable-diffusion-v2_image-inpainting_base", device="cpu",
                 local_files_only=True)  # fmt: skip


# Call parameters: image and mask (required), prompt, num_inference_steps, guidance_scale,
# negative_prompt, num_images_per_prompt, eta


@pytest.mark.parametrize("missing", ["image", "mask"])
def test_image_and_mask_are_required(card, pair, missing):
    image, mask = pair
    values = {"image": image, "mask": mask, **FAST}
    del values[missing]
    with pytest.raises(ConfigError, match=f"missing '{missing}'"):
        card(values)


def test_image_and_mask_as_pil_arrays_and_file_uris(card, pair, tmp_path):
    image, mask = pair
    Image.fromarray(image).save(tmp_path / "in.png")
    Image.fromarray(mask).save(tmp_path / "m.png")
    ref = card({"image": image, "mask": mask, **FAST})[OutputKeys.OUTPUT_IMG]
    for img, msk in [
        (Image.fromarray(image), Image.fromarray(mask)),
        ((tmp_path / "in.png").as_uri(), (tmp_path / "m.png").as_uri()),
        (tmp_path / "in.png", np.stack([mask] * 3, axis=-1)),  # an RGB mask, like the card's
    ]:
        assert np.array_equal(card({"image": img, "mask": msk, **FAST})[OutputKeys.OUTPUT_IMG], ref)
    with pytest.raises(NotFoundError):
        card({"image": image, "mask": str(tmp_path / "nope.png"), **FAST})


def test_mask_of_another_size_is_resized_like_the_card(card, pair):
    image, mask = pair
    big = cv2.resize(mask, (W * 2, H * 2), interpolation=cv2.INTER_NEAREST)
    a = card({"image": image, "mask": mask, **FAST})[OutputKeys.OUTPUT_IMG]
    b = card({"image": image, "mask": big, **FAST})[OutputKeys.OUTPUT_IMG]
    assert np.array_equal(a, b)


def test_prompt_default_keyword_and_dict_wins(card, pair):
    image, mask = pair
    base = {"image": image, "mask": mask, **FAST}
    default = rgb(card(base))
    assert np.array_equal(default, rgb(card({**base, "prompt": "background"})))
    other = rgb(card(base, prompt="a red car"))
    assert changed(default, other)
    assert np.array_equal(rgb(card({**base, "prompt": "background"}, prompt="a red car")), default)


def test_num_inference_steps(card, pair, unet_calls):
    image, mask = pair
    card({"image": image, "mask": mask, "num_inference_steps": 3, "scheduler": "ddim"})
    assert len(unet_calls) == 3  # DDIM: one UNet call per step (PNDM makes one extra)


def test_guidance_scale(card, pair, unet_calls):
    image, mask = pair
    base = {"image": image, "mask": mask, **FAST, "scheduler": "ddim"}
    a = rgb(card(base))  # default 7.5: classifier-free guidance doubles the UNet batch
    assert unet_calls[:2] == [2, 2]
    b = rgb(card({**base, "guidance_scale": 1.0}))  # 1.0: no guidance, one row per step
    assert unet_calls[2:] == [1, 1]
    assert changed(a, b)


def test_negative_prompt(card, pair):
    image, mask = pair
    base = {"image": image, "mask": mask, **FAST}
    default = rgb(card(base))
    assert np.array_equal(default, rgb(card({**base, "negative_prompt": None})))
    assert changed(default, rgb(card({**base, "negative_prompt": "blurry, text"})))


def test_num_images_per_prompt(card, pair):
    image, mask = pair
    out = card({"image": image, "mask": mask, **FAST, "num_images_per_prompt": 3})
    imgs = out[OutputKeys.OUTPUT_IMGS]
    assert len(imgs) == 3 and np.array_equal(imgs[0], out[OutputKeys.OUTPUT_IMG])
    assert all(i.shape == (H, W, 3) for i in imgs) and changed(imgs[0], imgs[1])


def test_eta(card, pair):
    image, mask = pair
    base = {"image": image, "mask": mask, **FAST, "scheduler": "ddim"}  # eta is DDIM's noise
    assert np.array_equal(rgb(card(base)), rgb(card({**base, "eta": 0.0})))
    assert changed(rgb(card(base)), rgb(card({**base, "eta": 1.0})))


# Our extras: seed, strength, mode, mask options; bad values


def test_seed_and_extras(card, pair):
    image, mask = pair
    base = {"image": image, "mask": mask, **FAST}
    a = rgb(card(base))
    assert np.array_equal(a, rgb(card(base)))
    assert changed(a, rgb(card({**base, "seed": 4})))
    assert changed(a, rgb(card({**base, "strength": 0.6})))
    crop = rgb(card({**base, "mode": "crop"}))
    assert crop.shape == (H, W, 3)
    dilated = rgb(card({**base, "dilate": 4}))
    assert changed(dilated[mask == 0], image[mask == 0])  # the grown mask reaches past the old one
    inverted = rgb(card({**base, "invert_mask": True}))
    assert np.array_equal(inverted[mask > 0], image[mask > 0])
    empty = card({**base, "mask": np.zeros((H, W), np.uint8)})  # nothing masked: the input back
    assert np.array_equal(rgb(empty), image)


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"guidance_scale": -1}, "guidance_scale"),
        ({"mode": "tile"}, "mode"),
        ({"mask_threshold": 2}, r"mask_threshold must be in \[0, 1\], got 2"),
        ({"seed": -5}, r"seed must be in \[0, 2\*\*63\)"),
        ({"num_inference_steps": 2.5}, "num_inference_steps must be an integer"),
        ({"promt": "typo"}, "unknown input key"),
    ],
)
def test_bad_values_name_the_field(card, pair, extra, match):
    image, mask = pair
    with pytest.raises(ConfigError, match=match):
        card({"image": image, "mask": mask, **FAST, **extra})
    with pytest.raises(ConfigError, match="must be a dict"):
        card([image, mask])


def test_input_keys_come_from_the_options_fields():
    """The card's keywords for generation, the job's keys for mask and geometry: derived from the
    fields, so a new option is accepted without an edit here."""
    from batch_inpaint.compat import GENERATION_KEYS, GEOMETRY_KEYS, MASK_KEYS

    assert set(GENERATION_KEYS) == {
        "prompt", "negative_prompt", "num_inference_steps", "guidance_scale", "eta",
        "num_images_per_prompt", "strength", "seed", "scheduler",
    }  # fmt: skip
    assert set(MASK_KEYS) == {"mask_threshold", "invert_mask", "dilate", "feather", "mask_resize"}
    assert {"mode", "max_side", "crop_size", "margin"} <= set(GEOMETRY_KEYS)
    opts = ImageInpaintingPipeline.options(
        {
            "num_inference_steps": 3,
            "mask_threshold": 0.2,
            "invert_mask": True,
            "margin": 0.5,
            "crop_size": 128,
            "negative_prompt": None,
        }  # fmt: skip
    )
    assert (opts.generation.num_inference_steps, opts.mask.threshold) == (3, 0.2)
    assert opts.mask.invert and opts.mask.resize  # resized by default, as on the card
    assert (opts.geometry.margin, opts.geometry.crop_size) == (0.5, 128)
