"""hf_qwen2_audio + linear + LLM -> Qwen2AudioForConditionalGeneration: its processor
reproduces our token layout and features, logits on the same inputs match ours (fp32,
1e-4), generate runs, and the import is the exact round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from export_helpers import (
    assert_logits_close,
    audio_item,
    build,
    export,
    our_batch,
    our_logits,
    qwen2_audio_config,
    tone,
)

from mmpretrain.data.tokenizer import TextTokenizer
from mmpretrain.encoders.hf_whisper import fit_mel_window
from mmpretrain.export.importer import import_hf_model
from mmpretrain.export.mapping import UnmappableError, plan_hf_export

MESSAGES = [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "what sound?"}]}]


def test_qwen2_audio_export_matches_ours(tokenizer: TextTokenizer, tmp_path: Path) -> None:
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    cfg = qwen2_audio_config()
    model = build(cfg)
    target, _ = export(model, cfg, tokenizer, tmp_path)
    assert target == "qwen2_audio"
    hf = Qwen2AudioForConditionalGeneration.from_pretrained(tmp_path, local_files_only=True).eval()
    processor = AutoProcessor.from_pretrained(tmp_path, local_files_only=True)
    prompt = processor.apply_chat_template(MESSAGES, add_generation_prompt=True)
    assert prompt == "User: <audio_start><audio><audio_end>what sound?\nAssistant: "
    wave = tone(1.3)
    inputs = processor(text=prompt, audio=[wave], sampling_rate=16000, return_tensors="pt")
    item = audio_item(cfg, wave)
    batch = our_batch(tokenizer, ["User: ", item, "what sound?\nAssistant: "])
    assert torch.equal(inputs["input_ids"], batch.input_ids)  # <audio_start> + N x <audio> + <audio_end>
    frames = item.inputs.shape[-1]
    assert int(inputs["feature_attention_mask"].sum()) == frames == 130
    torch.testing.assert_close(inputs["input_features"][0, :, :frames], item.inputs, atol=0, rtol=0)
    # The same inputs: our window (valid frames + the silence value past them).
    window, valid = fit_mel_window(item.inputs[None], [frames], 500)
    mask = (torch.arange(500) < valid[:, None]).long()
    with torch.no_grad():
        theirs = hf(input_ids=batch.input_ids, input_features=window, feature_attention_mask=mask).logits
        from_processor = hf(**inputs).logits
    ours = our_logits(model, batch)
    assert_logits_close(ours, theirs)
    # The processor's padded window holds the STFT tail of the clip in the two frames past it
    # where ours holds silence: those enter the stride-2 convolutions at the clip's end, and
    # the tower's attention spreads the difference over the clip (about 1e-3).
    torch.testing.assert_close(from_processor, ours, atol=5e-3, rtol=0)
    full = tone(5.0, 330.0)  # fills the 5 s window: no padding, the processor's inputs are ours
    full_inputs = processor(text=prompt, audio=[full], sampling_rate=16000, return_tensors="pt")
    full_batch = our_batch(tokenizer, ["User: ", audio_item(cfg, full), "what sound?\nAssistant: "])
    assert torch.equal(full_inputs["input_ids"], full_batch.input_ids)
    with torch.no_grad():
        assert_logits_close(our_logits(model, full_batch), hf(**full_inputs).logits)
    generated = hf.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert generated.shape[1] == inputs["input_ids"].shape[1] + 3
    imported = import_hf_model(tmp_path)
    back = imported.model.state_dict()
    assert all(torch.equal(tensor, back[name]) for name, tensor in model.state_dict().items())
    assert imported.config.encoders["speech"].max_source_positions == 250
    torch.testing.assert_close(our_logits(imported.model, batch), ours, atol=0, rtol=0)


def test_speech_towers_without_a_transformers_class_are_refused() -> None:
    from export_helpers import model_config

    with pytest.raises(UnmappableError) as info:
        plan_hf_export(model_config("models/speech_tiny"))
    assert [part for part, _ in info.value.parts] == [
        "encoders.speech (hf_whisper)",
        "connectors.audio (frame_stack_mlp)",
    ]
    with pytest.raises(UnmappableError, match=r"connectors.audio \(linear\): bias: false"):
        plan_hf_export(qwen2_audio_config("model.connectors.audio.bias=false"))
