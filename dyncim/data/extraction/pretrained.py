"""Frozen pretrained encoders for the image + text sets (Food-101, MM-IMDb), loaded through Hugging
Face `transformers` (the optional extra `paper`): one text model (BERT family) and one ImageNet
image model, used once to turn each sample into two feature vectors (dyncim.data.extraction.image_text).

Text: the tokenizer and model of `text_model` (`AutoTokenizer`, `AutoModel`), texts truncated to
`MAX_TOKENS` tokens; the feature is the mean of the last hidden state over the real tokens (the
attention mask; padding left out), float32 (hidden size,): 768 for bert-base-uncased.

Image: decoded with PIL and converted to RGB, the shorter side resized to 256 (bilinear), the
central 224 x 224 cropped, scaled to [0, 1] and normalised with ImageNet's mean and std; that is
the ImageNet evaluation transform of torchvision's reference recipe (and what microsoft/resnet-50's
image processor does: shortest edge 224 / crop_pct 0.875 = 256, then the 224 crop), written with
PIL + numpy because torchvision does not install beside the pinned torch. The feature is the
model's pooled output, flattened (ResNetModel: the global average pool, 2,048 for resnet-50; a ViT:
its pooler's output), float32.

`text_model` / `image_model` are hub names or local folders (what `save_pretrained` writes);
`*_revision` pins a hub commit. Nothing is trained: the models run in eval mode, under
`torch.inference_mode`, on CUDA when there is one.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EXTRA = "paper"   # the optional dependency group that installs transformers
MAX_TOKENS = 512  # BERT's position limit
RESIZE, CROP = 256, 224
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def _missing() -> ImportError:
    return ImportError(f"the image + text sets (food-101, mm-imdb) extract features with Hugging Face "
                       f"transformers, which is not installed: pip install -e '.[{EXTRA}]'")


def check_transformers() -> None:
    """Fail early (the media step, before indexing the files) when transformers is not installed,
    without importing it (seconds)."""
    import importlib.util
    if importlib.util.find_spec("transformers") is None:
        raise _missing()


def require_transformers():
    """The transformers module, or an error naming the extra that installs it."""
    try:
        import transformers
    except ImportError:
        raise _missing() from None
    return transformers


def image_input(path) -> np.ndarray:
    """One image file as the model input: float32 (3, 224, 224), ImageNet-normalised (see the
    module docstring). Raises OSError / PIL errors for a file that cannot be decoded."""
    from PIL import Image
    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        s = RESIZE / min(w, h)
        size = (max(CROP, round(w * s)), max(CROP, round(h * s)))
        im = im.resize(size, Image.Resampling.BILINEAR)
        left, top = (size[0] - CROP) // 2, (size[1] - CROP) // 2
        im = im.crop((left, top, left + CROP, top + CROP))
        x = np.asarray(im, dtype=np.float32) / 255.0
    return ((x - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1).copy()


@dataclass
class FrozenEncoders:
    """The text and image models of one extraction, in eval mode on `device`."""
    tokenizer: object
    text: object
    image: object
    device: object
    info: dict   # names, revisions, resolved commits, transformers version, feature sizes

    @property
    def dims(self) -> dict[str, int]:
        return {"text": self.info["text_dim"], "image": self.info["image_dim"]}

    def encode_text(self, texts: list[str]) -> np.ndarray:
        import torch
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=MAX_TOKENS,
                             return_tensors="pt").to(self.device)
        with torch.inference_mode():
            h = self.text(**enc).last_hidden_state.float()
            mask = enc["attention_mask"].unsqueeze(-1).float()
            feats = (h * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        return feats.cpu().numpy().astype(np.float32)

    def encode_images(self, pixels: np.ndarray) -> np.ndarray:
        import torch
        with torch.inference_mode():
            out = self.image(pixel_values=torch.from_numpy(pixels).to(self.device))
            pooled = getattr(out, "pooler_output", None)
            if pooled is None:
                pooled = out.last_hidden_state[:, 0]
            return pooled.float().flatten(1).cpu().numpy().astype(np.float32)


def load_encoders(text_model: str, image_model: str, text_revision: str | None = None,
                  image_revision: str | None = None, device=None) -> FrozenEncoders:
    """The frozen text and image models (see the module docstring); `device`: None = CUDA when
    there is one."""
    import torch
    transformers = require_transformers()
    from transformers import AutoModel, AutoTokenizer
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        tok = AutoTokenizer.from_pretrained(text_model, revision=text_revision)
        text = AutoModel.from_pretrained(text_model, revision=text_revision)
    except OSError as e:
        raise OSError(f"media.text_model {text_model!r}: cannot load it ({e})") from None
    try:
        image = AutoModel.from_pretrained(image_model, revision=image_revision)
    except OSError as e:
        raise OSError(f"media.image_model {image_model!r}: cannot load it ({e})") from None
    text.eval().to(device)
    image.eval().to(device)
    info = {"text_model": text_model, "text_revision": text_revision,
            "text_commit": getattr(text.config, "_commit_hash", None),
            "image_model": image_model, "image_revision": image_revision,
            "image_commit": getattr(image.config, "_commit_hash", None),
            "transformers": transformers.__version__,
            "text_dim": int(text.config.hidden_size)}
    enc = FrozenEncoders(tok, text, image, device, info)
    info["image_dim"] = int(enc.encode_images(np.zeros((1, 3, CROP, CROP), dtype=np.float32)).shape[1])
    return enc
