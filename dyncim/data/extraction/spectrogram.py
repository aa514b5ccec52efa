"""Audio features with `torch.stft` / `torch.fft` and one mel filterbank, written once here.

Two recipes, as the peers compute them (each a frozen dataclass: JSON-able parameters, called on a
float waveform tensor of shape (..., n) at its `sample_rate`, batched over leading dimensions, on
any device):

- `LogSTFT` (CREMA-D, OGM-GE's `CramedDataset`): the waveform at 22,050 Hz tiled and cut to 3 s,
  clipped to [-1, 1], `librosa.stft(n_fft=512, hop_length=353)` (periodic Hann window, centred
  frames, zero padding: librosa >= 0.10's defaults), log(|S| + 1e-7): 257 x 188 (freq x time).
- `KaldiFbank` (Kinetics-Sounds, the AST recipe that the peers copy):
  `torchaudio.compliance.kaldi.fbank(w, htk_compat=True, sample_frequency=16000, use_energy=False,
  window_type='hanning', num_mel_bins=128, dither=0.0, frame_shift=10)`: 25 ms frames every 10 ms
  (snip_edges), DC offset removed per frame, pre-emphasis 0.97, Hann window (symmetric), zero
  padded to 512, power spectrum, 128 triangular filters equally spaced on Kaldi's mel scale
  1127 ln(1 + f / 700) between 20 Hz and Nyquist (triangles linear in mel, not in Hz), log with a
  floor of float32's epsilon; then zero-padded / cut to 1,024 frames and normalised as
  (x + 4.503877) / (5.141276 * 2): 1024 x 128 (time x freq, the layout the peers feed the model).
  The peers pass `window_type='hanning'`; torchaudio's default, Kaldi's "povey" (Hann ** 0.85), is
  one argument away (`window="povey"`).

Why not torchaudio (`compliance.kaldi.fbank`, `transforms.MelSpectrogram`): its wheels are built
against one torch release each and load only beside it (torchaudio 2.11.1, the newest, fails to
load its `_torchaudio.so` with torch 2.13.0, and no torchaudio exists for 2.13), and the project
pins torch==2.13.0; the same holds for torchvision (see `dyncim.data.sets.augment`). The two recipes
need only an STFT, a window and one filterbank, so they are written here and tested against
independent implementations: librosa's STFT (a test-only dependency) for `LogSTFT`, and a
from-first-principles numpy Kaldi fbank for `KaldiFbank` (librosa's mel filters, even with
htk=True, are triangles in Hz, not Kaldi's triangles in mel).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

KALDI_EPS = float(torch.finfo(torch.float32).eps)  # torchaudio's log floor (1.1920929e-07)


# ---- waveform length ---------------------------------------------------------------------------

def fit_length(wave: torch.Tensor, n: int, mode: str = "tile") -> torch.Tensor:
    """Make the last dimension exactly `n` samples long: "tile" repeats the waveform (OGM-GE:
    np.tile(x, 3)[:3 * sr], repeated further if a clip is shorter than a third of `n`), "pad"
    appends zeros; both cut a longer waveform."""
    m = wave.shape[-1]
    if m == 0:
        raise ValueError("empty waveform")
    if m < n:
        if mode == "tile":
            wave = wave.repeat(*([1] * (wave.dim() - 1)), -(-n // m))
        elif mode == "pad":
            wave = torch.nn.functional.pad(wave, (0, n - m))
        else:
            raise ValueError(f"mode {mode!r}: expected tile or pad")
    return wave[..., :n]


def fit_frames(feat: torch.Tensor, n: int, dim: int = -2) -> torch.Tensor:
    """Zero-pad or cut dimension `dim` of a feature map to `n` (the AST/peers' 1,024-frame rule)."""
    dim = dim % feat.dim()
    m = feat.shape[dim]
    if m >= n:
        return feat.narrow(dim, 0, n)
    pad = [0, 0] * (feat.dim() - dim - 1) + [0, n - m]
    return torch.nn.functional.pad(feat, pad)


# ---- STFT --------------------------------------------------------------------------------------

def stft_magnitude(wave: torch.Tensor, n_fft: int, hop: int, center: bool = True,
                   pad_mode: str = "constant") -> torch.Tensor:
    """|STFT| with a periodic Hann window of n_fft samples: (..., n_fft // 2 + 1, frames), as
    librosa.stft(y, n_fft, hop_length, window="hann", center, pad_mode) computes it."""
    window = torch.hann_window(n_fft, periodic=True, dtype=wave.dtype, device=wave.device)
    shape = wave.shape
    spec = torch.stft(wave.reshape(-1, shape[-1]), n_fft=n_fft, hop_length=hop, window=window,
                      center=center, pad_mode=pad_mode, return_complex=True)
    return spec.abs().reshape(*shape[:-1], *spec.shape[-2:])


@dataclass(frozen=True)
class LogSTFT:
    """CREMA-D's audio recipe (OGM-GE): see the module docstring."""
    sample_rate: int = 22050
    seconds: float = 3.0
    fit: str = "tile"
    clip: float | None = 1.0
    n_fft: int = 512
    hop: int = 353
    eps: float = 1e-7
    center: bool = True
    pad_mode: str = "constant"
    kind: str = "log_stft"
    # seconds skipped before the window (VGGSound: OGM-GE draws a 5 s window starting in [0, 5] s
    # of the tiled clip; the store keeps the middle one, 2.5 s); the waveform is tiled to
    # start + seconds first. Left out of to_dict at 0, so the other recipes' plans are unchanged.
    start: float = 0.0

    @property
    def n_samples(self) -> int:
        return int(round(self.seconds * self.sample_rate))

    @property
    def n_skip(self) -> int:
        return int(round(self.start * self.sample_rate))

    @property
    def shape(self) -> tuple[int, int]:
        """(freq, time) of one output."""
        n = self.n_samples
        frames = 1 + n // self.hop if self.center else 1 + (n - self.n_fft) // self.hop
        return (self.n_fft // 2 + 1, frames)

    def __call__(self, wave: torch.Tensor) -> torch.Tensor:
        x = fit_length(wave, self.n_skip + self.n_samples, self.fit)[..., self.n_skip:]
        if self.clip is not None:
            x = x.clamp(-self.clip, self.clip)
        return torch.log(stft_magnitude(x, self.n_fft, self.hop, self.center, self.pad_mode) + self.eps)

    def to_dict(self) -> dict:
        d = asdict(self)
        if not d["start"]:
            del d["start"]
        return d


# ---- Kaldi filterbank --------------------------------------------------------------------------

def kaldi_mel(f):
    """Kaldi's (and HTK's) mel scale: 1127 ln(1 + f / 700)."""
    return 1127.0 * (torch.log1p(f / 700.0) if torch.is_tensor(f) else math.log1p(f / 700.0))


def kaldi_mel_banks(n_mels: int, n_fft: int, sample_rate: float, low_freq: float = 20.0,
                    high_freq: float = 0.0, dtype=torch.float32, device=None) -> torch.Tensor:
    """Kaldi's triangular mel filters, (n_mels, n_fft // 2 + 1): filter m rises linearly in mel
    from edge m to centre m + 1 and falls to edge m + 2, the n_mels + 2 edges equally spaced in mel
    between low_freq and high_freq (<= 0: Nyquist + high_freq); the weights are taken at the FFT
    bins' frequencies k * sr / n_fft; the Nyquist bin's weight is 0, as in Kaldi."""
    nyquist = 0.5 * sample_rate
    if high_freq <= 0.0:
        high_freq += nyquist
    if not 0.0 <= low_freq < high_freq <= nyquist:
        raise ValueError(f"mel range {low_freq}..{high_freq} Hz: expected 0 <= low < high <= {nyquist}")
    lo, hi = kaldi_mel(low_freq), kaldi_mel(high_freq)
    delta = (hi - lo) / (n_mels + 1)
    m = torch.arange(n_mels, dtype=torch.float64).unsqueeze(1)
    left, centre, right = lo + m * delta, lo + (m + 1) * delta, lo + (m + 2) * delta
    mel = kaldi_mel(torch.arange(n_fft // 2, dtype=torch.float64) * (sample_rate / n_fft)).unsqueeze(0)
    banks = torch.clamp(torch.minimum((mel - left) / (centre - left), (right - mel) / (right - centre)),
                        min=0.0)
    banks = torch.nn.functional.pad(banks, (0, 1))  # the Nyquist bin
    return banks.to(dtype=dtype, device=device)


def kaldi_window(kind: str, n: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """Kaldi's analysis windows (symmetric): hanning, povey (hanning ** 0.85), hamming, rectangular."""
    if kind == "hanning":
        return torch.hann_window(n, periodic=False, dtype=dtype, device=device)
    if kind == "povey":
        return torch.hann_window(n, periodic=False, dtype=dtype, device=device).pow(0.85)
    if kind == "hamming":
        return torch.hamming_window(n, periodic=False, alpha=0.54, beta=0.46, dtype=dtype, device=device)
    if kind == "rectangular":
        return torch.ones(n, dtype=dtype, device=device)
    raise ValueError(f"window {kind!r}: expected hanning, povey, hamming or rectangular")


def kaldi_fbank(wave: torch.Tensor, sample_rate: float = 16000.0, n_mels: int = 128,
                frame_length_ms: float = 25.0, frame_shift_ms: float = 10.0, window: str = "hanning",
                preemphasis: float = 0.97, remove_dc_offset: bool = True, low_freq: float = 20.0,
                high_freq: float = 0.0, floor: float = KALDI_EPS) -> torch.Tensor:
    """Log mel filterbank energies, (..., frames, n_mels), with the semantics of
    torchaudio.compliance.kaldi.fbank at dither=0, snip_edges=True, round_to_power_of_two=True,
    use_power=True, use_log_fbank=True, use_energy=False (see the module docstring)."""
    win = int(sample_rate * frame_length_ms * 0.001)
    shift = int(sample_rate * frame_shift_ms * 0.001)
    n_fft = 1 << (win - 1).bit_length()
    if wave.shape[-1] < win:
        raise ValueError(f"waveform of {wave.shape[-1]} samples: shorter than one {win}-sample frame")
    frames = wave.unfold(-1, win, shift)  # (..., F, win), snip_edges
    if remove_dc_offset:
        frames = frames - frames.mean(-1, keepdim=True)
    if preemphasis:
        frames = torch.cat([frames[..., :1] * (1.0 - preemphasis),
                            frames[..., 1:] - preemphasis * frames[..., :-1]], dim=-1)
    frames = frames * kaldi_window(window, win, frames.dtype, frames.device)
    power = torch.fft.rfft(frames, n=n_fft).abs().pow(2)  # (..., F, n_fft // 2 + 1)
    banks = kaldi_mel_banks(n_mels, n_fft, sample_rate, low_freq, high_freq, power.dtype, power.device)
    return torch.clamp(power @ banks.T, min=floor).log()


@dataclass(frozen=True)
class KaldiFbank:
    """Kinetics-Sounds' audio recipe (AST's, as the peers use it): see the module docstring."""
    sample_rate: int = 16000
    n_mels: int = 128
    frames: int = 1024
    window: str = "hanning"
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    preemphasis: float = 0.97
    low_freq: float = 20.0
    norm_mean: float = -4.503877
    norm_std: float = 5.141276
    kind: str = "kaldi_fbank"

    @property
    def shape(self) -> tuple[int, int]:
        """(time, freq) of one output."""
        return (self.frames, self.n_mels)

    def __call__(self, wave: torch.Tensor) -> torch.Tensor:
        # the peers subtract the waveform's mean first: a no-op here, as every frame's DC offset
        # is removed before anything else
        fb = kaldi_fbank(wave, self.sample_rate, self.n_mels, self.frame_length_ms, self.frame_shift_ms,
                         self.window, self.preemphasis, True, self.low_freq)
        return (fit_frames(fb, self.frames, -2) - self.norm_mean) / (self.norm_std * 2)

    def to_dict(self) -> dict:
        return asdict(self)


AUDIO_KINDS = {"log_stft": LogSTFT, "kaldi_fbank": KaldiFbank}


def audio_recipe_from_dict(d: dict):
    """The inverse of `.to_dict()` of either recipe."""
    d = dict(d)
    cls = AUDIO_KINDS.get(d.get("kind"))
    if cls is None:
        raise ValueError(f"audio recipe kind {d.get('kind')!r}: expected one of {sorted(AUDIO_KINDS)}")
    return cls(**d)
