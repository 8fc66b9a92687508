"""Demo speech: espeak-ng sentences as 16 kHz mono FLAC (deterministic for one version)."""

from __future__ import annotations

import io
import math
import shutil
import subprocess

import numpy as np
import soundfile

from mmpretrain.errors import UserError

SAMPLE_RATE = 16000
VOICES = ("en", "en-us")  # espeak-ng's own voices (no mbrola needed)
RATES = (140, 160, 180)  # words per minute


# ------------------------------------------------------------------------------ speech


def _espeak() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise UserError(
            "espeak-ng is not installed; the demo data speaks its sentences with it: "
            "install espeak-ng (make setup does it as root, or `apt-get install espeak-ng`)"
        )
    return exe


def _parse_wav(raw: bytes) -> tuple[np.ndarray, int]:
    """16-bit PCM mono samples and rate of espeak-ng's WAV output.

    espeak-ng writes to a pipe, so its header sizes are placeholders (0x7ffff000): the data
    chunk is taken to run to the end of the bytes.
    """
    if raw[:4] != b"RIFF" or raw[8:12] != b"WAVE":
        raise UserError("espeak-ng did not write a WAV file to stdout; check `espeak-ng --version`")
    pos, rate, channels, bits = 12, 0, 0, 0
    while pos + 8 <= len(raw):
        chunk, size = raw[pos : pos + 4], int.from_bytes(raw[pos + 4 : pos + 8], "little")
        body = pos + 8
        if chunk == b"fmt ":
            channels = int.from_bytes(raw[body + 2 : body + 4], "little")
            rate = int.from_bytes(raw[body + 4 : body + 8], "little")
            bits = int.from_bytes(raw[body + 14 : body + 16], "little")
        elif chunk == b"data":
            if (channels, bits) != (1, 16) or rate <= 0:
                raise UserError(f"espeak-ng wrote {channels}-channel {bits}-bit audio; expected mono 16-bit")
            data = raw[body : body + min(size, len(raw) - body)]
            return np.frombuffer(data[: len(data) // 2 * 2], dtype="<i2").astype(np.float64), rate
        pos = body + size + (size & 1)
    raise UserError("espeak-ng's WAV output has no data chunk")


def resample(audio: np.ndarray, rate_in: int, rate_out: int = SAMPLE_RATE) -> np.ndarray:
    """Resample a 1-D signal: ``scipy.signal.resample_poly`` if scipy is installed, else numpy.

    The numpy fallback low-passes with a 63-tap Hamming-windowed sinc below the new Nyquist
    frequency and interpolates linearly; fine for speech, a little duller than scipy's.
    """
    if rate_in == rate_out:
        return audio
    g = math.gcd(rate_in, rate_out)
    try:
        from scipy.signal import resample_poly
    except ImportError:
        return _resample_numpy(audio, rate_in, rate_out)
    return np.asarray(resample_poly(audio, rate_out // g, rate_in // g))


def _resample_numpy(audio: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    if rate_out < rate_in:
        cutoff = 0.45 * rate_out / rate_in  # cycles per input sample, just below Nyquist
        n = np.arange(63) - 31
        taps = 2 * cutoff * np.sinc(2 * cutoff * n) * np.hamming(63)
        audio = np.convolve(audio, taps / taps.sum(), mode="same")
    times = np.arange(round(len(audio) * rate_out / rate_in)) * (rate_in / rate_out)
    return np.interp(times, np.arange(len(audio)), audio)


def speech_samples(text: str, voice: str = "en", rate: int = 160) -> np.ndarray:
    """``text`` spoken by espeak-ng as 16 kHz mono int16 samples."""
    if not text.strip():
        raise ValueError("speak: text is empty")
    # An argument list, no shell; "--" so that text starting with "-" is not an option.
    cmd = [_espeak(), "--stdout", "-v", voice, "-s", str(rate), "--", text]
    proc = subprocess.run(cmd, capture_output=True, check=False, timeout=120)
    if proc.returncode != 0 or not proc.stdout:
        message = proc.stderr.decode("utf-8", "replace").strip() or f"exit code {proc.returncode}"
        raise UserError(f"espeak-ng failed for voice {voice!r}: {message}")
    audio, rate_in = _parse_wav(proc.stdout)
    audio = resample(audio, rate_in, SAMPLE_RATE)
    return np.clip(np.round(audio), -32768, 32767).astype(np.int16)


def flac_bytes(samples: np.ndarray, rate: int = SAMPLE_RATE) -> bytes:
    """Mono int16 ``samples`` encoded as 16-bit FLAC."""
    buf = io.BytesIO()
    soundfile.write(buf, samples, rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def speak(text: str, voice: str = "en", rate: int = 160) -> bytes:
    """``text`` spoken by espeak-ng (``voice``, ``rate`` words per minute) as 16 kHz mono FLAC.

    espeak-ng's 22050 Hz output is resampled with :func:`resample`. Raises
    :class:`UserError` when espeak-ng is missing or fails.
    """
    return flac_bytes(speech_samples(text, voice, rate))
