"""The demo's grid descriptions: one word per place, lined up with one image token per place."""

from __future__ import annotations

from pathlib import Path

from mmpretrain.config import load_yaml_with_bases, resolve_config_path
from mmpretrain.data.demo_scenes import GRID, Scene, Shape, png_bytes, render_scene
from mmpretrain.data.shard_io import ShardWriter
from mmpretrain.data.types import Sample, Segment
from mmpretrain.demo_sources import EMPTY_PLACE, GRID_ORDER, grid_samples, grid_text


def _shapes() -> list[dict[str, str]]:
    scene = Scene([Shape("star", "red", "small", 0, 2), Shape("circle", "blue", "large", 2, 0)])
    return scene.to_meta()


def test_grid_text_names_every_place_in_reading_order() -> None:
    text = grid_text(_shapes())
    assert text == (
        "Kinds: no no star no no no circle no no. Colours: no no red no no no blue no no."
    )
    kinds, colours = (part.split(": ")[1].rstrip(".").split() for part in text.split(". ", 1))
    assert len(colours) == len(kinds) == len(GRID_ORDER) == GRID * GRID
    assert GRID_ORDER[:3] == ("top left", "top", "top right") and GRID_ORDER[-1] == "bottom right"
    assert kinds.count(EMPTY_PLACE) == 7


def test_grid_samples_describe_each_training_picture(tmp_path: Path) -> None:
    shapes = _shapes()
    scene = Scene([Shape(s["kind"], s["colour"], s["size"], 0, 0) for s in shapes])
    image = Segment("image", data=png_bytes(render_scene(scene)), meta={"shapes": shapes}, member="0.png")
    with ShardWriter(tmp_path, max_samples=10) as writer:
        writer.write(Sample(key="train/0", source="demo", segments=[image, Segment("text", text="x")]))
        writer.write(Sample(key="train/1", source="demo", segments=[Segment("text", text="no picture")]))
    samples = list(grid_samples(tmp_path))
    assert len(samples) == 1
    sample = samples[0]
    assert [seg.kind for seg in sample.segments] == ["image", "text"]
    assert sample.segments[0].data == image.data
    assert sample.segments[1].text == grid_text(shapes)
    assert sample.meta == {"kind": "grid", "from": "train/0"}


def test_demo_recipe_gives_one_image_token_per_place() -> None:
    """The grid words line up with the image tokens only if the tower's patch grid,
    after pixel shuffle, is the scene's 3x3 grid."""
    recipe = load_yaml_with_bases(resolve_config_path("recipes/demo"))
    vision, shuffle = recipe["model"]["encoders"]["vision"], recipe["model"]["connectors"]["image"]
    assert shuffle["name"] == "pixel_shuffle_mlp"
    cell = vision["patch_size"] * shuffle["scale_factor"]
    assert vision["image_size"] == cell * GRID
    assert {"name": "grid"} in [{"name": source["name"]} for source in recipe["data"]["shards"]["mix"]]
    assert recipe["stages"]["full"]["mix"]["grid"] > 0 and recipe["stages"]["align"]["mix"]["grid"] > 0
