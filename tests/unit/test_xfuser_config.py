"""xFuser service: families, layout rules and rejection messages, config and request schemas (no GPU)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from deployments.xfuser.families import FAMILIES, Layout, family_of, resolve_layout, size_multiple, valid_layouts
from deployments.xfuser.service import XFuserConfig, XFuserInput, XFuserOutput

GPU = {"use_gpu": True}


def config(**kw: object) -> XFuserConfig:
    return XFuserConfig.model_validate({"resources": GPU, **kw})


def layout(pp: int = 1, u: int = 1, r: int = 1, cfg: bool = False) -> Layout:
    return Layout(pipefusion_parallel_degree=pp, ulysses_degree=u, ring_degree=r, use_cfg_parallel=cfg)


def test_family_from_released_hub_ids() -> None:
    assert family_of("stabilityai/stable-diffusion-3-medium-diffusers") == "sd3"
    assert family_of("black-forest-labs/FLUX.1-dev") == "flux"
    assert family_of("black-forest-labs/FLUX.1-schnell") == "flux"
    assert family_of("PixArt-alpha/PixArt-XL-2-1024-MS") == "pixart_alpha"
    assert family_of("PixArt-alpha/PixArt-Sigma-XL-2-2K-MS") == "pixart_sigma"
    assert family_of("Tencent-Hunyuan/HunyuanDiT-v1.2-Diffusers") == "hunyuandit"
    assert family_of("stabilityai/stable-diffusion-xl-base-1.0") == "sdxl"
    assert family_of("some/other-model") is None


def test_default_config_is_sd3_medium_on_two_gpus_with_cfg_parallel() -> None:
    cfg = config()
    assert cfg.family == "sd3" and cfg.world_size == 2
    assert cfg.layout() == layout(cfg=True)  # automatic: CFG parallel first (exact, no comms per step)
    spec = cfg.engine_spec()
    assert spec.layout.use_cfg_parallel and spec.backend == "xfuser" and spec.family == "sd3"


@pytest.mark.parametrize(("family", "world", "expected"), [
    ("flux", 2, layout(u=2)),                # no CFG to split: Ulysses over the 24 heads
    ("flux", 4, layout(u=4)),
    ("sd3", 4, layout(u=2, cfg=True)),
    ("pixart_sigma", 4, layout(u=2, cfg=True)),
    ("hunyuandit", 2, layout(cfg=True)),
    ("pixart_alpha", 2, layout(cfg=True)),
    ("sdxl", 2, layout(cfg=True)),
])
def test_automatic_layouts(family: str, world: int, expected: Layout) -> None:
    assert resolve_layout(FAMILIES[family], Layout(), world, FAMILIES[family].heads) == expected


def test_degrees_must_multiply_to_world_size_and_the_message_lists_what_works() -> None:
    with pytest.raises(ValidationError) as err:
        config(model={"id": "black-forest-labs/FLUX.1-dev"}, world_size=4,
               parallel={"pipefusion_parallel_degree": 2, "ulysses_degree": 1})
    text = str(err.value)
    assert "uses 2 GPU(s) but the service has world_size=4" in text
    assert "layouts that work: " in text and "pipefusion=1 ulysses=4 ring=1 cfg=off" in text
    assert "pipefusion=2 ulysses=2 ring=1 cfg=off" in text


def test_layouts_the_model_cannot_use_are_rejected_with_the_reason() -> None:
    with pytest.raises(ValidationError, match="flux has no classifier-free guidance to split"):
        config(model={"id": "black-forest-labs/FLUX.1-dev"}, parallel={"use_cfg_parallel": True})
    with pytest.raises(ValidationError, match="sdxl does not support PipeFusion"):
        config(model={"id": "stabilityai/stable-diffusion-xl-base-1.0"}, parallel={"pipefusion_parallel_degree": 2})
    with pytest.raises(ValidationError, match=r"hunyuandit's PipeFusion degree must be one of 2, 4 .*long skip"):
        config(model={"id": "Tencent-Hunyuan/HunyuanDiT-v1.2-Diffusers"}, world_size=8,
               parallel={"pipefusion_parallel_degree": 8})
    with pytest.raises(ValidationError, match="sdxl cannot be split over 4 GPUs"):
        config(model={"id": "stabilityai/stable-diffusion-xl-base-1.0"}, world_size=4)
    with pytest.raises(ValidationError, match=r"ulysses_degree=5 must divide the model.s 24 attention heads"):
        config(world_size=5, parallel={"ulysses_degree": 5})
    with pytest.raises(ValidationError, match=r"ulysses_degree=3 must divide the model's 4 attention heads"):
        config(model={"preset": "tiny"}, family="flux", world_size=3, parallel={"ulysses_degree": 3})
    # the same degrees on a model with the right number of heads are fine, at sizes that split in 3
    with pytest.raises(ValidationError, match=r"default size 1024x1024 does not fit .* multiple of 48"):
        config(model={"preset": "full"}, family="flux", world_size=3, parallel={"ulysses_degree": 3})
    sized = {"default_height": 960, "default_width": 960, "warmup": {"height": 960, "width": 960}}
    assert config(model={"preset": "full"}, family="flux", world_size=3, parallel={"ulysses_degree": 3},
                  **sized).layout() == layout(u=3)


def test_the_seed_demos_layouts_are_accepted() -> None:
    # fal's demo default (SD3 + PipeFusion) and HunyuanDiT's sequence-parallel and PipeFusion layouts
    assert config(parallel={"pipefusion_parallel_degree": 2}).layout() == layout(pp=2)
    assert config(world_size=4, parallel={"pipefusion_parallel_degree": 2, "use_cfg_parallel": True}
                  ).layout() == layout(pp=2, cfg=True)
    hunyuan = {"id": "Tencent-Hunyuan/HunyuanDiT-v1.2-Diffusers"}
    for degrees, expected in (({"ulysses_degree": 2}, layout(u=2)), ({"ring_degree": 2}, layout(r=2)),
                              ({"pipefusion_parallel_degree": 2}, layout(pp=2))):
        assert config(model=hunyuan, parallel=degrees).layout() == expected
    assert config(model=hunyuan, world_size=4, parallel={"pipefusion_parallel_degree": 4}).layout() == layout(pp=4)


def test_every_listed_layout_is_accepted() -> None:
    for name, fam in FAMILIES.items():
        for world in (2, 4):
            for lay in valid_layouts(fam, world, fam.heads):
                assert lay.gpus == world
                assert resolve_layout(fam, lay, world, fam.heads) == lay, (name, lay)
    assert [lay.describe() for lay in valid_layouts(FAMILIES["sdxl"], 2, 0)] == ["pipefusion=1 ulysses=1 ring=1 cfg=on"]


def test_config_needs_a_known_family_and_gpus_and_16_bit_for_xfuser() -> None:
    with pytest.raises(ValidationError, match="cannot tell the model family of preset:tiny; set `family`"):
        config(model={"preset": "tiny"})
    with pytest.raises(ValidationError, match="xfuser needs bfloat16 or float16"):
        config(dtype="float32")
    with pytest.raises(ValidationError, match="backend xfuser runs on GPUs only"):
        XFuserConfig.model_validate({"resources": {"use_gpu": False}})
    with pytest.raises(ValidationError, match="backend `diffusers` runs no model parallelism"):
        config(backend="diffusers", parallel={"ulysses_degree": 2})
    cpu = XFuserConfig.model_validate({"model": {"preset": "tiny"}, "family": "sd3", "backend": "diffusers",
                                       "world_size": 1, "dtype": "float32", "resources": {"use_gpu": False}})
    assert cpu.layout().gpus == 1 and cpu.engine_spec().backend == "diffusers"
    with pytest.raises(ValidationError, match="family"):
        config(family="wan")


def test_sizes_must_split_evenly_over_the_layout() -> None:
    flux = FAMILIES["flux"]
    assert size_multiple(flux, layout(u=4)) == (64, 16)
    assert size_multiple(flux, layout(pp=2, u=2)) == (64, 16)
    assert size_multiple(FAMILIES["sdxl"], layout(cfg=True)) == (8, 8)
    with pytest.raises(ValidationError, match=r"warmup size 1000x1000 does not fit .*multiple of 64"):
        config(model={"id": "black-forest-labs/FLUX.1-dev"}, world_size=4, warmup={"height": 1000, "width": 1000})


def test_request_schema() -> None:
    req = XFuserInput(prompt="a cat")
    assert (req.num_inference_steps, req.seed, req.guidance_scale, req.height, req.width) == (None,) * 5
    assert req.output_format == "jpeg" and req.negative_prompt == ""
    for bad in ({"prompt": ""}, {"prompt": "x", "num_inference_steps": 0}, {"prompt": "x", "height": 4096},
                {"prompt": "x", "guidance_scale": -1}, {"prompt": "x", "output_format": "gif"}):
        with pytest.raises(ValidationError):
            XFuserInput.model_validate(bad)
    fields = set(XFuserOutput.model_fields)
    assert {"images", "seed", "prompt", "timings", "parallelism"} <= fields


def test_request_checks_name_the_field() -> None:
    from deployments.xfuser.service import XFuserService
    from serve_app.errors import FieldError

    def service(**kw: object) -> XFuserService:
        svc = XFuserService.__new__(XFuserService)  # the checks only, no ranks
        svc.config = config(**kw)
        svc.family = FAMILIES[svc.config.fam]
        svc.parallel = svc.config.layout()
        return svc

    flux = service(model={"id": "black-forest-labs/FLUX.1-dev"}, world_size=4)
    assert flux._check(XFuserInput(prompt="x")) == (1024, 1024)
    assert flux._check(XFuserInput(prompt="x", height=576, width=1008)) == (576, 1008)
    for kwargs, field, text in (({"height": 1000}, "height", "multiple of 64"),
                                ({"width": 1000}, "width", "multiple of 16"),
                                ({"negative_prompt": "blurry"}, "negative_prompt", "no classifier-free guidance")):
        try:
            flux._check(XFuserInput(prompt="x", **kwargs))  # type: ignore[arg-type]
        except FieldError as e:
            assert e.field == field and text in e.message
        else:
            raise AssertionError(f"{kwargs} was accepted")
    sd3 = service()
    assert sd3._check(XFuserInput(prompt="x", negative_prompt="blurry", height=1008)) == (1008, 1024)
