"""`mmpt tokenizer train --kind vq|speech_units`: discrete media tokenizers from a YAML config."""

from __future__ import annotations

import sys
from pathlib import Path

from mmpretrain.errors import UserError

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
