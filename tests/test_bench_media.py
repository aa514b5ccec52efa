"""`dyncim.bench.media`'s loaders (not its timings): the peers' JPEG loader against the store path on
a few tiny synthetic CREMA-D clips."""
import numpy as np
import pytest
import torch

from dyncim.bench import media as B
from dyncim.data.extraction import extract as E
from dyncim.data.io import media as M
from dyncim.data.io.store import open_split
from dyncim.data.sets.augment import FrameAugment

N = 4
CLASSES = ("NEU", "HAP", "SAD", "FEA", "DIS", "ANG")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench_media")
    # 2.5 s at 10 fps, 96 x 72 (4:3 like CREMA-D): 2 frames at 1 fps, padded to the recipe's 3 slots
    clips = B.synthetic_crema_d(d / "raw", N, size=(72, 96), fps=10, texture=0.0, bit_rate=None)
    out = E.extract_split(clips, "crema-d", d / "features" / "train", classes=CLASSES, workers=0,
                          progress=False)
    folders = B.write_jpeg_frames(clips, d / "jpeg")
    return clips, open_split(out), folders, d


def _loaders(data, wav="scipy"):
    clips, split, folders, _ = data
    recipe = E.get_recipe("crema-d")
    aug = FrameAugment(224, generator=torch.Generator().manual_seed(0))
    peers = B.JpegLoader(folders, [c.audio for c in clips], split.labels, recipe, aug, wav=wav)
    return B.store_loader(split, aug), peers


def test_jpeg_files_are_the_1fps_frames_at_source_size(data):
    clips, _, folders, _ = data
    from PIL import Image
    for f in folders:
        files = sorted(p.name for p in f.iterdir())
        assert files == ["00000.jpg", "00001.jpg"]
        with Image.open(f / files[0]) as im:
            assert im.size == (96, 72) and im.mode == "RGB"


@pytest.mark.parametrize("train", [True, False])
def test_peers_batches_match_the_store_path(data, train):
    store, peers = _loaders(data)
    idx = np.arange(N)
    fs, as_, ls = store(idx, train)
    fj, aj, lj = peers(idx, train)
    assert fs.shape == fj.shape == (N, 3, 3, 224, 224) and fs.dtype == fj.dtype == torch.float32
    assert as_.shape == aj.shape == (N, 257, 188) and as_.dtype == aj.dtype == torch.float32
    assert torch.equal(ls, lj) and ls.dtype == lj.dtype == torch.int64
    assert torch.isfinite(fj).all() and torch.isfinite(aj).all()
    if not train:
        # the same frames (evenly spaced, last one repeated), here from the source-size JPEG
        # resized at load time, there resized at extraction by libswscale: close, not equal
        assert (fs - fj).abs().mean() < 0.05


def test_audio_equals_the_store_with_the_stores_decoder(data):
    # wav="pyav": the store's own decoder and resampler, so only the store's float16 differs
    store, peers = _loaders(data, wav="pyav")
    _, a_store, _ = store(np.arange(N), False)
    _, a_peers, _ = peers(np.arange(N), False)
    torch.testing.assert_close(a_peers, a_store, atol=1e-2, rtol=2e-3)


def test_audio_close_to_the_store_with_scipys_resampler(data):
    # the default (scipy's polyphase resampler, standing in for librosa's soxr) differs from
    # libswresample in the stopband, which the log magnifies in near-empty bins: compare magnitudes
    store, peers = _loaders(data)
    _, a_store, _ = store(np.arange(N), False)
    _, a_peers, _ = peers(np.arange(N), False)
    s, p = a_store.exp(), a_peers.exp()
    peak = s.amax(dim=(1, 2), keepdim=True)
    assert ((s - p).abs() / peak).max() < 0.01
    loud = s > peak / 100  # within 40 dB of each clip's peak
    assert (a_store - a_peers)[loud].abs().max() < 0.05


def test_read_wav_scales_and_averages_as_librosa(tmp_path):
    stereo = np.stack([M.tone(0.5, 16000, 440.0)[0], M.tone(0.5, 16000, 1000.0)[0]])
    path = M.encode_wav(tmp_path / "s.wav", stereo, 16000)
    ours, _ = M.decode_audio(path)  # PyAV: int16 / 32768, channels averaged
    np.testing.assert_allclose(B.read_wav(path, 16000), ours, atol=1e-6)
    assert abs(len(B.read_wav(path, 22050)) - 11025) <= 1


def test_bench_loading_writes_jpegs_once_and_reports_three_rates(data, monkeypatch):
    from PIL import Image
    clips, split, _, d = data
    events = []  # ("save" | "open", path), in call order
    save, open_ = Image.Image.save, Image.open

    def counted_save(self, fp, *a, **k):
        events.append(("save", str(fp)))
        return save(self, fp, *a, **k)

    def counted_open(fp, *a, **k):
        events.append(("open", str(fp)))
        return open_(fp, *a, **k)
    monkeypatch.setattr(Image.Image, "save", counted_save)
    monkeypatch.setattr(Image, "open", counted_open)
    res = B.bench_loading(clips, split.path, batch_size=4, min_seconds=0.05, jpeg_dir=d / "timed")
    files = sorted(str(p) for p in (d / "timed").rglob("*.jpg"))
    saves = [p for e, p in events if e == "save"]
    # every file written exactly once, all before the first one is read (the timed loop only reads)
    assert sorted(saves) == files and len(files) == res["jpeg_files_written"] == 2 * N
    first_open = next(i for i, (e, _) in enumerate(events) if e == "open")
    assert all(e == "save" for e, _ in events[:first_open]) and len(saves) == first_open
    assert len(events) - first_open >= 3 * res["jpeg_samples"] > 0  # 3 slots per sample
    for k in ("store", "jpeg", "decode"):
        assert res[f"{k}_samples_per_s"] > 0 and res[f"{k}_samples_per_cpu_s"] > 0
    assert res["ratio"] == pytest.approx(res["store_samples_per_s"] / res["jpeg_samples_per_s"])
    assert res["ratio_vs_decode"] == pytest.approx(res["store_samples_per_s"] / res["decode_samples_per_s"])
    assert res["ratio_cpu"] == pytest.approx(res["store_samples_per_cpu_s"] / res["jpeg_samples_per_cpu_s"])
