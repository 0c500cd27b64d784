"""The real faster-whisper path on CPU, with a tiny "scripted" model the test builds in milliseconds.

Recipe: ../shared/research/whisper.md, beside the repository. The model is built with numpy,
ctranslate2's WhisperSpec and tokenizers (all installed with faster-whisper); its decoder ignores
the audio and always says ``<|0.00|> hello world <|2.00|>``, so the assertions are exact. Skipped
when the ``audio`` extra is missing.
"""

from __future__ import annotations

import json
import math
import os
import struct
import wave
from pathlib import Path
from typing import Any

import pytest

from morag_worker.core.processing import CorruptInput, ProcessorRegistry, media, no_progress

pytestmark = pytest.mark.unit

pytest.importorskip("faster_whisper", reason="the 'audio' extra (faster-whisper) is not installed")
np = pytest.importorskip("numpy")

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


def sine_wav(path: Path, seconds: float = 3.0, rate: int = 16000) -> Path:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        frames = (int(8000 * math.sin(2 * math.pi * 440 * i / rate)) for i in range(int(seconds * rate)))
        out.writeframes(b"".join(struct.pack("<h", f) for f in frames))
    return path


def mp4(path: Path, *, with_audio: bool, seconds: int = 3) -> Path:
    """A small MPEG-4 video (black frames), with or without a 440 Hz AAC track, written with PyAV."""
    import av

    with av.open(str(path), "w") as out:
        video = out.add_stream("mpeg4", rate=10)
        video.width, video.height, video.pix_fmt = 64, 64, "yuv420p"
        black = av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")
        packets = [p for _ in range(10 * seconds) for p in video.encode(black)]
        if with_audio:
            audio = out.add_stream("aac", rate=16000)
            audio.layout = "mono"
            size = audio.codec_context.frame_size or 1024
            tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(16000 * seconds) / 16000)).astype(np.float32)
            tone = np.pad(tone, (0, -len(tone) % size))
            for start in range(0, len(tone), size):
                chunk = tone[None, start : start + size]
                frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
                frame.sample_rate, frame.pts = 16000, start
                packets += audio.encode(frame)
            packets += audio.encode()
        packets += video.encode()
        for packet in packets:
            out.mux(packet)
    return path


@pytest.fixture(scope="module")
def whisper_registry(tmp_path_factory: pytest.TempPathFactory) -> ProcessorRegistry:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model is local; never wait on the hub
    model = build_tiny_whisper(tmp_path_factory.mktemp("tiny-whisper"))
    registry = ProcessorRegistry()
    transcriber = media.FasterWhisperTranscriber(
        str(model), device="cpu", compute_type="float32", cpu_threads=2
    )
    media.register(registry, transcriber)
    return registry


def test_the_extra_is_detected() -> None:
    assert media.is_available()
    registry = ProcessorRegistry.default(entry_points=[])
    assert {"audio", "video"} <= set(registry.supported())


def test_a_wav_is_transcribed_by_faster_whisper(whisper_registry: ProcessorRegistry, tmp_path: Path) -> None:
    clip = sine_wav(tmp_path / "tone.wav")
    calls: list[tuple[float, float | None, str]] = []
    processor = whisper_registry.resolve(None, None, clip)
    content = processor.process(clip, {}, lambda done, total, message: calls.append((done, total, message)))
    assert content.markdown == "[00:00:00] hello world\n"
    assert content.metadata["language"] == "en" and content.metadata["segments"] == 1
    assert content.metadata["duration"] == pytest.approx(3.0)
    assert calls[0][:2] == (0, None) and calls[1][:2] == (2.0, pytest.approx(3.0))


def test_garbage_audio_is_corrupt_input(whisper_registry: ProcessorRegistry, tmp_path: Path) -> None:
    junk = tmp_path / "junk.mp3"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(CorruptInput, match="the audio file is damaged or not an audio or video file"):
        whisper_registry.resolve(None, None, junk).process(junk, {}, no_progress)


def test_a_video_is_transcribed_and_one_without_sound_refused(
    whisper_registry: ProcessorRegistry, tmp_path: Path
) -> None:
    talk = mp4(tmp_path / "talk.mp4", with_audio=True)
    processor = whisper_registry.resolve("video/mp4", None, talk)
    content = processor.process(talk, {"timestamps": False}, no_progress)
    assert content.markdown == "hello world\n" and content.metadata["format"] == "video"
    silent = mp4(tmp_path / "silent.mp4", with_audio=False)
    with pytest.raises(CorruptInput, match="the video file has no audio track to transcribe"):
        whisper_registry.resolve(None, None, silent).process(silent, {}, no_progress)
