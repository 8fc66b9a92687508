"""Speech encoders: tiny random-init builds, padding-safe forward/backward, token counts
equal to real output lengths, Whisper features equal to WhisperFeatureExtractor's, the
exact Whisper window, Qwen2-Audio's padding mask, local pretrained round trips, offline
hub errors."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mmpretrain.data.decoders import DecodedSegment
from mmpretrain.data.layout import _stack
from mmpretrain.encoders import speech_common
from mmpretrain.encoders.hf_qwen2_audio import qwen2_audio_output_length
from mmpretrain.encoders.hf_ssl_speech import conv_output_length
from mmpretrain.encoders.hf_whisper import fit_mel_window
from mmpretrain.errors import ConfigError, UserError
from mmpretrain.registry import ENCODERS

SPEECH = ["hf_hubert", "hf_qwen2_audio", "hf_wav2vec2", "hf_whisper"]
MEL = ["hf_qwen2_audio", "hf_whisper"]
SSL = ["hf_hubert", "hf_wav2vec2"]
TINY: dict[str, Any] = {"hidden_size": 32, "num_layers": 2, "num_heads": 4, "intermediate_size": 64}
TINY_MEL: dict[str, Any] = {"n_mels": 80, "max_source_positions": 50}  # window: 100 frames = 1 s
TINY_SSL: dict[str, Any] = {
    "conv_dim": (16, 16),
    "conv_kernel": (10, 4),
    "conv_stride": (5, 4),  # 20 samples per frame, receptive field 25 samples
    "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 4,
}
WINDOW = 2 * TINY_MEL["max_source_positions"]


def tiny_config(name: str, **overrides: Any) -> Any:
    config_class = ENCODERS.get(name).config_class
    assert config_class is not None
    return config_class(name=name, **{**TINY, **(TINY_MEL if name in MEL else TINY_SSL), **overrides})


def build(name: str, **overrides: Any) -> Any:
    return ENCODERS.build(tiny_config(name, **overrides))


def tone(samples: int, rate: int = 16000, freq: float = 440.0) -> np.ndarray:
    return (0.3 * np.sin(2 * np.pi * freq * np.arange(samples) / rate)).astype(np.float32)


def noise(samples: int, seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(samples)).astype(np.float32)


def clip(wave: np.ndarray, rate: int = 16000) -> DecodedSegment:
    return DecodedSegment("audio", audio=wave, sample_rate=rate)


def two_clips() -> list[DecodedSegment]:
    """0.5 s tone at 16 kHz and 0.27 s of noise at 22050 Hz (resampled to 4354 samples)."""
    return [clip(tone(8000)), clip(noise(6000), rate=22050)]


# ---------------------------------------------------------------------------- all encoders


def test_speech_encoders_are_registered() -> None:
    assert set(SPEECH) <= set(ENCODERS.names())
    for name in SPEECH:
        assert tiny_config(name).modality() == "audio"


@pytest.mark.parametrize("name", SPEECH)
def test_forward_backward_on_padded_batch(name: str) -> None:
    encoder = build(name)
    items = [encoder.preprocess(segment) for segment in two_clips()]
    if name in SSL:
        assert items[1].shape == (math.ceil(6000 * 16000 / 22050),)  # resampled to 16 kHz
    inputs, sizes = _stack(items)
    assert sizes == [item.shape[-1] for item in items]  # they differ in the last dim only
    features, lengths = encoder(inputs, sizes)
    assert lengths.tolist() == [encoder.num_tokens(item) for item in items]
    assert encoder.out_dim == 32 and features.shape == (2, max(lengths.tolist()), 32)
    features.square().mean().backward()
    trainable = [(n, p) for n, p in encoder.named_parameters() if p.requires_grad]
    assert all(p.grad is not None for _, p in trainable), [n for n, p in trainable if p.grad is None]

    # whatever sits in the padding, the valid outputs stay the same
    encoder.eval()
    garbage = inputs.clone()
    short = int(torch.tensor(sizes).argmin())
    garbage[short, ..., sizes[short] :] = 7.0
    with torch.no_grad():
        clean, _ = encoder(inputs, sizes)
        dirty, _ = encoder(garbage, sizes)
        alone, alone_lengths = encoder(items[short][None], [])
    n = int(lengths[short])
    assert int(alone_lengths[0]) == n
    torch.testing.assert_close(dirty[short, :n], clean[short, :n], atol=1e-5, rtol=0)
    torch.testing.assert_close(alone[0, :n], clean[short, :n], atol=1e-5, rtol=0)


SAMPLES = [1, 100, 161, 320, 321, 400, 1599, 1600, 1601, 8000, 15999, 16000, 16161, 24000]


@pytest.mark.parametrize("name", SPEECH)
def test_num_tokens_equals_real_output_length(name: str) -> None:
    encoder = build(name).eval()
    items = [encoder.preprocess(clip(noise(n, seed=n))) for n in SAMPLES]
    counts = [encoder.num_tokens(item) for item in items]
    assert min(counts) >= 1  # very short clips are padded to one token's worth
    with torch.no_grad():
        inputs, sizes = _stack(items)
        _, lengths = encoder(inputs, sizes)
        assert lengths.tolist() == counts
        for item, count in zip(items, counts, strict=True):
            if name in SSL:  # the model alone on the unpadded waveform
                real = encoder.model(item[None]).last_hidden_state.shape[1]
            else:  # the encoder's convs (and pooling) on the valid frames, unwindowed
                tower = encoder.audio_tower if name == "hf_qwen2_audio" else encoder.encoder
                frames = tower.conv2(tower.conv1(item[None, :, :WINDOW]))
                if name == "hf_qwen2_audio":
                    frames = tower.avg_pooler(frames)
                real = frames.shape[-1]
            assert real == count, (item.shape, real, count)


def test_token_formulas_equal_transformers_for_every_length() -> None:
    from transformers import Qwen2AudioEncoder

    qwen = build("hf_qwen2_audio")
    frames = torch.arange(1, 3001)
    _, expected = Qwen2AudioEncoder._get_feat_extract_output_lengths(qwen.audio_tower, frames)  # type: ignore[arg-type]
    assert [qwen2_audio_output_length(int(f)) for f in frames] == expected.tolist()
    wav2vec2 = build("hf_wav2vec2")
    samples = torch.arange(25, 5000)
    expected = wav2vec2.model._get_feat_extract_output_lengths(samples)
    assert [conv_output_length(int(s), wav2vec2.processor.layers) for s in samples] == expected.tolist()
    # the released conv stack: 400-sample receptive field, 320 samples (20 ms) per frame
    base = ENCODERS.get("hf_wav2vec2").config_class(name="hf_wav2vec2").processor()  # type: ignore[misc]
    assert base.min_samples == 400
    assert base.num_tokens(torch.zeros(16000)) == 49


@pytest.mark.parametrize("name", SPEECH)
def test_feature_layer(name: str) -> None:
    encoder = build(name, feature_layer=-2).eval()
    final = build(name).eval()
    final.load_state_dict(encoder.state_dict())
    items = [encoder.preprocess(segment) for segment in two_clips()]
    inputs, sizes = _stack(items)
    with torch.no_grad():
        middle, lengths = encoder(inputs, sizes)
        last, last_lengths = final(inputs, sizes)
    assert torch.equal(lengths, last_lengths) and middle.shape == last.shape
    assert not torch.allclose(middle, last)
    with pytest.raises(ConfigError, match="feature_layer 3 is out of range"):
        build(name, feature_layer=3)


# ---------------------------------------------------------------------------- resampling


@pytest.mark.parametrize("backend", ["torchaudio", "scipy"])
def test_resampling_and_mono(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if backend == "scipy":
        monkeypatch.setattr(speech_common, "_torchaudio_resample", lambda: None)
    elif speech_common._torchaudio_resample() is None:
        pytest.skip("torchaudio does not import here")
    assert speech_common.resample_backend() == backend
    wave = tone(22050, rate=22050, freq=440.0)  # 1 s
    out = speech_common.resample(wave, 22050, 16000)
    assert out.dtype == np.float32 and out.shape == (16000,)
    spectrum = np.abs(np.fft.rfft(out))
    assert abs(int(spectrum.argmax()) - 440) <= 1  # 1 Hz bins: the tone stays at 440 Hz
    np.testing.assert_allclose(out[2000:14000], tone(16000)[2000:14000], atol=2e-3)
    stereo = np.stack([wave, np.zeros_like(wave)], axis=1)  # (frames, channels), as soundfile
    mono = speech_common.segment_waveform(clip(stereo, rate=22050), 16000)
    np.testing.assert_allclose(mono, out / 2, atol=1e-6)


# ---------------------------------------------------------------------------- whisper front end


@pytest.mark.parametrize("n_mels", [80, 128])
def test_whisper_features_equal_feature_extractor(n_mels: int) -> None:
    """preprocess == the first `attention_mask.sum()` = ceil(samples / 160) frames of
    WhisperFeatureExtractor's 30 s output, and the silence value that forward pads with
    is the extractor's own padding frame."""
    from transformers import WhisperFeatureExtractor

    processor = tiny_config("hf_whisper", n_mels=n_mels, max_source_positions=1500).processor()  # 30 s
    extractor = WhisperFeatureExtractor(feature_size=n_mels, sampling_rate=16000)
    for samples in (1, 159, 160, 161, 3333, 8000, 16000):
        wave = tone(samples) + noise(samples, seed=samples)
        ours = processor.preprocess(clip(wave))
        ref = extractor(wave, sampling_rate=16000, return_attention_mask=True, return_tensors="pt")
        frames = int(ref["attention_mask"].sum())
        assert frames == math.ceil(samples / 160) == ours.shape[-1]
        full = ref["input_features"][0]
        torch.testing.assert_close(ours, full[:, :frames], atol=1e-5, rtol=0)
        filled, _ = fit_mel_window(ours[None], [], 3000)
        torch.testing.assert_close(filled[0, :, frames + 2 :], full[:, frames + 2 :], atol=1e-5, rtol=0)


def test_whisper_long_clip_is_cropped_like_the_extractor() -> None:
    from transformers import WhisperFeatureExtractor

    extractor = WhisperFeatureExtractor(feature_size=80, sampling_rate=16000)
    wave = tone(24000) + noise(24000)  # 1.5 s, the tiny window is 1 s
    ours = tiny_config("hf_whisper").processor().preprocess(clip(wave))
    ref = extractor(wave, sampling_rate=16000, max_length=WINDOW * 160, return_tensors="pt")["input_features"]
    assert ours.shape == (80, WINDOW)
    torch.testing.assert_close(ours, ref[0], atol=1e-5, rtol=0)
    # released models: a 31 s clip is cut to the extractor's 30 s, 3000 frames, 1500 tokens
    long_wave = noise(31 * 16000)
    released = tiny_config("hf_whisper", max_source_positions=1500).processor()
    features = released.preprocess(clip(long_wave))
    full = extractor(long_wave, sampling_rate=16000, return_tensors="pt")["input_features"][0]
    torch.testing.assert_close(features, full, atol=1e-5, rtol=0)
    assert released.num_tokens(features) == 1500


@pytest.mark.parametrize("name", MEL)
def test_encoder_gets_exactly_the_window_and_tokens_cap(name: str) -> None:
    encoder = build(name).eval()
    tower = encoder.audio_tower if name == "hf_qwen2_audio" else encoder.encoder
    with pytest.raises(ValueError, match=f"length {WINDOW}"):
        tower(torch.zeros(1, 80, WINDOW - 1))  # transformers refuses any other frame count
    seen: list[int] = []
    tower.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(args[0].shape[-1]), with_kwargs=True
    )
    long = torch.randn(80, WINDOW + 30)  # longer than the window (not from preprocess)
    short = torch.randn(80, 40)
    inputs, sizes = _stack([long, short])
    with torch.no_grad():
        features, lengths = encoder(inputs, sizes)
        encoder(short[None], [])
    assert seen == [WINDOW, WINDOW]  # padded and cropped to exactly 2 x max_source_positions
    cap = encoder.num_tokens(torch.zeros(80, WINDOW))
    assert cap == (50 if name == "hf_whisper" else 25)
    assert encoder.num_tokens(long) == cap and lengths.tolist() == [cap, encoder.num_tokens(short)]
    assert features.shape[1] == cap
    # a clip longer than the window is cropped in preprocess too
    item = encoder.preprocess(clip(noise(24000)))
    assert item.shape == (80, WINDOW) and encoder.num_tokens(item) == cap


# ---------------------------------------------------------------------------- qwen2-audio


def test_qwen2_audio_matches_transformers_padding_mask() -> None:
    """Same tower inside transformers' Qwen2AudioForConditionalGeneration (which builds the
    padding mask from feature_attention_mask): equal valid outputs and token counts."""
    import transformers

    encoder = build("hf_qwen2_audio").eval()
    items = [encoder.preprocess(clip(noise(n, seed=n))) for n in (4000, 12000)]
    inputs, sizes = _stack(items)
    with torch.no_grad():
        ours, lengths = encoder(inputs, sizes)
        alone, _ = encoder(items[0][None], [])
    n0 = int(lengths[0])
    # the padding mask: padding changes nothing for the short item
    torch.testing.assert_close(alone[0, :n0], ours[0, :n0], atol=1e-5, rtol=0)

    text = {"model_type": "qwen2", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 64}
    text |= {"num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2}
    hf_config = transformers.Qwen2AudioConfig(
        audio_config=encoder.audio_tower.config.to_dict(), text_config=text, audio_token_index=63
    )
    full = transformers.Qwen2AudioForConditionalGeneration(hf_config).eval()
    full.model.audio_tower.load_state_dict(encoder.audio_tower.state_dict())
    captured: list[torch.Tensor] = []
    full.model.multi_modal_projector.register_forward_hook(lambda m, args, out: captured.append(args[0]))
    features, valid = fit_mel_window(inputs, sizes, WINDOW)
    feature_mask = (torch.arange(WINDOW) < valid[:, None]).long()
    counts = lengths.tolist()
    ids = torch.tensor([[1, *[63] * counts[0], 2, *[0] * (counts[1] - counts[0])], [1, *[63] * counts[1], 2]])
    with torch.no_grad():
        full(input_ids=ids, input_features=features, feature_attention_mask=feature_mask)
    for i, n in enumerate(counts):
        torch.testing.assert_close(ours[i, :n], captured[0][i, :n], atol=1e-5, rtol=0)
    with torch.no_grad():  # and the mask matters: without it the short item's outputs change
        unmasked = encoder.audio_tower(features).last_hidden_state
    assert not torch.allclose(unmasked[0, :n0], ours[0, :n0], atol=1e-3)


# ---------------------------------------------------------------------------- wav2vec2 / hubert


@pytest.mark.parametrize("name", SSL)
@pytest.mark.parametrize("norm", ["group", "layer"])
def test_ssl_waveform_normalisation_and_padding(name: str, norm: str) -> None:
    from transformers import Wav2Vec2FeatureExtractor

    encoder = build(name, feat_extract_norm=norm).eval()
    wave = tone(5000) + 0.2
    item = encoder.preprocess(clip(wave))
    extractor = Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True)
    ref = extractor(wave, sampling_rate=16000, return_tensors="pt")["input_values"][0]
    torch.testing.assert_close(item, ref, atol=1e-6, rtol=0)
    other = encoder.preprocess(clip(noise(12000)))
    inputs, sizes = _stack([item, other])
    with torch.no_grad():
        batch, lengths = encoder(inputs, sizes)
        alone, _ = encoder(item[None], [])
    n = int(lengths[0])
    torch.testing.assert_close(alone[0, :n], batch[0, :n], atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------- pretrained


def _save_full_model(name: str, encoder: Any, directory: Path) -> None:
    """A whole transformers model holding the encoder's weights, saved to ``directory``."""
    import transformers

    full: Any
    if name == "hf_whisper":
        hf = transformers.WhisperConfig(**encoder.encoder.config.to_dict())
        hf.decoder_layers, hf.decoder_ffn_dim, hf.decoder_attention_heads, hf.vocab_size = 1, 64, 4, 64
        hf.pad_token_id, hf.bos_token_id, hf.eos_token_id, hf.decoder_start_token_id = 0, 1, 2, 1
        hf.begin_suppress_tokens = None
        full = transformers.WhisperForConditionalGeneration(hf)
        full.model.encoder.load_state_dict(encoder.encoder.state_dict())
    elif name == "hf_qwen2_audio":
        text = {"model_type": "qwen2", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 64}
        text |= {"num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2}
        config = transformers.Qwen2AudioConfig(
            audio_config=encoder.audio_tower.config.to_dict(), text_config=text
        )
        full = transformers.Qwen2AudioForConditionalGeneration(config)
        full.model.audio_tower.load_state_dict(encoder.audio_tower.state_dict())
    else:
        model_class = transformers.Wav2Vec2ForCTC if name == "hf_wav2vec2" else transformers.HubertForCTC
        full = model_class(encoder.model.config)
        getattr(full, name.removeprefix("hf_")).load_state_dict(encoder.model.state_dict())
    full.save_pretrained(directory, max_shard_size="100KB")  # several shards and an index


@pytest.mark.parametrize("name", SPEECH)
def test_pretrained_round_trip_from_local_directory(name: str, tmp_path: Path) -> None:
    original = build(name).eval()
    tower = {"hf_whisper": "encoder", "hf_qwen2_audio": "audio_tower"}.get(name, "model")
    getattr(original, tower).save_pretrained(tmp_path / "tower")
    _save_full_model(name, original, tmp_path / "full")
    items = [original.preprocess(segment) for segment in two_clips()]
    inputs, sizes = _stack(items)
    with torch.no_grad():
        expected, expected_lengths = original(inputs, sizes)
    for source in ("tower", "full"):
        # the size fields are ignored: the checkpoint's config.json decides
        config_class = ENCODERS.get(name).config_class
        assert config_class is not None
        loaded = ENCODERS.build(config_class(name=name, pretrained=str(tmp_path / source))).eval()
        assert loaded.out_dim == 32
        assert [loaded.num_tokens(loaded.preprocess(s)) for s in two_clips()] == expected_lengths.tolist()
        for (key, a), (_, b) in zip(
            getattr(original, tower).state_dict().items(),
            getattr(loaded, tower).state_dict().items(),
            strict=True,
        ):
            assert torch.equal(a, b.to(a.dtype)), (source, key)
        with torch.no_grad():
            features, lengths = loaded(inputs, sizes)
        assert torch.equal(lengths, expected_lengths)
        torch.testing.assert_close(features, expected, atol=0, rtol=0)
        frozen = [n for n, p in loaded.named_parameters() if not p.requires_grad]
        assert frozen == [n for n, p in original.named_parameters() if not p.requires_grad]


@pytest.mark.parametrize("name", SPEECH)
def test_hub_name_offline_is_a_user_error(name: str, tmp_path: Path) -> None:
    hub_id = {"hf_whisper": "openai/whisper-tiny", "hf_qwen2_audio": "Qwen/Qwen2-Audio-7B"}
    hub_id |= {"hf_wav2vec2": "facebook/wav2vec2-base", "hf_hubert": "facebook/hubert-base-ls960"}
    config = tiny_config(name, pretrained=hub_id[name])
    with pytest.raises(UserError, match="HF_HUB_OFFLINE=1 is set: download the model once"):
        ENCODERS.build(config)
    with pytest.raises(ConfigError, match="is not a model directory"):
        ENCODERS.build(tiny_config(name, pretrained=str(tmp_path / "missing")))


def test_pretrained_tower_from_a_bin_checkpoint(tmp_path: Path) -> None:
    original = build("hf_whisper").eval()
    original.encoder.config.save_pretrained(tmp_path)
    torch.save(original.encoder.state_dict(), tmp_path / "pytorch_model.bin")
    loaded = ENCODERS.build(tiny_config("hf_whisper", pretrained=str(tmp_path))).eval()
    item = original.preprocess(clip(noise(5000)))
    with torch.no_grad():
        assert torch.equal(loaded(item[None], [])[0], original(item[None], [])[0])


def test_pretrained_of_another_architecture_is_a_config_error(tmp_path: Path) -> None:
    build("hf_whisper").encoder.save_pretrained(tmp_path / "whisper")
    with pytest.raises(
        ConfigError, match=r"holds a 'whisper' model; hf_qwen2_audio reads qwen2_audio_encoder"
    ):
        ENCODERS.build(tiny_config("hf_qwen2_audio", pretrained=str(tmp_path / "whisper")))
