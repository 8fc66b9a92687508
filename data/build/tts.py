"""Speech synthesis for `tts-interleaved` builds: text -> 16 kHz mono int16 samples.

Two engines give the same samples:

- ``library`` (used when ``ctypes.util.find_library("espeak-ng")`` finds
  ``libespeak-ng.so.1`` and it passes the check below): espeak-ng in this process through ctypes,
  synchronous mode, samples collected by a synth callback. espeak-ng keeps synthesis
  state in static variables that no API call resets (the pitch-flutter phase, the wave
  phase, ...), so with one loaded instance an utterance's samples would depend on what
  was spoken before it. Each utterance therefore loads the library afresh (``dlopen``),
  initializes it, sets voice (by its file, ``gmw/en`` for ``en``, found once) and rate,
  synthesizes and unloads it (``dlclose``): about 1.5 ms on top of synthesis (7 ms of CPU
  in all for a 12-word span, with resampling), and every utterance is bit-identical to
  ``espeak-ng --stdout -v VOICE -s RATE -- TEXT`` run on its own (text in ``[[...]]`` is
  read as text here, not as phoneme codes as the command line does).
- ``subprocess``: one ``espeak-ng`` process per utterance
  (:func:`mmpretrain.data.demo_speech.speech_samples`); the fallback when the library is
  missing, cannot be initialized, or (checked once per process) does not give the same
  samples for the same text twice, e.g. because something else keeps it loaded. About
  twice the CPU time per utterance (process start and voice loading each time).

Both resample espeak-ng's 22,050 Hz output to 16 kHz with
:func:`mmpretrain.data.demo_speech.resample`. The library is not thread-safe: calls are
serialized by a lock, and a build runs its workers as processes, each with its own engine.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import math
import os
import threading
from typing import Any, Literal

import numpy as np

from mmpretrain.data.demo_speech import SAMPLE_RATE, resample, speech_samples
from mmpretrain.errors import UserError

Engine = Literal["auto", "library", "subprocess"]

# speak_lib.h
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_ENDPAUSE = 0x1000  # a pause after the last word, as the command line adds
_RATE = 1
_EE_OK = 0
_BUFFER_MS = 1000  # callback granularity; the samples do not depend on it

_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class _Voice(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_char_p),
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    ]


class _Library:
    """espeak-ng through ctypes, loaded afresh for every utterance (see the module doc)."""

    def __init__(self, path: str):
        self.path = path
        self.lock = threading.Lock()
        self.chunks: list[bytes] = []
        self.callback = _CALLBACK(self._collect)  # kept alive as long as the engine
        self.voice_files: dict[str, bytes] = {}
        self.identifier: bytes | None = None

    def _collect(self, wav: Any, count: int, events: Any) -> int:
        if wav and count > 0:
            self.chunks.append(ctypes.string_at(wav, 2 * count))
        return 0  # 0: go on

    def speak(self, text: str, voice: str, rate: int) -> tuple[np.ndarray, int]:
        """``text`` as int16 samples and their rate (espeak-ng's own, 22,050 Hz)."""
        data = text.encode("utf-8", "replace") + b"\0"
        with self.lock:
            if voice not in self.voice_files:
                self.voice_files[voice] = self._voice_file(voice, rate)
            return self._fresh(data, self.voice_files[voice], rate)

    def _voice_file(self, voice: str, rate: int) -> bytes:
        """What to pass to ``espeak_SetVoiceByName`` for ``voice``: its file (``gmw/en`` for
        ``en``) when that gives the same samples, else the name itself.

        A name that is not a file makes espeak-ng read every voice file to find it (3 ms,
        as much as synthesizing a sentence); the library is loaded afresh per utterance, so
        it would do that every time.
        """
        name = voice.encode("utf-8")
        probe = b"The voice check, one two three.\0"
        reference = self._fresh(probe, name, rate)
        identifier = self.identifier
        if not identifier or identifier == name or identifier != identifier.lower():
            return name  # espeak-ng lower-cases the name before it looks for the file
        try:
            same = np.array_equal(self._fresh(probe, identifier, rate)[0], reference[0])
        except UserError:
            same = False
        return identifier if same else name

    def _fresh(self, data: bytes, voice: bytes, rate: int) -> tuple[np.ndarray, int]:
        lib = ctypes.CDLL(self.path, mode=ctypes.RTLD_LOCAL)
        try:
            return self._speak(lib, data, voice, rate)
        finally:
            handle = lib._handle
            del lib
            _dlclose(handle)

    def _speak(self, lib: ctypes.CDLL, data: bytes, voice: bytes, rate: int) -> tuple[np.ndarray, int]:
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        sample_rate = lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, _BUFFER_MS, None, _INITIALIZE_DONT_EXIT
        )
        if sample_rate <= 0:
            raise _EngineUnavailable("espeak_Initialize failed (espeak-ng-data not found?)")
        try:
            lib.espeak_SetSynthCallback.argtypes = [_CALLBACK]
            lib.espeak_SetSynthCallback(self.callback)
            lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
            if lib.espeak_SetVoiceByName(voice) != _EE_OK:
                name = voice.decode("utf-8", "replace")
                raise UserError(f"espeak-ng has no voice {name!r}; `espeak-ng --voices` lists them")
            lib.espeak_GetCurrentVoice.restype = ctypes.POINTER(_Voice)
            current = lib.espeak_GetCurrentVoice()
            self.identifier = current.contents.identifier if current else None
            lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
            lib.espeak_SetParameter(_RATE, int(rate), 0)
            lib.espeak_Synth.argtypes = [
                ctypes.c_void_p,
                ctypes.c_size_t,
                ctypes.c_uint,
                ctypes.c_int,
                ctypes.c_uint,
                ctypes.c_uint,
                ctypes.c_void_p,
                ctypes.c_void_p,
            ]
            self.chunks.clear()
            flags = _CHARS_UTF8 | _ENDPAUSE
            status = lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, flags, None, None)
            if status != _EE_OK:
                raise UserError(f"espeak-ng could not synthesize the text (espeak_Synth returned {status})")
            samples = np.frombuffer(b"".join(self.chunks), dtype="<i2")
            self.chunks.clear()
            return samples, sample_rate
        finally:
            lib.espeak_Terminate()


class _EngineUnavailable(Exception):
    pass


def _dlclose(handle: int) -> None:
    import _ctypes

    _ctypes.dlclose(handle)


_ENGINE: tuple[int, _Library | None] | None = None
"""(process id, the library engine or None when unavailable); one per process."""


def _library() -> _Library | None:
    """This process's library engine, or None when libespeak-ng cannot be used."""
    global _ENGINE
    if _ENGINE is not None and _ENGINE[0] == os.getpid():
        return _ENGINE[1]
    path = ctypes.util.find_library("espeak-ng")
    engine = None
    if path is not None:
        try:
            candidate = _Library(path)
            probe = "Is this the same, one two three?"
            first, _ = candidate.speak(probe, "en", 160)
            candidate.speak("Something else is said in between.", "en", 160)
            # Unloading resets espeak-ng only if nothing else in the process holds it open.
            if np.array_equal(first, candidate.speak(probe, "en", 160)[0]):
                engine = candidate
        except (OSError, _EngineUnavailable, UserError):
            engine = None
    _ENGINE = (os.getpid(), engine)
    return engine


def engine_name() -> str:
    """``"library"`` when utterances are synthesized in-process, else ``"subprocess"``."""
    return "library" if _library() is not None else "subprocess"


def synthesize(text: str, voice: str = "en", rate: int = 160, engine: Engine = "auto") -> np.ndarray:
    """``text`` spoken by espeak-ng (``voice``, ``rate`` words per minute) as 16 kHz mono
    int16 samples; deterministic: the same arguments give the same samples.

    ``engine="auto"`` uses the in-process library when available, else one espeak-ng
    process per call; ``"library"``/``"subprocess"`` force one (``"library"`` raises
    :class:`UserError` when it is unavailable). Raises ``ValueError`` for empty text and
    :class:`UserError` for an unknown voice or a missing espeak-ng.
    """
    text = text.replace("\0", " ")
    if not text.strip():
        raise ValueError("synthesize: text is empty")
    if engine == "subprocess":
        return speech_samples(text, voice, rate)
    lib = _library()
    if lib is None:
        if engine == "library":
            raise UserError(
                "the in-process espeak-ng engine is not available (libespeak-ng.so.1 missing, "
                "its data not found, or its output not reproducible in this process)"
            )
        return speech_samples(text, voice, rate)
    try:
        samples, rate_in = lib.speak(text, voice, rate)
    except _EngineUnavailable:
        return speech_samples(text, voice, rate)
    audio = _to_16k(samples.astype(np.float64), rate_in)
    return np.clip(np.rint(audio, out=audio), -32768, 32767, out=audio).astype(np.int16)


@functools.lru_cache(maxsize=4)
def _polyphase_filter(up: int, down: int) -> np.ndarray | None:
    """The low-pass filter ``scipy.signal.resample_poly`` designs for ``up``/``down``
    (designing it takes longer than applying it to a sentence); None without scipy."""
    try:
        from scipy.signal import firwin
    except ImportError:
        return None
    half_len = 10 * max(up, down)
    return np.asarray(firwin(2 * half_len + 1, 1.0 / max(up, down), window=("kaiser", 5.0)))


def _to_16k(audio: np.ndarray, rate_in: int) -> np.ndarray:
    """:func:`~mmpretrain.data.demo_speech.resample` to 16 kHz (the same samples), with
    the filter designed once."""
    gcd = math.gcd(rate_in, SAMPLE_RATE)
    up, down = SAMPLE_RATE // gcd, rate_in // gcd
    taps = _polyphase_filter(up, down) if rate_in != SAMPLE_RATE else None
    if taps is None:
        return resample(audio, rate_in, SAMPLE_RATE)
    from scipy.signal import resample_poly

    return np.asarray(resample_poly(audio, up, down, window=taps))
