"""Training and evaluation straight from a feature store (`dyncim.data.io.store`): `MediaSet`, the
store-backed counterpart of `FeatureSet`; both are data sets of the protocol
`dyncim.data.sets.dataset.DataSet` (names, n_classes, labels, split, corrupted, multilabel, index, to,
subset, shapes, `batch(idx, train, generator)` for the model inputs, and what the robustness
sweep corrupts the inputs with).

One index space over the store's train / val / test split folders, in that order, with the split
codes of FeatureSet (train 0, val 1, test 2); clips that failed to decode (index `ok=0`, zero rows)
are left out. The modalities are the store's arrays (`frames` is called `visual`), ordered text,
audio, visual, vision, then any other by name. Each array's kind follows from its dtype and shape:

  frames       uint8 (T, H, W, 3), stored channels-last: a batch is gathered as uint8, moved to
               the device and transformed there by `dyncim.data.sets.augment.FrameAugment`: training
               batches get a random resized crop and flip per frame (crop shapes drawn in the
               clip's source aspect, from the store's index) drawn from the generator the trainer
               passes (its state is saved with the run); evaluation batches the whole picture.
               Either way normalised with ImageNet's mean/std: float32 (B, T, 3, S, S), S = H.
  spectrogram  float16 (F, T) or (1, F, T): float32 (B, 1, F, T), converted on the device.
  sequence     float32 (T, d) (CMU-MOSEI, `dyncim.data.sources.mosei.write_mosei_store`): as stored.
  flow         uint8 (T, H, W, 2), optical flow (UCF-101, `dyncim.data.extraction.flow`: 128 = no motion),
               stored channels-last: transformed on the device by `dyncim.data.sets.augment.FlowAugment`
               (training: crop and flip per field, a flip negating the x component; evaluation:
               the whole field), de-quantised to flow / bound in [-1, 1]: float32 (B, T, 2, S, S).
  vector       float32 (d,) (frozen pretrained features, `dyncim.data.extraction.image_text`): as stored; the
               model input is a feature vector (shape: the int d), so `encoder: auto` picks the MLP.

Labels: class indices (int64), or for a multi-label store (meta.json `multilabel`) multi-hot
float32 (N, C) targets; `multilabel` says which.

Where the data lives: moved to a CUDA device (`to`), every array that fits in `resident_fraction`
of the device's free memory (smallest first) is copied there once, in its stored dtype (uint8 /
float16: 2-4x smaller than the model inputs), and batches are gathered on the device; any other
array stays memory-mapped and each batch is gathered on the host into pinned memory and copied
asynchronously. On the CPU, batches are gathered from the memory maps.

Robustness (dyncim.evaluation.robustness): the unit of a modality is the std of its *model inputs* on train,
and a missing modality is every input value at their train mean: the mean and std of every input
value over (up to) the first 512 train samples in index order, evaluation transform
(`dyncim.data.sets.dataset.input_stats`, computed once per set and device); for frames, the
ImageNet-normalised pixel values; for spectrograms, the log-magnitudes (log |STFT| or log
filterbank energies, as stored); for sequences and vectors, the stored features. The noise is
drawn per sample, shaped like one sample's input, from a generator seeded by (noise seed,
modality index, the sample's position in the test split): it does not depend on the method, the
run, the chunking or the device (drawn on the host).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .augment import FlowAugment, FrameAugment
from ..io import store as S
from .dataset import corrupt_modality, input_stats
from ..io.splits import SPLITS

ORDER = ("text", "audio", "frames", "vision")
RENAME = {"frames": "visual"}
CHUNK_BYTES = 256 << 20  # host staging per copy when an array is moved onto the device whole


def array_kind(name: str, shape: tuple, dtype) -> str:
    dt = np.dtype(dtype)
    if dt == np.uint8 and len(shape) == 4 and shape[-1] == 3:
        return "frames"
    if dt == np.uint8 and len(shape) == 4 and shape[-1] == 2:
        return "flow"
    if dt == np.float16 and (len(shape) == 2 or (len(shape) == 3 and shape[0] == 1)):
        return "spectrogram"
    if dt == np.float32 and len(shape) == 2:
        return "sequence"
    if dt == np.float32 and len(shape) == 1:
        return "vector"
    raise ValueError(f"array {name!r} of {dt} {tuple(shape)} per sample: expected frames (uint8 (T, H, W, 3)), "
                     f"a spectrogram (float16 (F, T) or (1, F, T)), a sequence (float32 (T, d)) or a vector (float32 (d,))")


@dataclass
class Modality:
    name: str                   # the modality's name (what logs and results call it)
    array: str                  # the store's array
    kind: str                   # frames, spectrogram, sequence or vector
    parts: tuple                # per split (train, val, test): the store's array (memory map)
    sample_shape: tuple         # stored shape of one sample
    dtype: torch.dtype          # stored dtype
    resident: torch.Tensor | None = None  # every sample of the set, in set order, on the device

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.sample_shape, dtype=np.int64)) * self.parts[0].dtype.itemsize

    @property
    def input_shape(self) -> tuple:
        """Per-sample shape of the model input."""
        if self.kind in ("frames", "flow"):
            T, H, _, C = self.sample_shape
            return (T, C, H, H)
        if self.kind == "spectrogram" and len(self.sample_shape) == 2:
            return (1, *self.sample_shape)
        if self.kind == "vector":
            return int(self.sample_shape[0])   # an int: vector features, as FeatureSet.shapes
        return tuple(self.sample_shape)


def _device(device) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


class MediaSet:
    """The samples of a feature store as one data set (see the module docstring)."""

    corrupted = None  # per-sample corruption codes exist for the synthetic sets only

    def __init__(self, mods: list[Modality], classes: list[str], labels: torch.Tensor, split: torch.Tensor,
                 aspect: torch.Tensor, part: np.ndarray, row: np.ndarray, clips: list[str],
                 device="cpu", resident_fraction: float = 0.5):
        self.mods, self.classes = list(mods), list(classes)
        self.names = [m.name for m in self.mods]
        self.n_classes = len(self.classes)
        self.device = _device(device)
        self.labels, self.split, self.aspect = (t.to(self.device) for t in (labels, split, aspect))
        self.part, self.row, self.clips = part, row, clips  # host: which store split and row each sample is
        self.resident_fraction = resident_fraction
        self._input_stats = None   # corruption_stats, once computed

    def __len__(self) -> int:
        return len(self.row)

    @property
    def multilabel(self) -> bool:
        return self.labels.dim() == 2

    @property
    def views(self):
        raise AttributeError("a MediaSet holds no feature tensors: read model inputs with batch(idx)")

    @property
    def shapes(self) -> list[tuple]:
        return [m.input_shape for m in self.mods]

    @property
    def resident(self) -> list[bool]:
        """Per modality: whether its samples are held on the device."""
        return [m.resident is not None for m in self.mods]

    def index(self, part: str) -> torch.Tensor:
        return torch.nonzero(self.split == SPLITS.index(part)).squeeze(1)

    def _like(self, mods, device) -> "MediaSet":
        return MediaSet(mods, self.classes, self.labels, self.split, self.aspect, self.part, self.row,
                        self.clips, device, self.resident_fraction)

    def to(self, device) -> "MediaSet":
        device = _device(device)
        if device == self.device:
            return self
        out = self._like([replace(m, resident=None) for m in self.mods], device)
        if device.type == "cuda":
            out._upload()
        return out

    def subset(self, modalities: list[int]) -> "MediaSet":
        return self._like([self.mods[m] for m in modalities], self.device)

    # --- reading ------------------------------------------------------------------------------
    def _host_rows(self, m: Modality, hidx: np.ndarray) -> torch.Tensor:
        """Samples `hidx` of modality m, gathered from the memory maps into one (pinned, when the
        device is CUDA) host tensor in their stored dtype and shape."""
        part, row = self.part[hidx], self.row[hidx]
        buf = torch.empty((len(hidx), *m.sample_shape), dtype=m.dtype, pin_memory=self.device.type == "cuda")
        out = buf.numpy()
        for p in np.unique(part):
            sel = part == p
            if sel.all():
                np.take(m.parts[p], row, axis=0, out=out, mode="clip")  # rows are in range: no check
            else:
                out[sel] = m.parts[p][row[sel]]
        return buf

    def _upload(self) -> None:
        """Copy every modality that fits into `resident_fraction` of free device memory."""
        free, _ = torch.cuda.mem_get_info(self.device)
        budget = self.resident_fraction * free
        n = len(self)
        for m in sorted(self.mods, key=lambda m: m.row_bytes):
            need = m.row_bytes * n
            if need > budget:
                continue
            t = torch.empty((n, *m.sample_shape), dtype=m.dtype, device=self.device)
            step = max(1, CHUNK_BYTES // m.row_bytes)
            for a in range(0, n, step):
                t[a:a + step].copy_(self._host_rows(m, np.arange(a, min(n, a + step))), non_blocking=True)
            m.resident = t
            budget -= need

    def raw(self, idx: torch.Tensor) -> list[torch.Tensor]:
        """Each modality's stored samples `idx`, on the device, in their stored dtype and shape."""
        idx = torch.as_tensor(idx, device=self.device)
        hidx, out = None, []
        for m in self.mods:
            if m.resident is not None:
                out.append(m.resident[idx])
                continue
            if hidx is None:
                hidx = idx.cpu().numpy()
            x = self._host_rows(m, hidx)
            out.append(x if self.device.type == "cpu" else x.to(self.device, non_blocking=True))
        return out

    def batch(self, idx: torch.Tensor, train: bool = False, generator: torch.Generator | None = None
              ) -> list[torch.Tensor]:
        """Each modality's model input for the samples `idx` (see the module docstring); `train`
        augments the frames with crops and flips drawn from `generator` (None: torch's default)."""
        idx = torch.as_tensor(idx, device=self.device)
        xs = []
        for m, x in zip(self.mods, self.raw(idx)):
            if m.kind == "frames":
                aug = FrameAugment(size=m.sample_shape[1])
                x = aug(x.movedim(-1, -3), train, self.aspect[idx] if train else 1.0, generator)
            elif m.kind == "flow":
                x = FlowAugment(size=m.sample_shape[1])(x.movedim(-1, -3), train,
                                                        self.aspect[idx] if train else 1.0, generator)
            else:
                x = x.float()
                if x.dim() == 3 and m.kind == "spectrogram":
                    x = x.unsqueeze(1)
            xs.append(x)
        return xs

    # --- the robustness sweep (dyncim.data.sets.dataset; see the module docstring) ------------------
    def corruption_stats(self) -> list[dict]:
        """Per modality the train mean and std of its model inputs and the number of samples
        they are taken over (`input_stats`), computed on the first call."""
        if self._input_stats is None:
            self._input_stats = input_stats(self)
        return self._input_stats

    def corruption_noise(self, m: int, pos: torch.Tensor, n: int, seed: int) -> torch.Tensor:
        """One unit draw per sample (`sample_noise`; `n` plays no part)."""
        shape = self.shapes[m]
        return sample_noise((len(pos), *((shape,) if isinstance(shape, int) else shape)), pos, m, seed
                            ).to(self.device)

    def corrupt(self, xs: list[torch.Tensor], m: int, level, noise: torch.Tensor | None = None
                ) -> list[torch.Tensor]:
        return corrupt_modality(xs, m, level, self.corruption_stats()[m], noise)

    def corruption_record(self) -> dict:
        what = {"frames": "ImageNet-normalised pixel values", "spectrogram": "log-magnitudes",
                "sequence": "stored sequence features", "flow": "optical flow / its bound"}
        kinds = "; ".join(f"{m.name}: {what.get(m.kind, m.kind)}" for m in self.mods)
        stats = self.corruption_stats()
        n = stats[0]["n_samples"] if stats else 0
        return {"unit": f"noise std in units of the modality's train input std (every model-input value of the "
                        f"first {n} train samples, evaluation transform; {kinds}); missing = every input value "
                        f"at the modality's train input mean (input_stats)",
                "input_stats": dict(zip(self.names, stats))}


def sample_noise(shape: tuple, pos, m: int, seed: int) -> torch.Tensor:
    """Unit Gaussian noise of `shape` (one row per sample), on the host, row i drawn from a
    generator seeded by (seed, m, pos[i]): pos = the samples' positions in the test split, m =
    the modality's index in the data set. The same values whatever the chunking, order, method or
    device. (numpy's SeedSequence keys the stream with every bit; torch's CPU generator keeps
    only the low 32 bits of its seed.)"""
    out = np.empty(tuple(shape), dtype=np.float32)
    for i, p in enumerate(torch.as_tensor(pos).tolist()):
        np.random.default_rng([seed, m, p]).standard_normal(out=out[i], dtype=np.float32)
    return torch.from_numpy(out)


def open_media(root: str | Path, resident_fraction: float = 0.5, mmap: bool = True) -> MediaSet:
    """The MediaSet of the store under `root` (`root/train`, `root/val`, `root/test`), on the CPU
    (move it with `.to(device)`); errors name the folder and what is wrong."""
    root = Path(root)
    splits = S.open_store(root, SPLITS, mmap)
    first = splits["train"]
    for sp in splits.values():
        if sp.classes != first.classes:
            raise ValueError(f"{sp.path}: classes {sp.classes} differ from {first.path}'s {first.classes}")
        shapes = {k: a.shape[1:] for k, a in sp.arrays.items()}
        if shapes != {k: a.shape[1:] for k, a in first.arrays.items()}:
            raise ValueError(f"{sp.path}: arrays {shapes} differ from {first.path}'s")
    keep = [np.flatnonzero(sp.ok) for sp in splits.values()]
    for sp, k in zip(splits.values(), keep):
        if len(k) == 0:
            raise ValueError(f"{sp.path}: no usable sample (every clip failed to decode)")
    part = np.concatenate([np.full(len(k), p, dtype=np.int8) for p, k in enumerate(keep)])
    row = np.concatenate(keep).astype(np.int64)
    labels = np.concatenate([sp.labels[k] for sp, k in zip(splits.values(), keep)])
    aspect = np.concatenate([sp.aspect[k] for sp, k in zip(splits.values(), keep)]).astype(np.float32)
    aspect[~(aspect > 0)] = 1.0  # no frames (or no aspect recorded): the stored picture's geometry
    clips = [sp.clips[i] for sp, k in zip(splits.values(), keep) for i in k]
    names = sorted(first.arrays, key=lambda a: (ORDER.index(a) if a in ORDER else len(ORDER), a))
    mods = []
    for a in names:
        arr = first.arrays[a]
        mods.append(Modality(RENAME.get(a, a), a, array_kind(a, arr.shape[1:], arr.dtype),
                             tuple(sp.arrays[a] for sp in splits.values()), tuple(arr.shape[1:]),
                             torch.from_numpy(np.empty(0, dtype=arr.dtype)).dtype))
    return MediaSet(mods, first.classes, torch.from_numpy(labels), torch.from_numpy(part.copy()),
                    torch.from_numpy(aspect), part, row, clips, "cpu", resident_fraction)


def load_data(path: str | Path, resident_fraction: float = 0.5):
    """A data configuration's data: a store (its folder, or the JSON summary the pipeline writes
    in it when it is complete: a MediaSet) or a feature file (FeatureSet)."""
    path = Path(path)
    if path.suffix == ".json":
        path = path.parent
    if path.is_dir():
        return open_media(path, resident_fraction)
    from .feature_set import load
    return load(path)
