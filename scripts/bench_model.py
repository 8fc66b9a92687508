"""Model training-throughput benchmark: a tiny VLM trained on packed batches against the
same model on dynamically padded batches, where a step's time goes (encoders vs LLM), and
our model against nanoVLM at nanoVLM's own tiny size.

Part 1, packing. Demo shards (``build_demo_dataset``, ``--samples`` samples, into a temp
dir), the BPE tokenizer the loop would train on their text, and the tiny VLM of
``configs/models/vlm_tiny.yaml`` (SigLIP-style tower, 32 px, 16 tokens per image, mlp
connector, 2-layer Llama; change sizes with ``--set model.llm.hidden_size=128`` etc.):

- packed: ``MediaBatchStream`` batches, 8 rows x L=1024, document-isolated attention;
- dynamic padding: the same document stream (same reader, seed and skips), one document
  per row, 8 per batch in stream order, padded to the longest of the batch
  (``layout_batch`` of single-document packs with seq_len = longest document).

Each method trains its own copy of the model (same initial weights, the loop's AdamW from
``build_optimizer``) with the loop's step: ``model(batch)``, ``token_loss_sum`` divided by
the batch's label tokens, backward, grad clipping, optimizer step. The two alternate in
rounds (who goes first alternates): one packed step, then dynamic steps until they have
trained at least as many real tokens, so both see the same amount of data in the same
stretch of wall-clock time. Real tokens are non-pad positions (``doc_ids >= 0``: text and
media placeholders); tokens/s = real tokens of the timed steps / their summed step time.
Batch construction is not timed. ``packed_speedup`` = packed / dynamic tokens/s.

Time split: module hooks time the encoders (+ connectors) inside every timed step. Forward:
from the first encoder's forward pre-hook to the connector's forward hook. Backward: from
the moment the gradient of the connector's output arrives (a tensor hook; the LLM backward
is complete then) to the end of ``backward()``. ``encoder_share`` = both / step time;
``optimizer_share`` = clip + AdamW step; ``llm_share`` = the rest (embedding, scatter of
media features, mask, LLM forward and backward, loss). The LLM's input-embedding gradient
may be accumulated after the connector's gradient arrives and is then counted as encoder
time (an upper bound on the encoder share; it is one index_add).

Part 2, nanoVLM at its tiny size (13.5M parameters): ViT 4 blocks, hidden 192, 3 heads,
MLP 768, patch 16, 256 px; pixel shuffle x2 to 64 tokens and a bias-free linear; LM 4
blocks, hidden 256, 4 heads / 2 KV heads, MLP 768, vocab 32,000, tied embeddings, rope
base 100,000; batch 4 x 512, bf16 autocast, random init. nanoVLM runs its own model, data
path (``VQADataset`` -> ``ConstantLengthDataset`` knapsack packing -> ``VQACollator``) and
step (as its train.py: autocast forward with targets, backward, clip 1.0, its AdamW param
groups). Its tokenizer is our BPE saved as a local transformers tokenizer (with
``<|im_start|>`` and ``<|im_end|>`` added as single tokens, as in SmolLM2) and loaded by
its ``get_tokenizer``; no download. Two adaptations, both outside its files: the
transformers-5 return type of ``apply_chat_template`` breaks its loss mask (every label
becomes -100 and the loss NaN), so a subclass of its ``VQADataset`` asks for a plain list;
and PyTorch refuses its attention call when a padding mask is passed (``attn_mask`` with
``is_causal=True``), so it trains with ``attention_mask=None`` (plain causal attention
over each packed row, across documents and padding: no document isolation, its fastest
path; ``--nanovlm-eager-mask`` uses its manual attention with the mask instead). Its real
tokens are ``attention_mask.sum()``, as its train.py counts them. Ours: the same sizes
(``hf_siglip`` tower, ``pixel_shuffle_mlp`` scale 2, tied Llama), ``MediaBatchStream``
batches 4 x 512 with document-isolated attention, at most 18 images per pack (nanoVLM's
``max_images_per_knapsack``), the loop's step under bf16 autocast. The two alternate step
by step (order alternating). ``vs_nanovlm`` = our real tokens/s / nanoVLM's; documents/s
and images/s are printed too, since nanoVLM's chat template adds tokens to each document.

Get nanoVLM (the checkout is never committed; ``assets/`` holds large files that are not
needed):

    mkdir -p /tmp/nanoVLM
    git --git-dir=/work/.mirror/huggingface+nanoVLM/repo archive HEAD -- . ':!assets' \\
        | tar -x -C /tmp/nanoVLM
    git --git-dir=/work/.mirror/huggingface+nanoVLM/repo rev-parse HEAD > /tmp/nanoVLM/NANOVLM_COMMIT

    python scripts/bench_model.py --quick     # ~3 minutes
    python scripts/bench_model.py             # longer budgets

When ``--nanovlm-dir`` (default /tmp/nanoVLM) holds no nanoVLM, part 2 measures only ours and reports
``"nanovlm_tokens_per_s": null``. The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import logging
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmpretrain.config import load_config, validate_config
from mmpretrain.data.demo_data import build_demo_dataset
from mmpretrain.data.layout import LossMask, MediaDocument, MediaItem, MediaTokenIds, layout_batch
from mmpretrain.data.media_packing import PackBudget, split_media_document
from mmpretrain.data.media_pipeline import MediaBatchStream, MediaDataConfig, to_media_document
from mmpretrain.data.reader import ShardReader
from mmpretrain.data.tokenizer import TextTokenizer
from mmpretrain.data.types import PackedBatch
from mmpretrain.model.build import build_model, media_processors
from mmpretrain.model.config import ModelConfig
from mmpretrain.model.multimodal import MultimodalLM
from mmpretrain.model.packed import token_loss_sum
from mmpretrain.train.config import OptimConfig
from mmpretrain.train.data_setup import tokenizer_for_run
from mmpretrain.train.optim import build_optimizer

REPO = Path(__file__).resolve().parents[1]
VLM_TINY = REPO / "configs" / "models" / "vlm_tiny.yaml"
DEFAULT_NANOVLM = Path("/tmp/nanoVLM")

# nanoVLM's tiny size (the 13.5M parameters); ours is built with the same numbers.
NANO = {
    "vit_hidden": 192,
    "vit_inter": 768,
    "vit_heads": 3,
    "vit_blocks": 4,
    "patch": 16,
    "image": 256,
    "shuffle": 2,  # 256 patches -> 64 tokens
    "lm_hidden": 256,
    "lm_inter": 768,
    "lm_heads": 4,
    "lm_kv_heads": 2,
    "lm_blocks": 4,
    "vocab": 32_000,
    "rope_base": 100_000.0,
    "rows": 4,
    "seq_len": 512,
    "max_images_per_pack": 18,  # nanoVLM TrainConfig.max_images_per_knapsack
}


# ------------------------------------------------------------------------------ timing


def cpu_pressure() -> float | None:
    """Linux PSI: % of the last 60 s in which some runnable task waited for a CPU (None if
    unavailable). Other processes competing for the cores make every figure here noisy."""
    try:
        line = Path("/proc/pressure/cpu").read_text(encoding="utf-8").splitlines()[0]
    except (OSError, IndexError):
        return None
    fields = dict(item.split("=") for item in line.split()[1:])
    return float(fields["avg60"])


class EncoderClock:
    """Times the encoder (+ connector) part of a step with module hooks (module docstring)."""

    def __init__(self, encoders: list[nn.Module], connectors: list[nn.Module]) -> None:
        self.forward_s = 0.0
        self.grad_at: float | None = None
        self._start: float | None = None
        for module in encoders:
            module.register_forward_pre_hook(self._pre)
        for module in connectors:
            module.register_forward_hook(self._post)

    def reset(self) -> None:
        self.forward_s, self.grad_at, self._start = 0.0, None, None

    def _pre(self, module: nn.Module, args: Any) -> None:
        if self._start is None:
            self._start = time.perf_counter()

    def _post(self, module: nn.Module, args: Any, output: Any) -> None:
        if self._start is not None:
            self.forward_s += time.perf_counter() - self._start
            self._start = None
        out = output[0] if isinstance(output, tuple) else output
        if isinstance(out, torch.Tensor) and out.requires_grad:
            out.register_hook(self._grad)

    def _grad(self, grad: torch.Tensor) -> None:
        now = time.perf_counter()
        self.grad_at = now if self.grad_at is None else min(self.grad_at, now)

    def encoder_seconds(self, backward_end: float) -> float:
        """Encoder forward + backward time of the step that ended its backward at ``backward_end``."""
        backward = backward_end - self.grad_at if self.grad_at is not None else 0.0
        return self.forward_s + backward


@dataclass
class Timings:
    """One method's timed steps."""

    name: str
    seconds: list[float] = field(default_factory=list)
    encoder: list[float] = field(default_factory=list)
    optimizer: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    slots: list[int] = field(default_factory=list)
    docs: list[int] = field(default_factory=list)
    images: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)

    def add(self, phases: tuple[float, float, float, float], tokens: int, slots: int, docs: int, images: int):
        seconds, encoder, optimizer, loss = phases
        self.seconds.append(seconds)
        self.encoder.append(encoder)
        self.optimizer.append(optimizer)
        self.tokens.append(tokens)
        self.slots.append(slots)
        self.docs.append(docs)
        self.images.append(images)
        self.losses.append(loss)

    @property
    def total_s(self) -> float:
        return sum(self.seconds)

    @property
    def tokens_per_s(self) -> float:
        return sum(self.tokens) / self.total_s

    @property
    def docs_per_s(self) -> float:
        return sum(self.docs) / self.total_s

    @property
    def images_per_s(self) -> float:
        return sum(self.images) / self.total_s

    @property
    def efficiency(self) -> float:
        return sum(self.tokens) / sum(self.slots)

    @property
    def encoder_share(self) -> float:
        return sum(self.encoder) / self.total_s

    @property
    def optimizer_share(self) -> float:
        return sum(self.optimizer) / self.total_s

    @property
    def llm_share(self) -> float:
        return 1.0 - self.encoder_share - self.optimizer_share


# ------------------------------------------------------------------------------ our step


class OurTrainer:
    """A MultimodalLM, the loop's AdamW and the loop's step (loop.py), with phase timing."""

    def __init__(self, model: MultimodalLM, optim: OptimConfig, grad_clip: float | None, bf16: bool) -> None:
        self.model = model.train()
        self.optimizer = build_optimizer(model, optim)
        self.params = [p for group in self.optimizer.param_groups for p in group["params"]]
        self.grad_clip = grad_clip
        self.bf16 = bf16
        self.clock = EncoderClock(list(model.encoders.values()), list(model.connectors.values()))

    def step(self, batch: PackedBatch) -> tuple[float, float, float, float]:
        """Train on ``batch``: (step seconds, encoder seconds, optimizer seconds, loss)."""
        self.clock.reset()
        autocast = (
            torch.autocast(device_type="cpu", dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()
        )
        start = time.perf_counter()
        label_tokens = max(batch.num_label_tokens(), 1)
        with autocast:
            logits = self.model(batch)
        loss_sum, _ = token_loss_sum(logits, batch.labels)
        (loss_sum / label_tokens).backward()
        loss = loss_sum.item() / label_tokens
        backward_end = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip or math.inf).item()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        end = time.perf_counter()
        return end - start, self.clock.encoder_seconds(backward_end), end - backward_end, loss


def batch_counts(batch: PackedBatch) -> tuple[int, int, int, int]:
    """(real tokens, slots, documents, images) of one of our batches."""
    tokens = int((batch.doc_ids >= 0).sum())
    docs = int((batch.doc_ids.max(dim=1).values + 1).clamp(min=0).sum())
    images = int(batch.media["image"].inputs.shape[0]) if "image" in batch.media else 0
    return tokens, batch.input_ids.numel(), docs, images


# ------------------------------------------------------------------------------ data


def stream_documents(
    data: MediaDataConfig, tokenizer: TextTokenizer, processors: dict[str, Any], seq_len: int, seed: int
) -> Iterator[MediaDocument]:
    """The documents ``MediaBatchStream`` packs, in stream order, with the same skips (no
    processor for a modality, a media item longer than L) and the same splitting at L."""
    reader = ShardReader(data.reader, seed=seed)
    budget = PackBudget(data.max_images_per_pack, data.max_audio_seconds_per_pack)
    for sample, _ in reader.samples():
        try:
            document = to_media_document(sample, tokenizer, processors)
        except KeyError:
            continue
        if any(isinstance(p, MediaItem) and p.length > seq_len for p in document.parts):
            continue
        yield from split_media_document(document, seq_len, budget)


def dynamic_batches(
    documents: Iterator[MediaDocument], rows: int, tokenizer: TextTokenizer, loss_mask: LossMask
) -> Iterator[PackedBatch]:
    """``rows`` documents per batch in stream order, one per row, padded to the longest."""
    ids = MediaTokenIds.from_tokenizer(tokenizer)
    while True:
        docs = list(islice(documents, rows))
        longest = max(d.length for d in docs)
        yield layout_batch([[d] for d in docs], longest, tokenizer.pad_id, ids, loss_mask)


# ------------------------------------------------------------------------------ part 1


def run_packing(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    overrides = [
        f"data.shards.reader.shards=['{work / 'demo'}/shard-*.tar']",
        f"data.shards.max_images_per_pack={args.max_images_per_pack or 'null'}",
        *args.set,
    ]
    cfg = load_config(VLM_TINY, overrides)
    assert cfg.data is not None and cfg.data.shards is not None
    tokenizer = tokenizer_for_run(cfg.data, work, log=lambda _: None)
    processors = media_processors(cfg.model)
    torch.manual_seed(args.seed)
    base = build_model(cfg.model)
    state = {k: v.clone() for k, v in base.state_dict().items()}
    n_params = sum(p.numel() for p in base.parameters())
    bf16 = cfg.train.precision == "bf16"
    trainers = {}
    for name in ("packed", "dynamic"):
        model = build_model(cfg.model)
        model.load_state_dict(state)
        trainers[name] = OurTrainer(model, cfg.optim, cfg.train.grad_clip, bf16)

    stream = MediaBatchStream(cfg.data.shards, tokenizer, processors, args.seq_len, args.rows, args.seed)
    packed_iter = (batch for batch, _ in stream.batches())
    loss_mask = LossMask(cfg.data.shards.loss_on_text_before_first_media)
    docs = stream_documents(cfg.data.shards, tokenizer, processors, args.seq_len, args.seed)
    dynamic_iter = dynamic_batches(docs, args.rows, tokenizer, loss_mask)

    for _ in range(args.warmup):  # untimed
        trainers["packed"].step(next(packed_iter))
        for _ in range(3):
            trainers["dynamic"].step(next(dynamic_iter))

    results = {name: Timings(name) for name in trainers}
    ratios = []  # packed / dynamic tokens/s of each round
    start, rounds = time.perf_counter(), 0
    while rounds < 2 or (time.perf_counter() - start < args.packing_budget_s and rounds < args.max_rounds):
        order = ("packed", "dynamic") if rounds % 2 == 0 else ("dynamic", "packed")
        packed_batch = next(packed_iter)
        target = batch_counts(packed_batch)[0]
        rate = {}
        for name in order:
            if name == "packed":
                phases = trainers["packed"].step(packed_batch)
                results["packed"].add(phases, *batch_counts(packed_batch))
                rate["packed"] = target / phases[0]
                continue
            trained, seconds = 0, 0.0
            while trained < target:
                batch = next(dynamic_iter)
                phases = trainers["dynamic"].step(batch)
                counts = batch_counts(batch)
                results["dynamic"].add(phases, *counts)
                trained, seconds = trained + counts[0], seconds + phases[0]
            rate["dynamic"] = trained / seconds
        ratios.append(rate["packed"] / rate["dynamic"])
        rounds += 1
    return {
        "results": results,
        "rounds": rounds,
        "median_ratio": statistics.median(ratios),
        "params": n_params,
        "cfg": cfg,
        "tokenizer": tokenizer,
        "skipped": (stream.skips.skipped, stream.skips.seen),
    }


# ------------------------------------------------------------------------------ part 2


def our_nanovlm_size_config() -> ModelConfig:
    """Our model with nanoVLM's tiny sizes."""
    data = {
        "llm": {
            "name": "llama",
            "vocab_size": NANO["vocab"],
            "hidden_size": NANO["lm_hidden"],
            "intermediate_size": NANO["lm_inter"],
            "num_layers": NANO["lm_blocks"],
            "num_heads": NANO["lm_heads"],
            "num_kv_heads": NANO["lm_kv_heads"],
            "max_position_embeddings": 1024,
            "rope_theta": NANO["rope_base"],
            "tie_word_embeddings": True,
        },
        "encoders": {
            "vision": {
                "name": "hf_siglip",
                "image_size": NANO["image"],
                "patch_size": NANO["patch"],
                "hidden_size": NANO["vit_hidden"],
                "intermediate_size": NANO["vit_inter"],
                "num_layers": NANO["vit_blocks"],
                "num_heads": NANO["vit_heads"],
                "feature_layer": -1,
            }
        },
        "connectors": {"image": {"name": "pixel_shuffle_mlp", "scale_factor": NANO["shuffle"]}},
    }
    return validate_config(ModelConfig, data, "bench_model (nanoVLM size)")


@dataclass
class NanoSide:
    """nanoVLM's model, optimizer, batches and step."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    params: list[nn.Parameter]
    batches: list[dict[str, Any]]
    eager_mask: bool
    clock: EncoderClock
    commit: str | None

    def step(self, batch: dict[str, Any]) -> tuple[float, float, float, float]:
        """nanoVLM's train.py step (gradient_accumulation_steps=1)."""
        self.clock.reset()
        start = time.perf_counter()
        input_ids, labels = batch["input_ids"], batch["labels"]
        mask = batch["attention_mask"] if self.eager_mask else None
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
            _, loss = self.model(input_ids, batch["images"], attention_mask=mask, targets=labels)
        loss.backward()
        backward_end = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(self.params, max_norm=1.0)
        self.optimizer.step()
        self.optimizer.zero_grad()
        value = loss.item()
        int(torch.sum(batch["attention_mask"]).item())  # train.py's token count
        end = time.perf_counter()
        return end - start, self.clock.encoder_seconds(backward_end), end - backward_end, value


def nano_counts(batch: dict[str, Any]) -> tuple[int, int, int, int]:
    """(real tokens, slots, documents, images) of a nanoVLM batch. Each packed sample ends
    with one attention-0 separator; left padding is attention 0 before the first token."""
    mask = batch["attention_mask"]
    started = mask.cumsum(dim=1) > 0
    docs = int(((mask == 0) & started).sum())
    images = sum(int(t.shape[0]) for row in batch["images"] for t in row)
    return int(mask.sum()), mask.numel(), docs, images


def nanovlm_items(data: MediaDataConfig, seed: int) -> list[dict[str, Any]]:
    """The demo samples as nanoVLM VQA items (one epoch, our reader order): all images,
    all text as the assistant turn; samples with audio are skipped (ours skips them too:
    neither model has an audio encoder)."""
    reader = ShardReader(data.reader, seed=seed)
    items = []
    for sample, _ in islice(reader.samples(), reader.samples_per_epoch):
        if any(s.kind == "audio" for s in sample.segments):
            continue
        images = [s.image for s in sample.segments if s.kind == "image"]
        text = " ".join(s.text or "" for s in sample.segments if s.kind == "text")
        items.append({"images": images or None, "texts": [{"user": "", "assistant": text}]})
    return items


def nanovlm_commit(directory: Path) -> str | None:
    for name in ("NANOVLM_COMMIT", ".commit"):
        path = directory / name
        if path.is_file():
            return path.read_text(encoding="utf-8").strip()
    return None


def build_nanovlm(
    directory: Path, tokenizer: TextTokenizer, data: MediaDataConfig, work: Path, seed: int, eager_mask: bool
) -> NanoSide:
    """nanoVLM's model at its tiny size, its optimizer groups, and one epoch of its batches."""
    from tokenizers import AddedToken

    sys.path.insert(0, str(directory))
    quiet = contextlib.redirect_stdout(io.StringIO())  # its constructors print
    config_module = importlib.import_module("models.config")
    processors = importlib.import_module("data.processors")
    datasets = importlib.import_module("data.datasets")
    advanced = importlib.import_module("data.advanced_datasets")
    collators = importlib.import_module("data.collators")
    vlm_module = importlib.import_module("models.vision_language_model")

    # our BPE as a local transformers tokenizer, chat markers as single tokens (as in SmolLM2)
    hf = tokenizer.hf
    hf.add_tokens(
        [AddedToken(t, special=True, normalized=False) for t in ("<|im_start|>", "<|im_end|>")],
        special_tokens=True,
    )
    tokenizer_dir = work / "nanovlm_tokenizer"
    hf.save_pretrained(str(tokenizer_dir))
    cfg = config_module.VLMConfig(
        vit_hidden_dim=NANO["vit_hidden"],
        vit_inter_dim=NANO["vit_inter"],
        vit_patch_size=NANO["patch"],
        vit_img_size=NANO["image"],
        vit_n_heads=NANO["vit_heads"],
        vit_n_blocks=NANO["vit_blocks"],
        vit_model_type="none (random init)",
        lm_hidden_dim=NANO["lm_hidden"],
        lm_inter_dim=NANO["lm_inter"],
        lm_n_heads=NANO["lm_heads"],
        lm_n_kv_heads=NANO["lm_kv_heads"],
        lm_n_blocks=NANO["lm_blocks"],
        lm_vocab_size=NANO["vocab"],
        lm_re_base=NANO["rope_base"],
        lm_max_position_embeddings=1024,
        lm_max_length=NANO["seq_len"],
        lm_model_type="none (random init)",
        lm_tokenizer=str(tokenizer_dir),
        mp_pixel_shuffle_factor=NANO["shuffle"],
        mp_image_token_length=(NANO["image"] // NANO["patch"] // NANO["shuffle"]) ** 2,
        max_img_size=NANO["image"],
        vlm_load_backbone_weights=False,
    )
    train_cfg = config_module.TrainConfig(batch_size=NANO["rows"], max_sample_length=NANO["seq_len"])
    with quiet:
        hf_tokenizer = processors.get_tokenizer(cfg.lm_tokenizer, cfg.vlm_extra_tokens, cfg.lm_chat_template)
        image_processor = processors.get_image_processor(
            cfg.max_img_size, cfg.vit_img_size, cfg.resize_to_max_side_len
        )

    class VQADataset(datasets.VQADataset):  # type: ignore[name-defined,misc]
        """nanoVLM's VQADataset; only the per-message encoding asks for a plain list
        (transformers 5 returns a BatchEncoding, whose len() is its number of keys)."""

        def _prepare_inputs_and_loss_mask(self, messages: list[dict[str, str]]) -> Any:
            conv_ids = self.tokenizer.apply_chat_template(
                messages, tokenize=True, add_special_tokens=False, return_dict=True
            )
            mask = [0] * len(conv_ids["input_ids"])
            cursor = 0
            for msg in messages:
                segment_ids = self.tokenizer.apply_chat_template(
                    [msg], tokenize=True, add_special_tokens=False, return_dict=False
                )
                seg_len = len(segment_ids)
                if msg["role"] == "assistant":
                    start, end = cursor + self.prefix_len, cursor + seg_len
                    mask[start:end] = [1] * (end - start)
                cursor += seg_len
            return (
                torch.tensor(conv_ids["input_ids"]),
                torch.tensor(mask).to(torch.bool),
                torch.tensor(conv_ids["attention_mask"]),
            )

    dataset = VQADataset(nanovlm_items(data, seed), hf_tokenizer, image_processor, cfg.mp_image_token_length)
    packed = advanced.ConstantLengthDataset(  # as train.py builds it
        dataset,
        infinite=False,
        max_sample_length=train_cfg.max_sample_length,
        seq_length=cfg.lm_max_length,
        num_of_sequences=train_cfg.batch_size * 4,
        queue_size=8,
        max_images_per_example=train_cfg.max_images_per_example,
        max_images_per_knapsack=train_cfg.max_images_per_knapsack,
    )
    loader = torch.utils.data.DataLoader(
        packed,
        batch_size=train_cfg.batch_size,
        collate_fn=collators.VQACollator(hf_tokenizer, cfg.lm_max_length),
        num_workers=0,
        drop_last=True,
    )
    with quiet:
        batches = list(loader)  # the whole epoch now: its producer thread has finished
        torch.manual_seed(seed)
        model = vlm_module.VisionLanguageModel(cfg, load_backbone=False).train()
    groups = [  # train.py's parameter groups and learning rates
        {"params": list(model.MP.parameters()), "lr": train_cfg.lr_mp},
        {"params": list(model.vision_encoder.parameters()), "lr": train_cfg.lr_vision_backbone},
        {"params": list(model.decoder.parameters()), "lr": train_cfg.lr_language_backbone},
    ]
    optimizer = torch.optim.AdamW(groups)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if eager_mask:  # its manual attention path, which accepts the padding mask
        for module in model.modules():
            if hasattr(module, "sdpa") and hasattr(module, "n_kv_groups"):
                module.sdpa = False
    clock = EncoderClock([model.vision_encoder], [model.MP])
    return NanoSide(model, optimizer, params, batches, eager_mask, clock, nanovlm_commit(directory))


def run_nanovlm(args: argparse.Namespace, work: Path, part1: dict[str, Any]) -> dict[str, Any]:
    cfg = part1["cfg"]
    data = MediaDataConfig(
        reader=cfg.data.shards.reader,
        buffer_docs=cfg.data.shards.buffer_docs,
        max_images_per_pack=NANO["max_images_per_pack"],
    )
    directory = args.nanovlm_dir
    nano: NanoSide | None = None
    note = None
    if (directory / "models" / "vision_language_model.py").is_file():
        from mmpretrain.data.tokenizer import load_tokenizer

        nano_tokenizer = load_tokenizer(work / "tokenizer")  # a copy: nanoVLM's markers go in it
        nano = build_nanovlm(directory, nano_tokenizer, data, work, args.seed, args.nanovlm_eager_mask)
    else:
        note = f"nanoVLM not found at {directory} (see the module docstring to get it)"

    tokenizer: TextTokenizer = part1["tokenizer"]
    model_cfg = our_nanovlm_size_config()
    torch.manual_seed(args.seed)
    ours = OurTrainer(build_model(model_cfg), OptimConfig(), 1.0, bf16=True)
    stream = MediaBatchStream(
        data, tokenizer, media_processors(model_cfg), NANO["seq_len"], NANO["rows"], args.seed
    )
    n_batches = len(nano.batches) if nano is not None else 24
    our_batches = [batch for batch, _ in islice(stream.batches(), n_batches)]

    sides: dict[str, tuple[Callable[[Any], tuple[float, float, float, float]], list[Any], Callable]] = {
        "ours": (ours.step, our_batches, batch_counts)
    }
    if nano is not None:
        sides["nanoVLM"] = (nano.step, nano.batches, nano_counts)
    for step, batches, _ in sides.values():  # untimed warm-up
        for i in range(args.warmup + 1):
            step(batches[i % len(batches)])
    results = {name: Timings(name) for name in sides}
    ratios = []  # ours / nanoVLM tokens/s of each pair of steps
    start, i = time.perf_counter(), 0
    while i < 2 or (time.perf_counter() - start < args.nanovlm_budget_s and i < args.max_rounds):
        names = list(sides) if i % 2 == 0 else list(reversed(sides))
        rate = {}
        for name in names:
            step, batches, counts = sides[name]
            batch = batches[(args.warmup + 1 + i) % len(batches)]
            phases = step(batch)
            results[name].add(phases, *counts(batch))
            rate[name] = counts(batch)[0] / phases[0]
        if "nanoVLM" in rate:
            ratios.append(rate["ours"] / rate["nanoVLM"])
        i += 1
    return {
        "results": results,
        "steps": i,
        "median_ratio": statistics.median(ratios) if ratios else None,
        "ours_params": sum(p.numel() for p in ours.model.parameters()),
        "nano_params": sum(p.numel() for p in nano.model.parameters()) if nano else None,
        "nano_batches": len(nano.batches) if nano else 0,
        "commit": nano.commit if nano else None,
        "note": note,
    }


# ------------------------------------------------------------------------------ main


def table(rows: list[Timings]) -> None:
    print(
        f"{'method':<22} {'tokens/s':>9} {'docs/s':>8} {'images/s':>9} {'ms/step':>8} {'tok/step':>9} "
        f"{'effic.':>7} {'steps':>6} {'encoder':>8} {'llm':>6} {'optim':>6}"
    )
    for t in rows:
        print(
            f"{t.name:<22} {t.tokens_per_s:>9,.0f} {t.docs_per_s:>8,.1f} {t.images_per_s:>9,.1f} "
            f"{1000 * statistics.fmean(t.seconds):>8.0f} {statistics.fmean(t.tokens):>9,.0f} "
            f"{t.efficiency:>7.3f} {len(t.seconds):>6} {t.encoder_share:>8.1%} {t.llm_share:>6.1%} "
            f"{t.optimizer_share:>6.1%}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short time budgets (~3 minutes in all)")
    parser.add_argument("--samples", type=int, default=400, help="demo samples to build")
    parser.add_argument("--work-dir", type=Path, default=None, help="for shards/tokenizer (default: temp)")
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument(
        "--max-images-per-pack",
        type=int,
        default=None,
        help="part 1 packing budget (default: none; demo.yaml's 8 caps a 1024 pack of 16-token images)",
    )
    parser.add_argument("--set", action="append", default=[], help="override of vlm_tiny.yaml, KEY=VALUE")
    parser.add_argument("--packing-budget-s", type=float, default=None, help="part 1 timed seconds")
    parser.add_argument("--nanovlm-budget-s", type=float, default=None, help="part 2 timed seconds")
    parser.add_argument("--max-rounds", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per method")
    parser.add_argument("--nanovlm-dir", type=Path, default=DEFAULT_NANOVLM)
    parser.add_argument(
        "--nanovlm-eager-mask",
        action="store_true",
        help="nanoVLM: manual attention with its padding mask instead of SDPA without a mask",
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.packing_budget_s = args.packing_budget_s or (45.0 if args.quick else 240.0)
    args.nanovlm_budget_s = args.nanovlm_budget_s or (60.0 if args.quick else 300.0)
    torch.set_num_threads(args.threads)
    logging.getLogger("mmpretrain.data").setLevel(logging.ERROR)  # audio samples: counted below
    load_before, pressure_before = os.getloadavg()[0], cpu_pressure()
    started = time.perf_counter()

    with contextlib.ExitStack() as stack:
        if args.work_dir is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench_model_")))
        else:
            work = args.work_dir
            work.mkdir(parents=True, exist_ok=True)
        build_demo_dataset(work / "demo", samples=args.samples, seed=args.seed, progress=False)
        part1 = run_packing(args, work)
        part2 = run_nanovlm(args, work, part1)

    pressure_after = cpu_pressure()
    packed, dynamic = part1["results"]["packed"], part1["results"]["dynamic"]
    speedup = packed.tokens_per_s / dynamic.tokens_per_s
    cfg = part1["cfg"]
    llm, vision = cfg.model.llm, cfg.model.encoders["vision"]
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; load average {load_before:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after; CPU pressure (PSI some avg60) {pressure_before}% before, "
        f"{pressure_after}% after"
    )
    if max(pressure_before or 0.0, pressure_after or 0.0) > 10.0:
        print("   warning: other processes competed for the CPU during the run: figures are noisy")
    print(
        f"\n1) packed vs dynamic padding: vlm_tiny ({part1['params'] / 1e6:.2f}M params: {vision.name} "
        f"{vision.image_size} px / {vision.patch_size} -> {(vision.image_size // vision.patch_size) ** 2} "
        f"tokens, {vision.num_layers} layers x {vision.hidden_size}; {cfg.model.connectors['image'].name}; "
        f"llama {llm.num_layers} x {llm.hidden_size}, vocab {llm.vocab_size}; {cfg.train.precision})"
    )
    print(
        f"   {args.samples} demo samples (samples with audio skipped, no audio encoder: "
        f"{part1['skipped'][0]} of the {part1['skipped'][1]} read by the packed stream), {args.rows} rows, "
        f"L={args.seq_len}, max images per pack {args.max_images_per_pack}; {part1['rounds']} rounds "
        "(1 packed step, then dynamic steps until as many real tokens), order alternating"
    )
    table([packed, dynamic])
    print(
        f"   packed_speedup {speedup:.2f}x (target >= 1.5); median of the rounds' ratios "
        f"{part1['median_ratio']:.2f}x"
    )

    results2 = part2["results"]
    ours2 = results2["ours"]
    nano2 = results2.get("nanoVLM")
    print(
        f"\n2) nanoVLM size ({part2['ours_params'] / 1e6:.2f}M ours"
        + (f", {part2['nano_params'] / 1e6:.2f}M nanoVLM" if part2["nano_params"] else "")
        + "): ViT 4 x 192, patch 16, 256 px, pixel "
        "shuffle -> 64 tokens, LM 4 x 256 (4/2 heads, MLP 768, vocab 32000, tied), batch 4 x 512, "
        f"bf16 autocast; {part2['steps']} steps each, alternating"
    )
    attention_mode = "eager_padding_mask" if args.nanovlm_eager_mask else "sdpa_causal_no_mask"
    if nano2 is not None:
        attention = "manual attention + padding mask" if args.nanovlm_eager_mask else "SDPA causal, no mask"
        print(
            f"   nanoVLM {part2['commit'] or '(commit unknown)'} from {args.nanovlm_dir}: its knapsack "
            f"packing, {attention} (no document isolation); ours: best-fit packing, document-isolated"
        )
        table([ours2, nano2])
        vs = ours2.tokens_per_s / nano2.tokens_per_s
        print(
            f"   vs_nanovlm {vs:.2f}x real tokens/s ({ours2.docs_per_s / nano2.docs_per_s:.2f}x documents/s, "
            f"{ours2.images_per_s / nano2.images_per_s:.2f}x images/s); median of the step pairs' "
            f"ratios {part2['median_ratio']:.2f}x"
        )
    else:
        print(f"   {part2['note']}")
        table([ours2])
    print(f"total {time.perf_counter() - started:.0f} s")

    summary: dict[str, Any] = {
        "bench": "model",
        "packed_speedup": round(speedup, 3),
        "packed_speedup_median_round": round(part1["median_ratio"], 3),
        "packed_tokens_per_s": round(packed.tokens_per_s, 1),
        "dynamic_tokens_per_s": round(dynamic.tokens_per_s, 1),
        "encoder_share": round(packed.encoder_share, 4),
        "llm_share": round(packed.llm_share, 4),
        "optimizer_share": round(packed.optimizer_share, 4),
        "dynamic_encoder_share": round(dynamic.encoder_share, 4),
        "packed_efficiency": round(packed.efficiency, 4),
        "dynamic_efficiency": round(dynamic.efficiency, 4),
        "packed_steps": len(packed.seconds),
        "dynamic_steps": len(dynamic.seconds),
        "params": part1["params"],
        "rows": args.rows,
        "seq_len": args.seq_len,
        "ours_nanovlm_size_tokens_per_s": round(ours2.tokens_per_s, 1),
        "ours_nanovlm_size_docs_per_s": round(ours2.docs_per_s, 2),
        "ours_nanovlm_size_encoder_share": round(ours2.encoder_share, 4),
        "ours_nanovlm_size_params": part2["ours_params"],
        "nanovlm_tokens_per_s": round(nano2.tokens_per_s, 1) if nano2 else None,
        "nanovlm_docs_per_s": round(nano2.docs_per_s, 2) if nano2 else None,
        "nanovlm_encoder_share": round(nano2.encoder_share, 4) if nano2 else None,
        "nanovlm_params": part2["nano_params"],
        "vs_nanovlm": round(ours2.tokens_per_s / nano2.tokens_per_s, 3) if nano2 else None,
        "vs_nanovlm_docs": round(ours2.docs_per_s / nano2.docs_per_s, 3) if nano2 else None,
        "vs_nanovlm_median_pair": round(part2["median_ratio"], 3) if nano2 else None,
        "nanovlm_steps": part2["steps"],
        "nanovlm_attention": None if nano2 is None else attention_mode,
        "nanovlm_commit": part2["commit"],
        "threads": torch.get_num_threads(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "cpu_pressure_avg60": [pressure_before, pressure_after],
        "seconds": round(time.perf_counter() - started, 1),
    }
    if part2["note"]:
        summary["nanovlm_note"] = part2["note"]
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
