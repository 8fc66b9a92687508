"""mmpretrain: pre-training multimodal language models.

Pluggable vision and speech encoders feed a decoder LLM through connectors; training
reads packed interleaved image-text-speech shards. See README.md and docs/.
"""

__version__ = "0.1.0"
