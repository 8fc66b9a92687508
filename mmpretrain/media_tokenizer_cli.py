"""`mmpt tokenizer train --kind vq|speech_units`: discrete media tokenizers from a YAML config."""

from __future__ import annotations

import sys
from pathlib import Path

from mmpretrain.errors import UserError
from mmpretrain.terminal import status

# ---------------------------------------------------------------------------- speech_units

SPEECH_UNITS_DEFAULT_CONFIG = "tokenizers/speech_units_tiny"
"""Shipped config used when `--kind speech_units` gets no --config."""


def train_speech_units_command(
    shards: str, config: str | None, out: str, overwrite: bool = False, vocab_size: int | None = None
) -> int:
    """Handle `mmpt tokenizer train --kind speech_units`: validate the config (``--vocab-size``
    sets ``k``), fit on the audio of ``shards``, write ``out``, print a summary."""
    from mmpretrain.config import load_yaml_with_bases, resolve_config_path, validate_config
    from mmpretrain.data.shard_stream import expand_shards
    from mmpretrain.encoders.speech_units import SpeechUnitsConfig
    from mmpretrain.units_train import fit_speech_units, prepare_output_dir

    path = resolve_config_path(config or SPEECH_UNITS_DEFAULT_CONFIG)
    data = load_yaml_with_bases(path)
    if vocab_size is not None:
        if vocab_size < 2:
            raise UserError(f"--vocab-size {vocab_size}: a speech_units tokenizer needs k >= 2 units")
        data["k"] = vocab_size
    cfg = validate_config(SpeechUnitsConfig, data, str(path))
    expand_shards(shards)  # a pattern that matches nothing fails before any work
    directory = Path(out)
    prepare_output_dir(directory, overwrite)
    if config is None:
        print(f"using the shipped config {SPEECH_UNITS_DEFAULT_CONFIG} ({path})", file=sys.stderr)
    report = fit_speech_units(cfg, shards, directory)
    print(
        f"wrote a speech_units tokenizer (k={report['k']}, {report['encoder']} feature_layer "
        f"{report['feature_layer']}) to {directory}: {report['clips']} clips, "
        f"{report['audio_seconds']:.1f} s of audio, {report['frames']} frames; k-means "
        f"{report['iterations']} iterations, inertia/frame {report['inertia_per_frame']:.4g}; "
        f"{report['units_per_second']:.1f} units/s, {report['units_per_second_dedup']:.1f} after dedup; "
        f"{report['seconds']:.1f} s (report: {directory / 'fit.json'})"
    )
    return 0


# ---------------------------------------------------------------------------- vq

VQ_DEFAULT_CONFIG = "tokenizers/vq_tiny"
"""Shipped config used when `--kind vq` gets no --config."""


def train_vq_command(
    shards: str, config: str | None, out: str, overwrite: bool = False, vocab_size: int | None = None
) -> int:
    """Handle `mmpt tokenizer train --kind vq`: validate the config (``--vocab-size`` sets
    ``model.codebook_size``), train on the images of ``shards``, write ``out``, summarize."""
    from mmpretrain.config import load_yaml_with_bases, resolve_config_path, validate_config
    from mmpretrain.data.shard_stream import expand_shards
    from mmpretrain.vq_train import EVAL_FILE, SAMPLE_CODES, VqTrainConfig, prepare_output_dir, train_vq

    path = resolve_config_path(config or VQ_DEFAULT_CONFIG)
    data = load_yaml_with_bases(path)
    if vocab_size is not None:
        model = data.get("model")
        data["model"] = {**(model if isinstance(model, dict) else {}), "codebook_size": vocab_size}
    cfg = validate_config(VqTrainConfig, data, str(path))
    expand_shards(shards)  # a pattern that matches nothing fails before any work
    directory = Path(out)
    prepare_output_dir(directory, overwrite)
    if config is None:
        print(f"using the shipped config {VQ_DEFAULT_CONFIG} ({path})", file=sys.stderr)
    result = train_vq(cfg, shards, directory, log=status)  # progress lines: stderr
    before, after = result.evaluation["before"], result.evaluation["after"]
    heldout = result.evaluation["heldout"]
    grid = cfg.model.grid_size
    print(f"trained a vq image tokenizer -> {directory}")
    print(f"  training:   {result.steps} steps on {result.train_images} images in {result.seconds:.1f} s")
    print(
        f"  codes:      {cfg.model.codebook_size}-entry codebook; a {cfg.model.image_size}x"
        f"{cfg.model.image_size} image -> {grid}x{grid} = {grid * grid} codes"
    )
    print(
        f"  held-out:   {heldout['images']} images ({heldout['source']}): reconstruction MSE "
        f"{before['mse']:.5f} -> {after['mse']:.5f} (PSNR {before['psnr_db']:.1f} -> "
        f"{after['psnr_db']:.1f} dB), {after['codes_used']} codes used ({directory / EVAL_FILE})"
    )
    print(f"  inspect:    mmpt tokenizer decode {directory} --ids {directory / SAMPLE_CODES} --out recon.png")
    return 0


def decode_command(tokenizer_dir: str, ids_file: str, out: str) -> int:
    """Handle `mmpt tokenizer decode`: codes from a JSON file (a list of ints or an object
    with ``codes``) -> the media tokenizer's decoding, saved as PNG."""
    import json

    from mmpretrain.encoders.media_tokenizer import load_media_tokenizer

    tokenizer = load_media_tokenizer(tokenizer_dir)
    decode = getattr(tokenizer, "decode", None)
    if decode is None:
        raise UserError(f"a {tokenizer.kind} tokenizer ({tokenizer_dir}) cannot decode codes back to media")
    if not out.lower().endswith(".png"):
        raise UserError(f"--out {out}: decode writes a PNG image; name the file *.png")
    try:
        data = json.loads(Path(ids_file).read_text(encoding="utf-8"))
    except OSError as exc:
        raise UserError(f"cannot read --ids {ids_file}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise UserError(f"--ids {ids_file} is not valid JSON: {exc}") from None
    codes = data.get("codes") if isinstance(data, dict) else data
    if not isinstance(codes, list):
        raise UserError(
            f'--ids {ids_file} must hold a JSON list of integers or an object with "codes": [...]'
        )
    image = decode(codes)
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    image.save(target, format="PNG")
    print(f"decoded {len(codes)} codes -> {target} ({image.width}x{image.height})")
    return 0
