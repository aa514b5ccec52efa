"""PyAV decoding: small WAV / FLV / MP4 files encoded here from tones and solid-colour frames."""
import numpy as np
import pytest

from dyncim.data.io import media as M

SIZE = (48, 64)  # (height, width) of the synthetic pictures: 4:3 like CREMA-D's 480 x 360


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    stereo = np.stack([M.tone(1.0, 44100, 440.0)[0], M.tone(1.0, 44100, 1000.0)[0]])
    return {
        "wav": M.encode_wav(d / "tone.wav", M.tone(1.0, 44100, 440.0), 44100),
        "stereo": M.encode_wav(d / "stereo.wav", stereo, 44100),
        # CREMA-D's video: Sorenson H.263 in FLV (with an MP3 track, as the originals have)
        "flv": M.encode_video(d / "clip.flv", M.colour_frames(2.5, 10, *SIZE), 10, "flv",
                              audio=M.tone(2.5, 22050), sample_rate=22050, audio_codec="mp3"),
        # Kinetics' clips: MP4 with video and stereo AAC
        "mp4": M.encode_video(d / "clip.mp4", M.colour_frames(5.0, 10, *SIZE), 10, "mpeg4",
                              audio=M.tone(5.0, 44100, channels=2), sample_rate=44100),
        "h264": M.encode_video(d / "clip_h264.mp4", M.colour_frames(1.0, 10, *SIZE), 10, "h264"),
        "garbage": _write(d / "garbage.flv", b"FLV\x01 this is not a video" * 10),
    }


def _write(path, data):
    path.write_bytes(data)
    return path


def _peak_hz(x, sr):
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.argmax(spec) * sr / len(x)


def test_wav_native_rate(files):
    x, sr = M.decode_audio(files["wav"])
    assert sr == 44100 and x.dtype == np.float32 and x.shape == (44100,)
    assert abs(np.abs(x).max() - 0.5) < 1e-3  # int16 PCM comes back in [-1, 1]
    assert abs(_peak_hz(x, sr) - 440.0) < 2.0


@pytest.mark.parametrize("rate", [22050, 16000])
def test_wav_resampled(files, rate):
    x, sr = M.decode_audio(files["wav"], rate)
    assert sr == rate and abs(len(x) - rate) <= 2  # 1 s of audio
    assert abs(_peak_hz(x, sr) - 440.0) < 2.0
    assert abs(np.abs(x[rate // 10:-rate // 10]).max() - 0.5) < 0.01


def test_audio_channels(files):
    left, _ = M.decode_audio(files["stereo"], 16000, channel=0)
    right, _ = M.decode_audio(files["stereo"], 16000, channel=1)
    mean, _ = M.decode_audio(files["stereo"], 16000)
    assert abs(_peak_hz(left, 16000) - 440) < 2 and abs(_peak_hz(right, 16000) - 1000) < 2
    np.testing.assert_allclose(mean, (left + right) / 2, atol=1e-6)
    with pytest.raises(M.MediaError, match="channel 2"):
        M.decode_audio(files["stereo"], channel=2)


def test_audio_of_a_video_file(files):
    x, sr = M.decode_audio(files["mp4"], 16000)
    assert sr == 16000 and abs(len(x) / sr - 5.0) < 0.1  # AAC adds up to a frame of padding
    assert abs(_peak_hz(x, sr) - 440.0) < 2.0
    y, _ = M.decode_audio(files["mp4"], 16000, max_seconds=1.0)
    assert len(y) == 16000


def test_flv_frames_at_1fps(files):
    fr = M.decode_frames(files["flv"], fps=1.0, max_frames=3, size=(224, 224))
    # 2.5 s of video: two whole seconds, frames nearest 0.5 s and 1.5 s
    assert fr.images.shape == (2, 224, 224, 3) and fr.images.dtype == np.uint8
    np.testing.assert_allclose(fr.times, [0.5, 1.5], atol=0.051)
    assert abs(fr.duration - 2.5) < 0.01
    assert (fr.width, fr.height) == (SIZE[1], SIZE[0]) and abs(fr.aspect - 4 / 3) < 1e-6
    for k in range(2):  # second k is PALETTE[k] (the moving white square is in the top rows)
        centre = fr.images[k, 100:200, 50:180].reshape(-1, 3).mean(0)
        np.testing.assert_allclose(centre, M.PALETTE[k], atol=12)


def test_mp4_frames_evenly_thinned(files):
    fr = M.decode_frames(files["mp4"], fps=1.0, max_frames=3, size=(32, 32))
    # five whole seconds -> slots 0..4, three evenly spaced: 0, 2, 4
    np.testing.assert_allclose(fr.times, [0.5, 2.5, 4.5], atol=0.051)
    assert fr.images.shape == (3, 32, 32, 3)
    for img, k in zip(fr.images, (0, 2, 4)):
        np.testing.assert_allclose(img[16:, :].reshape(-1, 3).mean(0), M.PALETTE[k], atol=12)
    full = M.decode_frames(files["mp4"], max_frames=None, size=None)
    assert full.images.shape == (5, *SIZE, 3)


def test_h264_and_short_clip(files):
    fr = M.decode_frames(files["h264"], size=(16, 16))
    assert fr.images.shape == (1, 16, 16, 3)  # 1 s: one frame


def test_errors_name_the_file(files, tmp_path):
    with pytest.raises(M.MediaError, match="no such file"):
        M.decode_audio(tmp_path / "missing.wav")
    with pytest.raises(M.MediaError, match="no video stream"):
        M.decode_frames(files["wav"])
    with pytest.raises(M.MediaError, match="garbage.flv"):
        M.decode_frames(files["garbage"])
    with pytest.raises(M.MediaError, match="garbage.flv"):
        M.decode_audio(files["garbage"])


def test_frame_slot_rules():
    assert M.frame_slots(2.5, 1.0) == 2 and M.frame_slots(3.0, 1.0) == 3 and M.frame_slots(0.4, 1.0) == 1
    assert M.evenly_spaced(10, 3) == [0, 4, 9]  # numpy rounds 4.5 to even
    assert M.evenly_spaced(2, 3) == [0, 1] and M.evenly_spaced(5, 1) == [2] and M.evenly_spaced(4, None) == [0, 1, 2, 3]
