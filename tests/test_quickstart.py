"""The README's "Quick start with your own data", followed as written on tiny local models:
build caption and text shards, train the README's recipe (`my_vlm.yaml`, paths pointed at
a tiny local Qwen2, SigLIP tower and tokenizer), export the recipe run to transformers
(Idefics3) and natively, and load it for evaluation."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmpretrain.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
LLAVA_PRETRAIN = ROOT.parent / "shared" / "fixtures" / "formats" / "llava_pretrain.json"


def _readme_config() -> str:
    text = README.read_text(encoding="utf-8")
    match = re.search(r"```yaml\n(# my_vlm\.yaml\b.*?)```", text, flags=re.DOTALL)
    assert match, "README lost its quick-start config (# my_vlm.yaml)"
    return match.group(1)


def _local_models(models: Path, corpus: list[str]) -> None:
    """A tiny Qwen2 with a BPE tokenizer beside it and a tiny SigLIP vision tower, saved the
    way downloaded models are (config.json + weights + tokenizer files)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM, SiglipVisionConfig, SiglipVisionModel

    from mmpretrain.data.tokenizer import train_bpe

    llm = Qwen2Config(
        vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
    )  # fmt: skip
    Qwen2ForCausalLM(llm).save_pretrained(models / "Qwen2.5-0.5B")
    train_bpe(corpus, vocab_size=300).save(models / "Qwen2.5-0.5B")
    vision = SiglipVisionConfig(
        image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2,
    )  # fmt: skip
    SiglipVisionModel(vision).save_pretrained(models / "siglip-base-patch16-224")


def test_quick_start_runs_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    # 1. shards from a LLaVA-Pretrain layout (the fixture, with generated pictures) and text
    shutil.copy(LLAVA_PRETRAIN, "blip_laion_cc_sbu_558k.json")
    items = json.loads(Path("blip_laion_cc_sbu_558k.json").read_text(encoding="utf-8"))
    rng = np.random.default_rng(0)
    for item in items:
        path = Path("images") / item["image"]
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((rng.random((40, 48, 3)) * 255).astype("uint8")).save(path)
    corpus = [f"a photo of {w} number {i}." for i in range(200) for w in ("a cat", "the sea", "two dogs")]
    Path("corpus.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in corpus), encoding="utf-8")
    build = ["data", "build", "--out"]
    captions = ["--format", "captions", "--input", "blip_laion_cc_sbu_558k.json", "--images-dir", "images"]
    assert main([*build, "data/llava-pretrain", *captions]) == 0
    assert (
        main([*build, "data/text", "--format", "text", "--input", "corpus.jsonl", "--text-field", "text"])
        == 0
    )

    # 2. the README's config, with its /models paths pointing at tiny local models
    models = tmp_path / "models"
    _local_models(models, corpus)
    Path("my_vlm.yaml").write_text(_readme_config().replace("/models/", f"{models}/"), encoding="utf-8")
    assert main(["config", "show", "my_vlm.yaml", "--stage", "full"]) == 0

    # 3. train (tiny: the README's sizes are for a GPU)
    small = ["stages.align.steps=2", "stages.full.steps=2", "train.batch_size=2", "train.seq_len=128",
             "train.precision=fp32", "train.save_every=2"]  # fmt: skip
    argv = ["train", "my_vlm.yaml", "--run-dir", "runs/my_vlm"]
    for override in small:
        argv += ["--set", override]
    assert main(argv) == 0
    summary = json.loads(Path("runs/my_vlm/recipe_summary.json").read_text(encoding="utf-8"))
    assert list(summary["stages"]) == ["align", "full"]
    capsys.readouterr()

    # 4./5. the recipe run is what eval and export take: its last stage
    from mmpretrain.eval.model_io import load_for_eval

    loaded = load_for_eval("runs/my_vlm")
    assert loaded.step == 2 and "runs/my_vlm/stages/01-full" in str(loaded.checkpoint)
    assert main(["export", "runs/my_vlm", "--to", "hf", "--out", "exports/my_vlm-hf"]) == 0
    assert main(["export", "runs/my_vlm", "--to", "safetensors", "--out", "exports/my_vlm"]) == 0
    out, err = capsys.readouterr()
    assert "as Idefics3ForConditionalGeneration" in out and "using its last stage, 01-full" in err
    config = json.loads(Path("exports/my_vlm-hf/config.json").read_text(encoding="utf-8"))
    assert config["architectures"] == ["Idefics3ForConditionalGeneration"]
    from mmpretrain.model.multimodal import MultimodalLM

    native = MultimodalLM.from_pretrained("exports/my_vlm")
    for name, tensor in native.state_dict().items():
        assert torch.equal(tensor, loaded.model.state_dict()[name]), name
