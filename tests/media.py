"""Speech-model and media fixtures the tests make themselves, offline, in milliseconds.

:func:`build_tiny_whisper` writes a tiny "scripted" faster-whisper model (recipe:
../shared/research/whisper.md, beside the repository): numpy, ctranslate2's WhisperSpec and tokenizers,
all installed with faster-whisper. Its decoder ignores the audio and always says
``<|0.00|> hello world <|2.00|>``, so the assertions are exact. :func:`write_media` writes a short tone
in any container and codec PyAV has (WAV, MP3, FLAC, MP4, WebM), with or without a video track.
Callers skip when the ``audio`` extra is missing (``pytest.importorskip("faster_whisper")``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

D, N_MELS, FFN = 16, 80, 32


def _vocabulary() -> tuple[list[str], list[str]]:
    from tokenizers import pre_tokenizers

    text = sorted(pre_tokenizers.ByteLevel.alphabet()) + ["Ġhello", "Ġworld"]
    specials = [
        "<|endoftext|>",
        "<|startoftranscript|>",
        "<|en|>",
        "<|translate|>",
        "<|transcribe|>",
        "<|startoflm|>",
        "<|startofprev|>",
        "<|nocaptions|>",
        "<|notimestamps|>",
    ] + [f"<|{i * 0.02:.2f}|>" for i in range(1501)]
    return text, specials


def build_tiny_whisper(directory: Path) -> Path:
    """An English-only Whisper model whose decoder is a fixed bigram table (see the module docstring)."""
    from ctranslate2.specs import whisper_spec
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    directory.mkdir(parents=True, exist_ok=True)
    text, specials = _vocabulary()
    tokens = text + specials
    ids = {token: i for i, token in enumerate(tokens)}
    rng = np.random.default_rng(0)

    def w(*shape: int) -> Any:
        return rng.normal(0, 0.1, shape).astype(np.float32)

    def ones() -> Any:
        return np.ones(D, np.float32)

    def zeros(*shape: int) -> Any:
        return np.zeros(shape or (D,), np.float32)

    spec = whisper_spec.WhisperSpec(1, 2, 1, 2)
    enc, dec = spec.encoder, spec.decoder
    enc.conv1.weight, enc.conv1.bias = w(D, N_MELS, 3), w(D)
    enc.conv2.weight, enc.conv2.bias = w(D, D, 3), w(D)
    enc.position_encodings.encodings = w(1500, D)
    enc.layer_norm.gamma, enc.layer_norm.beta = ones(), zeros()
    layer = enc.layer[0]
    for norm in (layer.self_attention.layer_norm, layer.ffn.layer_norm):
        norm.gamma, norm.beta = ones(), zeros()
    layer.self_attention.linear[0].weight, layer.self_attention.linear[1].weight = w(3 * D, D), w(D, D)
    layer.ffn.linear_0.weight, layer.ffn.linear_1.weight = w(FFN, D), w(D, FFN)

    # Decoder: every residual branch writes zeros, so the final state is the previous token's embedding.
    layer = dec.layer[0]
    for norm in (layer.self_attention.layer_norm, layer.attention.layer_norm, layer.ffn.layer_norm):
        norm.gamma, norm.beta = ones(), zeros()
    layer.self_attention.linear[0].weight, layer.self_attention.linear[1].weight = w(3 * D, D), zeros(D, D)
    layer.attention.linear[0].weight = w(D, D)
    layer.attention.linear[1].weight = w(2 * D, D)
    layer.attention.linear[2].weight = zeros(D, D)
    layer.ffn.linear_0.weight, layer.ffn.linear_1.weight = w(FFN, D), zeros(D, FFN)
    dec.position_encodings.encodings = zeros(448, D)
    dec.layer_norm.gamma, dec.layer_norm.beta = ones(), zeros()

    script = {  # previous token -> next token; every other token is "state 0", which ends the text
        "<|startoftranscript|>": "<|0.00|>",
        "<|notimestamps|>": "Ġhello",
        "<|0.00|>": "Ġhello",
        "Ġhello": "Ġworld",
        "Ġworld": "<|2.00|>",
    }
    embeddings = np.zeros((len(tokens), D), np.float32)
    embeddings[:, 0] = 1.0
    projection = np.zeros((len(tokens), D), np.float32)
    projection[ids["<|endoftext|>"]] += 10 * (np.eye(D, dtype=np.float32)[0] - 1 / D)
    for state, (previous, following) in enumerate(script.items(), start=1):
        one_hot = np.eye(D, dtype=np.float32)[state]
        embeddings[ids[previous]] = one_hot
        projection[ids[following]] += 10 * (one_hot - 1 / D)
    dec.embeddings.weight, dec.projection.weight = embeddings, projection

    spec.register_vocabulary(tokens)
    spec.config.suppress_ids = []
    spec.config.suppress_ids_begin = [ids["Ġ"], ids["<|endoftext|>"]]
    spec.config.lang_ids = [ids["<|en|>"]]
    spec.config.alignment_heads = [[0, 0], [0, 1]]
    spec.validate()
    spec.optimize(quantization=None)
    spec.save(str(directory))

    tokenizer = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(text)}, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(specials)
    tokenizer.save(str(directory / "tokenizer.json"))
    preprocessor = {"feature_size": N_MELS, "sampling_rate": 16000, "hop_length": 160, "chunk_length": 30}
    (directory / "preprocessor_config.json").write_text(json.dumps({**preprocessor, "n_fft": 400}))
    return directory


@dataclass(frozen=True)
class MediaKind:
    """How to write one format: container, audio codec and sample format, and a video codec or none."""

    suffix: str
    audio_codec: str | None
    sample_format: str = "fltp"
    video_codec: str | None = None
    container: str | None = None


MEDIA = {
    "wav": MediaKind(".wav", "pcm_s16le", "s16"),
    "mp3": MediaKind(".mp3", "libmp3lame", "s32p"),
    "flac": MediaKind(".flac", "flac", "s16"),
    "mp4": MediaKind(".mp4", "aac", "fltp", video_codec="mpeg4"),
    "webm": MediaKind(".webm", "libopus", "flt", video_codec="libvpx"),
    "mp4-silent": MediaKind(".mp4", None, video_codec="mpeg4"),
}
RATE = 16000
_SCALE = {"s16": 2**15 - 1, "s32": 2**31 - 1}


def _samples(tone: Any, sample_format: str) -> Any:
    base = sample_format.rstrip("p")
    if base in _SCALE:
        return (tone * _SCALE[base]).astype(np.int16 if base == "s16" else np.int32)
    return tone.astype(np.float32)


def write_media(path: Path, kind: MediaKind, seconds: float = 3.0) -> Path:
    """A ``seconds`` long 440 Hz tone (and black 64x64 frames when ``kind`` has video), written with PyAV."""
    import av

    packets: list[Any] = []
    with av.open(str(path), "w", format=kind.container) as out:
        video = None
        if kind.video_codec is not None:
            video = out.add_stream(kind.video_codec, rate=10)
            video.width, video.height, video.pix_fmt = 64, 64, "yuv420p"
            black = av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")
            for index in range(int(10 * seconds)):
                black.pts = index
                packets += video.encode(black)
        if kind.audio_codec is not None:
            audio = out.add_stream(kind.audio_codec, rate=RATE)
            audio.layout = "mono"
            audio.format = kind.sample_format
            size = audio.codec_context.frame_size or 1024
            count = int(RATE * seconds)
            tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(count) / RATE)
            tone = np.pad(tone, (0, -len(tone) % size))
            for start in range(0, len(tone), size):
                chunk = _samples(tone[None, start : start + size], kind.sample_format)
                frame = av.AudioFrame.from_ndarray(chunk, format=kind.sample_format, layout="mono")
                frame.sample_rate, frame.pts = RATE, start
                packets += audio.encode(frame)
            packets += audio.encode()
        if video is not None:
            packets += video.encode()
        for packet in packets:
            out.mux(packet)
    return path
