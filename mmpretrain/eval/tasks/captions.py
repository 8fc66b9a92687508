"""Image captioning tasks on the Karpathy splits: COCO and Flickr30k (metric CIDEr-D).

Files (no downloads; paths are config keys):

- ``coco_captions``: ``karpathy_json`` = Karpathy's ``dataset_coco.json`` (from
  ``caption_datasets.zip``): ``images`` with ``filepath`` (``train2014``/``val2014``),
  ``filename``, ``split`` (``train``/``restval``/``val``/``test``), ``sentences`` (``raw``)
  and ``cocoid``; ``images`` = the COCO root holding ``train2014/`` and ``val2014/``
  (an image is ``images/filepath/filename``). Queries: split ``test`` (5,000 images);
  demonstrations: ``train`` + ``restval``.
- ``flickr30k``: ``karpathy_json`` = ``dataset_flickr30k.json`` (same layout, no
  ``filepath``); ``images`` = the ``flickr30k-images/`` folder (``images/filename``).
  Queries: ``test`` (1,000 images); demonstrations: ``train``.

References are every ``raw`` sentence of the image; a demonstration shows its first one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from mmpretrain.errors import DataFormatError
from mmpretrain.registry import TASKS

from ..types import EvalExample, TaskSpec
from . import TaskConfig
from .common import check_nonempty, field, lazy_media, read_json, spec

CAPTION_TEMPLATE = "<image>Output: {answer}"


class CocoCaptionsConfig(TaskConfig):
    """COCO captions, Karpathy test split (dataset_coco.json + COCO images); CIDEr-D."""

    name: Literal["coco_captions"] = "coco_captions"
    karpathy_json: Path = Path("datasets/coco/dataset_coco.json")
    """Karpathy's dataset_coco.json."""
    images: Path = Path("datasets/coco")
    """COCO root holding train2014/ and val2014/ (each image: images/filepath/filename)."""
    query_split: str = "test"
    """Karpathy split evaluated."""
    demo_splits: tuple[str, ...] = ("train", "restval")
    """Karpathy splits demonstrations are drawn from."""


class Flickr30kConfig(TaskConfig):
    """Flickr30k captions, Karpathy test split (dataset_flickr30k.json + images); CIDEr-D."""

    name: Literal["flickr30k"] = "flickr30k"
    karpathy_json: Path = Path("datasets/flickr30k/dataset_flickr30k.json")
    """Karpathy's dataset_flickr30k.json."""
    images: Path = Path("datasets/flickr30k/flickr30k-images")
    """Folder of the Flickr30k images (each image: images/filename)."""
    query_split: str = "test"
    """Karpathy split evaluated."""
    demo_splits: tuple[str, ...] = ("train",)
    """Karpathy splits demonstrations are drawn from."""


def load_karpathy(cfg: CocoCaptionsConfig | Flickr30kConfig, splits: list[str]) -> list[EvalExample]:
    """The images of ``splits`` in a Karpathy split file, as captioning examples (file order)."""
    data = read_json(cfg.karpathy_json, cfg.name, "karpathy_json")
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise DataFormatError(
            f"task {cfg.name}: {cfg.karpathy_json} has no 'images' list (not a Karpathy split file)"
        )
    out = []
    for i, item in enumerate(images):
        where = f"{cfg.karpathy_json}: images[{i}]"
        if field(item, "split", where) not in splits:
            continue
        sentences = [s["raw"].strip() for s in field(item, "sentences", where)]
        filename = field(item, "filename", where)
        path = cfg.images / item.get("filepath", "") / filename
        image_id = item.get("cocoid", item.get("imgid", filename))
        out.append(
            EvalExample(
                str(image_id),
                load_segments=lazy_media(("image", path)),
                answers=sentences,
                meta={"file": str(path), "split": item["split"]},
            )
        )
    return check_nonempty(out, cfg.name, f"images of split(s) {', '.join(splits)}", cfg.karpathy_json)


def _build(cfg: CocoCaptionsConfig | Flickr30kConfig) -> TaskSpec:
    return spec(
        cfg.name,
        kind="generate",
        metric="cider",
        template=CAPTION_TEMPLATE,
        cfg=cfg,
        queries=lambda: load_karpathy(cfg, [cfg.query_split]),
        demos=lambda: load_karpathy(cfg, list(cfg.demo_splits)),
        max_new_tokens=20,
        description=(cfg.__doc__ or "").strip().splitlines()[0],
        files={"karpathy_json": str(cfg.karpathy_json), "images": str(cfg.images)},
    )


@TASKS.register("coco_captions", config=CocoCaptionsConfig)
def build_coco_captions(cfg: CocoCaptionsConfig) -> TaskSpec:
    """COCO Karpathy test captioning."""
    return _build(cfg)


@TASKS.register("flickr30k", config=Flickr30kConfig)
def build_flickr30k(cfg: Flickr30kConfig) -> TaskSpec:
    """Flickr30k Karpathy test captioning."""
    return _build(cfg)
