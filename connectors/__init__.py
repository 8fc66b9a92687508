"""Connectors: projectors from encoder space to LLM space (``mmpretrain.connectors``).

Importing this package registers every built-in connector in ``CONNECTORS`` (torch only).
"""

from mmpretrain.connectors import (  # noqa: F401  (imported to register)
    conv_pool,
    frame_stack,
    linear,
    mlp,
    perceiver_resampler,
    pixel_shuffle,
    qformer,
)
