"""Spectrograms against independent implementations: librosa's STFT (CREMA-D's log-STFT recipe)
and a Kaldi filterbank written from first principles with numpy below (librosa's mel filters,
even with htk=True, are triangles in Hz, while Kaldi's are triangles in mel, so librosa cannot
serve as the fbank reference; its mel scale is checked against Kaldi's on its own)."""
import math

import librosa
import numpy as np
import pytest
import torch

from dyncim.data.io import media as M
from dyncim.data.extraction import spectrogram as S


def _signal(seconds, sr, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    x = 0.4 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 2500 * t) + 0.05 * rng.standard_normal(len(t))
    return x


def test_log_stft_matches_librosa():
    sr = 22050
    x = _signal(2.2, sr).astype(np.float32)
    recipe = S.LogSTFT()
    ours = recipe(torch.from_numpy(x)).numpy()
    # OGM-GE's CramedDataset, verbatim in effect
    y = np.tile(x, 3)[:sr * 3]
    y = np.clip(y, -1.0, 1.0)
    ref = np.log(np.abs(librosa.stft(y, n_fft=512, hop_length=353, center=True, pad_mode="constant")) + 1e-7)
    assert ours.shape == ref.shape == recipe.shape == (257, 188)
    assert np.abs(ours - ref).max() < 2e-3  # float32 FFTs of two libraries
    ref64 = np.log(np.abs(librosa.stft(y.astype(np.float64), n_fft=512, hop_length=353, pad_mode="constant")) + 1e-7)
    ours64 = recipe(torch.from_numpy(x.astype(np.float64))).numpy()
    assert np.abs(ours64 - ref64).max() < 1e-8


def test_log_stft_of_a_decoded_wav_against_reference(tmp_path):
    """One CREMA-D-style spectrogram end to end: WAV at 44.1 kHz, decoded and resampled to
    22,050 Hz by PyAV, then ours vs librosa on the same samples, at reference points too."""
    wav = M.encode_wav(tmp_path / "a.wav", _signal(1.3, 44100)[None] * 0.9, 44100)
    x, sr = M.decode_audio(wav, 22050)
    assert sr == 22050
    ours = S.LogSTFT()(torch.from_numpy(x)).numpy()
    y = np.clip(np.tile(x, 3)[:66150], -1, 1)
    ref = np.log(np.abs(librosa.stft(y, n_fft=512, hop_length=353, pad_mode="constant")) + 1e-7)
    assert np.abs(ours - ref).max() < 2e-3
    # the 440 Hz tone sits in bin round(440 / (22050 / 512)) = 10, the 2500 Hz one in bin 58
    mid = ours[:, 20:160].mean(1)
    assert set(np.argsort(mid)[-2:]) <= {10, 58, 57, 59, 9, 11} and mid[10] > mid[100] + 3


def test_fit_length():
    x = torch.arange(5.0)
    assert S.fit_length(x, 12).tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]
    assert S.fit_length(x, 7, "pad").tolist() == [0, 1, 2, 3, 4, 0, 0]
    assert S.fit_length(x, 3).tolist() == [0, 1, 2]
    f = torch.ones(3, 4)
    assert S.fit_frames(f, 5, 0).shape == (5, 4) and S.fit_frames(f, 5, 0)[3:].abs().sum() == 0
    assert S.fit_frames(f, 2, 0).shape == (2, 4)


# ---- Kaldi fbank reference, from first principles ----------------------------------------------

def kaldi_fbank_reference(x, sr=16000, n_mels=128, window="hanning"):
    """Kaldi's compute-fbank-feats (dither 0, snip edges, remove DC, pre-emphasis 0.97, power
    spectrum, mel triangles in mel between 20 Hz and Nyquist, log) in plain numpy float64 loops."""
    win, shift, nfft = int(sr * 0.025), int(sr * 0.010), 512
    n_frames = 1 + (len(x) - win) // shift
    n = np.arange(win)
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * n / (win - 1))
    w = hann if window == "hanning" else hann ** 0.85
    mel = lambda f: 1127.0 * math.log(1.0 + f / 700.0)  # noqa: E731
    lo, hi = mel(20.0), mel(sr / 2)
    delta = (hi - lo) / (n_mels + 1)
    banks = np.zeros((n_mels, nfft // 2 + 1))
    for m in range(n_mels):
        left, centre, right = lo + m * delta, lo + (m + 1) * delta, lo + (m + 2) * delta
        for k in range(nfft // 2):  # Kaldi leaves the Nyquist bin out
            z = mel(k * sr / nfft)
            if left < z < right:
                banks[m, k] = (z - left) / (centre - left) if z <= centre else (right - z) / (right - centre)
    out = np.empty((n_frames, n_mels))
    eps = np.finfo(np.float32).eps
    for i in range(n_frames):
        f = x[i * shift:i * shift + win].astype(np.float64)
        f = f - f.mean()
        f = np.concatenate([[f[0] - 0.97 * f[0]], f[1:] - 0.97 * f[:-1]])
        spec = np.abs(np.fft.rfft(np.concatenate([f * w, np.zeros(nfft - win)]))) ** 2
        out[i] = np.log(np.maximum(banks @ spec, eps))
    return out


@pytest.mark.parametrize("window", ["hanning", "povey"])
def test_kaldi_fbank_matches_first_principles(window):
    x = _signal(0.5, 16000, seed=1)
    ref = kaldi_fbank_reference(x, window=window)
    ours64 = S.kaldi_fbank(torch.from_numpy(x), window=window).numpy()
    assert ours64.shape == ref.shape == (48, 128)
    assert np.abs(ours64 - ref).max() < 1e-9
    ours32 = S.kaldi_fbank(torch.from_numpy(x.astype(np.float32)), window=window).numpy()
    assert np.abs(ours32 - ref).max() < 1e-3


def test_kaldi_mel_scale_is_htk_mel():
    f = np.array([0.0, 20.0, 700.0, 1000.0, 4000.0, 8000.0])
    # HTK's 2595 log10(1 + f / 700) is Kaldi's 1127 ln(1 + f / 700) to 5e-6 (2595 / ln 10 = 1126.994)
    np.testing.assert_allclose([S.kaldi_mel(float(v)) for v in f], librosa.hz_to_mel(f, htk=True), rtol=1e-5)
    banks = S.kaldi_mel_banks(128, 512, 16000)
    assert banks.shape == (128, 257) and banks[:, -1].abs().sum() == 0 and banks.min() >= 0
    # 128 filters on 31.25 Hz FFT bins: the lowest few are narrower than a bin and empty (as in AST)
    assert 0 < int((banks.sum(1) == 0).sum()) < 8


def test_kinetics_sounds_recipe_pads_and_normalises():
    r = S.KaldiFbank()
    x = torch.from_numpy(_signal(4.0, 16000).astype(np.float32))
    out = r(x)
    assert out.shape == (1024, 128) == r.shape
    n = 1 + (64000 - 400) // 160  # 398 frames of audio, then zero rows, normalised
    torch.testing.assert_close(out[n:], torch.full((1024 - n, 128), 4.503877 / (5.141276 * 2)))
    raw = S.kaldi_fbank(x)
    torch.testing.assert_close(out[:n], (raw + 4.503877) / (5.141276 * 2))
    long = torch.from_numpy(_signal(11.0, 16000).astype(np.float32))
    assert r(long).shape == (1024, 128)
    batch = torch.stack([x, x * 0.5])
    torch.testing.assert_close(r(batch)[1], r(x * 0.5))  # batched over leading dimensions


def test_recipes_round_trip_through_dicts():
    for rec in (S.LogSTFT(), S.KaldiFbank(window="povey")):
        assert S.audio_recipe_from_dict(rec.to_dict()) == rec
    with pytest.raises(ValueError, match="kind"):
        S.audio_recipe_from_dict({"kind": "mfcc"})
