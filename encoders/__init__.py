"""Vision and speech encoders and discrete media tokenizers (``mmpretrain.encoders``)."""

# vision encoders (importing registers them)
from mmpretrain.encoders import hf_vision, open_clip_encoder, timm_encoder  # noqa: F401

# speech encoders (importing registers them)
# discrete media tokenizers (importing registers their loaders and registry entries)
from . import hf_qwen2_audio, hf_ssl_speech, hf_whisper, speech_units, vq  # noqa: F401  # noqa: F401
