"""Speech synthesis for `tts-interleaved` builds: text -> 16 kHz mono int16 samples."""

from __future__ import annotations

import numpy as np

from mmpretrain.data.demo_speech import speech_samples


def synthesize(text: str, voice: str = "en", rate: int = 160) -> np.ndarray:
    """``text`` spoken by espeak-ng as 16 kHz mono int16 samples."""
    return speech_samples(text, voice, rate)
