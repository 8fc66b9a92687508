"""Classification tasks: HatefulMemes-style binary JSONL (ROC-AUC) and image folders (accuracy).

Both rank each example's ``choices`` by log-likelihood (``kind="classify"``).

Files (no downloads; paths are config keys):

- ``hateful_memes``: JSONL files in the Hateful Memes layout, one object per line:
  ``{"id": 42953, "img": "img/42953.png", "label": 0, "text": "meme text"}`` (``label`` 1 =
  hateful). ``path`` = the evaluated split (``dev_seen.jsonl``; ``test_seen.jsonl`` where its
  labels are available), ``demo_path`` = ``train.jsonl``; ``img`` is relative to ``images``
  (default: the JSONL file's folder, which holds ``img/``). Choices ``no``/``yes``; the
  question is the meme text; metric ROC-AUC of ``yes`` (``accuracy`` also applies).
- ``image_folder``: a folder per class (``root/CLASS/*.jpg|jpeg|png|webp``, the
  torchvision ``ImageFolder`` layout). A class's name is its folder name with ``_`` as
  spaces, or its entry in ``class_names`` (a JSON object folder -> name, e.g. ImageNet
  synsets to words). Choices: every class name. Demonstrations come from ``demo_root``
  (default: ``root`` itself; the engine never shows a query as its own demonstration).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from mmpretrain.errors import DataFormatError, UserError
from mmpretrain.registry import TASKS

from ..types import EvalExample, TaskSpec
from . import TaskConfig
from .common import check_nonempty, field, lazy_media, read_json, read_jsonl, require, spec

HATEFUL_TEMPLATE = "<image>is an image with: '{question}' written on it. Is it hateful? Answer: {answer}"
HATEFUL_CHOICES = ["no", "yes"]
IMAGE_FOLDER_TEMPLATE = "<image>Output: {answer}"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")


class HatefulMemesConfig(TaskConfig):
    """Hateful Memes-style binary classification (JSONL {id, img, label, text}); ROC-AUC."""

    name: Literal["hateful_memes"] = "hateful_memes"
    path: Path = Path("datasets/hateful_memes/dev_seen.jsonl")
    """JSONL of the evaluated split."""
    demo_path: Path = Path("datasets/hateful_memes/train.jsonl")
    """JSONL of the demonstration split."""
    images: Path | None = None
    """Folder the 'img' paths are relative to (None: each JSONL file's folder)."""


class ImageFolderConfig(TaskConfig):
    """Image classification from a folder per class; accuracy by ranking the class names."""

    name: Literal["image_folder"] = "image_folder"
    root: Path = Path("datasets/image_folder/val")
    """Folder holding one sub-folder of images per class."""
    demo_root: Path | None = None
    """Same layout for demonstrations (None: root, query excluded by the engine)."""
    class_names: Path | None = None
    """Optional JSON object: folder name -> class name (default: folder name, '_' -> space)."""


def load_hateful_memes(cfg: HatefulMemesConfig, path: Path, key: str) -> list[EvalExample]:
    """The memes of one JSONL file: question = meme text, label yes (hateful) / no."""
    root = cfg.images if cfg.images is not None else path.parent
    out = []
    for n, row in read_jsonl(path, cfg.name, key):
        where = f"{path}:{n}"
        label = field(row, "label", where)
        if label not in (0, 1):
            raise DataFormatError(f"{where}: label must be 0 or 1, got {label!r}")
        image = root / field(row, "img", where)
        answer = HATEFUL_CHOICES[label]
        out.append(
            EvalExample(
                str(field(row, "id", where)),
                load_segments=lazy_media(("image", image)),
                question=str(field(row, "text", where)),
                answers=[answer],
                choices=list(HATEFUL_CHOICES),
                label=answer,
                meta={"file": str(image)},
            )
        )
    return check_nonempty(out, cfg.name, "memes", path)


@TASKS.register("hateful_memes", config=HatefulMemesConfig)
def build_hateful_memes(cfg: HatefulMemesConfig) -> TaskSpec:
    """Hateful Memes binary classification."""
    return spec(
        cfg.name,
        kind="classify",
        metric="roc_auc",
        template=HATEFUL_TEMPLATE,
        cfg=cfg,
        queries=lambda: load_hateful_memes(cfg, cfg.path, "path"),
        demos=lambda: load_hateful_memes(cfg, cfg.demo_path, "demo_path"),
        max_new_tokens=1,
        description=(type(cfg).__doc__ or "").strip().splitlines()[0],
        files={
            "path": str(cfg.path),
            "demo_path": str(cfg.demo_path),
            "images": str(cfg.images or "(JSONL folder)"),
        },
    )


def _class_names(cfg: ImageFolderConfig) -> dict[str, str]:
    if cfg.class_names is None:
        return {}
    names = read_json(cfg.class_names, cfg.name, "class_names")
    if not isinstance(names, dict) or not all(isinstance(v, str) for v in names.values()):
        raise DataFormatError(
            f"task {cfg.name}: {cfg.class_names} must be a JSON object of folder -> class name"
        )
    return names


def load_image_folder(cfg: ImageFolderConfig, root: Path, key: str) -> list[EvalExample]:
    """Every image of ``root/CLASS/``, sorted by class folder then file name."""
    require(root, cfg.name, key, "directory")
    mapping = _class_names(cfg)
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(folders) < 2:
        raise UserError(f"task {cfg.name}: {root} needs at least two class folders, found {len(folders)}")
    classes = {f.name: mapping.get(f.name, f.name.replace("_", " ")) for f in folders}
    choices = sorted(set(classes.values()))
    out = []
    for folder in folders:
        for image in sorted(folder.iterdir()):
            if image.suffix.lower() not in IMAGE_EXTENSIONS or not image.is_file():
                continue
            label = classes[folder.name]
            out.append(
                EvalExample(
                    f"{folder.name}/{image.name}",
                    load_segments=lazy_media(("image", image)),
                    answers=[label],
                    choices=choices,
                    label=label,
                    meta={"file": str(image)},
                )
            )
    return check_nonempty(out, cfg.name, "images", root)


@TASKS.register("image_folder", config=ImageFolderConfig)
def build_image_folder(cfg: ImageFolderConfig) -> TaskSpec:
    """Folder-per-class image classification."""
    demo_root = cfg.demo_root or cfg.root
    return spec(
        cfg.name,
        kind="classify",
        metric="accuracy",
        template=IMAGE_FOLDER_TEMPLATE,
        cfg=cfg,
        queries=lambda: load_image_folder(cfg, cfg.root, "root"),
        demos=lambda: load_image_folder(cfg, demo_root, "demo_root" if cfg.demo_root else "root"),
        max_new_tokens=10,
        description=(type(cfg).__doc__ or "").strip().splitlines()[0],
        files={"root": str(cfg.root), "demo_root": str(demo_root), "class_names": str(cfg.class_names)},
    )
