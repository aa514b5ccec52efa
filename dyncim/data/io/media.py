"""Decoding audio and video with PyAV (FFmpeg's libraries, shipped inside the `av` wheel).

- `decode_audio(path, sample_rate)`: a float32 waveform in [-1, 1], resampled by libswresample
  (FFmpeg's resampler: what `ffmpeg -ar 16000`, the peers' Kinetics-Sounds preprocessing, uses) and
  reduced to one channel (the mean of the channels, as `librosa.load(mono=True)` does, or one
  channel by index, as `torchaudio.compliance.kaldi.fbank` does with a multi-channel waveform).
- `decode_frames(path, fps, max_frames, size)`: RGB frames sampled at `fps` frames per second of
  video, each the decoded frame nearest the middle of its interval (OGM-GE's `video2frame-1fps.py`
  takes frame round((i + 0.5) * fps)), counting only complete intervals (a 2.5 s clip gives 2
  frames at 1 fps, a 3.0 s clip 3; at least one), thinned to `max_frames` evenly spaced ones, and
  resized by libswscale to a fixed size (the whole picture, aspect not kept: the peers' test-time
  `Resize((224, 224))`); the display aspect ratio of the source is returned so that training crops
  can follow the source's geometry (`dyncim.data.sets.augment`).
- `encode_video` / `encode_wav` / `write_synthetic_layout`: small synthetic media (solid colours
  changing once a second, a sine tone) in the real layouts, for tests and benchmarks; no data set
  is ever downloaded by them.

Decoding errors raise `MediaError` naming the file.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np


class MediaError(RuntimeError):
    """A file that cannot be decoded as needed (missing, no such stream, corrupt, empty)."""


def _open(path):
    import av
    path = Path(path)
    if not path.is_file():
        raise MediaError(f"{path}: no such file")
    try:
        return av.open(str(path))
    except Exception as e:  # av.error.FFmpegError and its many subclasses
        raise MediaError(f"{path}: cannot open ({type(e).__name__}: {e})") from None


# ---- audio -------------------------------------------------------------------------------------

def decode_audio(path: str | Path, sample_rate: int | None = None, channel: str | int = "mean",
                 max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    """(waveform float32 of shape (n,), sample rate) of the first audio stream of `path`.

    `sample_rate`: resample to this rate (None: keep the file's). `channel`: "mean" (the average of
    the channels) or an index (0: the first/left one). `max_seconds`: stop after that much audio
    (the rest is not decoded). Samples are in the file's scale (int16 PCM / 32768, float as is).
    """
    import av
    with _open(path) as c:
        if not c.streams.audio:
            raise MediaError(f"{path}: no audio stream")
        stream = c.streams.audio[0]
        # keep the channel layout: channels are reduced here, not by libswresample, whose stereo
        # to mono matrix for float output is (L + R) / sqrt(2), not the mean
        resampler = av.AudioResampler(format="fltp", rate=sample_rate)
        chunks, n, limit, rate = [], 0, None, sample_rate
        try:
            for frame in c.decode(stream):
                for out in resampler.resample(frame):
                    rate = out.sample_rate
                    if limit is None and max_seconds is not None:
                        limit = int(round(max_seconds * rate))
                    a = out.to_ndarray()
                    chunks.append(a)
                    n += a.shape[1]
                if limit is not None and n >= limit:
                    break
            else:
                for out in resampler.resample(None):
                    chunks.append(out.to_ndarray())
                    rate = out.sample_rate
        except av.error.FFmpegError as e:
            raise MediaError(f"{path}: audio decoding failed ({type(e).__name__}: {e})") from None
    if not chunks or sum(a.shape[1] for a in chunks) == 0:
        raise MediaError(f"{path}: the audio stream holds no samples")
    x = np.concatenate(chunks, axis=1)
    if limit is not None:
        x = x[:, :limit]
    if channel == "mean":
        wave = x.mean(axis=0, dtype=np.float32) if x.shape[0] > 1 else x[0]
    else:
        if not isinstance(channel, int) or not -x.shape[0] <= channel < x.shape[0]:
            raise MediaError(f"{path}: channel {channel!r} asked for, the audio has {x.shape[0]}")
        wave = x[channel]
    return np.ascontiguousarray(wave, dtype=np.float32), int(rate)


# ---- video -------------------------------------------------------------------------------------

@dataclass
class Frames:
    """Frames sampled from a video: `images` (n, H, W, 3) uint8 RGB at the requested size."""
    images: np.ndarray
    times: np.ndarray  # seconds from the first frame, of each sampled frame
    duration: float  # seconds of video (last frame's time + one frame)
    width: int  # source picture size in pixels
    height: int
    aspect: float  # source display aspect ratio (width / height, sample aspect ratio applied)
    # with `successors`: per sampled frame, two consecutive decoded frames (n, 2, H, W, 3) for
    # optical flow: the frame and the next one (the one before it for a clip's very last frame)
    pairs: np.ndarray | None = None


def frame_slots(duration: float, fps: float) -> int:
    """How many whole 1/fps intervals a clip of `duration` seconds holds (at least 1)."""
    return max(1, int(math.floor(duration * fps + 1e-6)))


def evenly_spaced(n: int, k: int | None) -> list[int]:
    """`k` indices out of range(n), evenly spaced and including both ends (all of them if n <= k)."""
    if k is None or n <= k:
        return list(range(n))
    if k == 1:
        return [(n - 1) // 2]
    return [int(i) for i in np.round(np.linspace(0, n - 1, k)).astype(int)]


def decode_frames(path: str | Path, fps: float = 1.0, max_frames: int | None = 3,
                  size: tuple[int, int] | None = (224, 224),
                  interpolation: str = "BILINEAR", successors: bool = False) -> Frames:
    """Sample frames at `fps` (see the module docstring) from the first video stream of `path`,
    each converted to RGB and resized to `size` = (height, width) (None: keep the source size).
    `successors`: also keep the decoded frame after each sampled one (`Frames.pairs`, for flow).

    Decodes the stream once, keeping at most one decoded frame per interval, so memory does not
    grow with the clip's length.
    """
    import av
    with _open(path) as c:
        if not c.streams.video:
            raise MediaError(f"{path}: no video stream")
        stream = c.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or Fraction(25)
        best: dict[int, tuple[float, float, object]] = {}  # interval -> (distance, time, frame)
        after: dict[int, object] = {}  # interval -> the frame decoded after its best one
        before: dict[int, object] = {}  # interval -> the frame decoded before its best one
        t0, last, count, prev, pending = None, None, 0, None, None
        try:
            for frame in c.decode(stream):
                if pending is not None:  # decoders emit frames in display order: this one is next
                    after[pending], pending = frame, None
                t = frame.time if frame.time is not None else count / float(rate)
                if t0 is None:
                    t0 = t
                t -= t0
                count += 1
                last = t if last is None else max(last, t)
                k = int(math.floor(t * fps + 1e-9))
                d = abs(t - (k + 0.5) / fps)
                if k not in best or d < best[k][0]:
                    best[k] = (d, t, frame)
                    if successors:
                        after.pop(k, None)
                        before[k], pending = prev, k
                prev = frame if successors else None
        except av.error.FFmpegError as e:
            if not best:
                raise MediaError(f"{path}: video decoding failed ({type(e).__name__}: {e})") from None
            # a damaged tail: keep the frames decoded so far (FFmpeg's own tools do the same)
        if not best:
            raise MediaError(f"{path}: the video stream holds no frames")
        duration = last + 1.0 / float(rate)
        slots = [k for k in sorted(best) if k < frame_slots(duration, fps)] or sorted(best)[:1]
        chosen = [slots[i] for i in evenly_spaced(len(slots), max_frames)]
        ref = best[chosen[0]][2]
        width, height = ref.width, ref.height
        sar = stream.codec_context.sample_aspect_ratio
        aspect = width / height * (float(sar) if sar else 1.0)
        images = []
        for k in chosen:
            frame = best[k][2]
            if size is None:
                images.append(frame.to_ndarray(format="rgb24"))
            else:
                images.append(frame.reformat(width=size[1], height=size[0], format="rgb24",
                                             interpolation=interpolation).to_ndarray())
        times = np.array([best[k][1] for k in chosen], dtype=np.float64)
        pairs = None
        if successors:
            def rgb(frame):
                if size is None:
                    return frame.to_ndarray(format="rgb24")
                return frame.reformat(width=size[1], height=size[0], format="rgb24",
                                      interpolation=interpolation).to_ndarray()
            pairs = []
            for k, img in zip(chosen, images):
                if after.get(k) is not None:
                    pairs.append((img, rgb(after[k])))
                elif before.get(k) is not None:
                    pairs.append((rgb(before[k]), img))
                else:  # a one-frame video: no motion to measure
                    pairs.append((img, img))
            pairs = np.stack([np.stack(p) for p in pairs])
    return Frames(np.stack(images), times, float(duration), int(width), int(height), float(aspect), pairs)


# ---- synthetic media (tests, benchmarks) --------------------------------------------------------

# colour of second k of a synthetic video: PALETTE[k % len(PALETTE)]
PALETTE = np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200], [200, 200, 30], [30, 200, 200]],
                   dtype=np.uint8)


def tone(seconds: float, sample_rate: int, freq: float = 440.0, amplitude: float = 0.5,
         channels: int = 1) -> np.ndarray:
    """A sine tone, float32 (channels, n)."""
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    x = (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.tile(x, (channels, 1))


def colour_frames(seconds: float, fps: int, height: int, width: int, palette=PALETTE,
                  texture: float = 0.0, seed: int = 0) -> np.ndarray:
    """(n, H, W, 3) uint8: palette[k] during second k, with a small white square moving across
    the top edge (so that encoders see motion); `texture` > 0 adds a fixed random texture of that
    amplitude drifting one pixel per frame (so that a clip costs about what a real one costs
    to encode and decode)."""
    n = int(round(seconds * fps))
    out = np.empty((n, height, width, 3), dtype=np.uint8)
    tex = None
    if texture:
        rng = np.random.default_rng(seed)
        tex = rng.normal(0.0, texture, (height, width + n, 1)).astype(np.float32)
    for i in range(n):
        base = palette[int(i // fps) % len(palette)].astype(np.float32)
        if tex is None:
            out[i] = base.astype(np.uint8)
        else:
            out[i] = np.clip(base + tex[:, i:i + width], 0, 255).astype(np.uint8)
        x = (i * 4) % max(1, width - 8)
        out[i, :8, x:x + 8] = 255
    return out


def _encode_audio(container, stream, wave: np.ndarray, sample_rate: int, layout: str) -> None:
    import av
    step = 4096
    for s in range(0, wave.shape[1], step):
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(wave[:, s:s + step], dtype=np.float32),
                                           format="fltp", layout=layout)
        frame.sample_rate = sample_rate
        frame.pts = s
        for p in stream.encode(frame):
            container.mux(p)
    for p in stream.encode():
        container.mux(p)


def encode_wav(path: str | Path, wave: np.ndarray, sample_rate: int) -> Path:
    """Write float (channels, n) or (n,) samples as 16-bit PCM WAV."""
    import av
    wave = np.atleast_2d(np.asarray(wave, dtype=np.float32))
    layout = {1: "mono", 2: "stereo"}[wave.shape[0]]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="wav") as c:
        stream = c.add_stream("pcm_s16le", rate=sample_rate, layout=layout)
        _encode_audio(c, stream, wave, sample_rate, layout)
    return path


def encode_video(path: str | Path, frames: np.ndarray, fps: int, codec: str = "flv",
                 container_format: str | None = None, audio: np.ndarray | None = None,
                 sample_rate: int = 44100, audio_codec: str = "aac",
                 bit_rate: int | None = None) -> Path:
    """Encode (n, H, W, 3) uint8 RGB frames (and optionally float (channels, n) audio) with PyAV.
    `codec`: "flv" (Sorenson H.263, CREMA-D's VideoFlash files), "mpeg4", "h264"."""
    import av
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format=container_format) as c:
        vs = c.add_stream(codec, rate=fps)
        vs.height, vs.width = frames.shape[1:3]
        vs.pix_fmt = "yuv420p"
        if bit_rate:
            vs.bit_rate = bit_rate
        astream = layout = None
        if audio is not None:
            audio = np.atleast_2d(np.asarray(audio, dtype=np.float32))
            layout = {1: "mono", 2: "stereo"}[audio.shape[0]]
            astream = c.add_stream(audio_codec, rate=sample_rate, layout=layout)
        for img in frames:
            for p in vs.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")):
                c.mux(p)
        for p in vs.encode():
            c.mux(p)
        if astream is not None:
            _encode_audio(c, astream, audio, sample_rate, layout)
    return path


@dataclass(frozen=True)
class SyntheticClip:
    clip: str
    label: str
    split: str
    audio: str
    video: str


def write_synthetic_layout(root: str | Path, layout: str, n: int, labels=("a", "b", "c"),
                           seconds: float | list[float] = 2.5, size: tuple[int, int] = (360, 480),
                           fps: int = 30, splits=("train", "val", "test"), seed: int = 0,
                           texture: float = 0.0, bit_rate: int | None = None) -> list[SyntheticClip]:
    """`n` small synthetic clips under `root` in a real data set's layout; returns their records
    (the fields of `dyncim.data.io.download.Clip`).

    - "crema-d": `AudioWAV/<clip>.wav` (16 kHz mono PCM, a tone) + `VideoFlash/<clip>.flv`
      (Sorenson H.263 at `fps`, 480 x 360 by default, with an MP3 track as the originals have).
    - "kinetics-sounds": `<split>/<label>/<clip>.mp4` (MPEG-4 part 2 video + stereo AAC at 44.1 kHz).
    Clip i has label labels[i % len(labels)], split splits[i % len(splits)], a tone whose pitch
    depends on the label, and `seconds` (one value, or one per clip) of video and audio.
    `texture`, `bit_rate`: see `colour_frames`, `encode_video` (CREMA-D's FLVs: about 1 Mbit/s).
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        label, split = labels[i % len(labels)], splits[i % len(splits)]
        secs = seconds[i] if isinstance(seconds, (list, tuple)) else seconds
        freq = 220.0 * (1 + labels.index(label)) + float(rng.integers(0, 50))
        frames = colour_frames(secs, fps, *size, palette=np.roll(PALETTE, i, axis=0), texture=texture,
                               seed=seed * 100003 + i)
        if layout == "crema-d":
            clip = f"{1001 + i // 12:04d}_S{i % 12:02d}_{label}_XX"
            wav = encode_wav(root / "AudioWAV" / f"{clip}.wav", tone(secs, 16000, freq), 16000)
            vid = encode_video(root / "VideoFlash" / f"{clip}.flv", frames, fps, "flv",
                               audio=tone(secs, 22050, freq), sample_rate=22050, audio_codec="mp3",
                               bit_rate=bit_rate)
        elif layout == "kinetics-sounds":
            clip = f"clip{i:05d}_{int(rng.integers(0, 10**6)):06d}"
            vid = wav = encode_video(root / split / label / f"{clip}.mp4", frames, fps, "mpeg4",
                                     audio=tone(secs, 44100, freq, channels=2), sample_rate=44100,
                                     bit_rate=bit_rate)
        else:
            raise ValueError(f"layout {layout!r}: expected crema-d or kinetics-sounds")
        out.append(SyntheticClip(clip, label, split, str(wav), str(vid)))
    return out
