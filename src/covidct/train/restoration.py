"""What ``task: pretrain`` changes in the one training path: self-supervised image restoration.

A network is first trained to undo random distortions of unlabeled CT slices, then fine-tuned on the
labelled data with ``model.weights: <pretrain run>/model.keras`` (same ``model.name``, ``model.kwargs`` and
input), which copies the weights in layer by layer (``load_pretrained``):

- a **segmenter** (an encoder-decoder with one output map, e.g. ``unet``) restores as it is; every layer
  is handed over;
- a **slice classifier** restores through ``restoration_network``: its backbone (up to its last spatial
  layer) plus a small decoder; the backbone is handed over, the classifier's head starts random.

The objective is Models Genesis (Zhou et al., "Models Genesis", Medical Image Analysis 2021,
arXiv:2004.07882) in 2-D: each training image is distorted by

- a **non-linear intensity transformation** (a random monotone Bezier curve through (0, 0) and (1, 1),
  increasing or decreasing with probability 1/2), with probability ``pretrain.nonlinear_rate``;
- **local pixel shuffling** (the pixels inside many small random windows permuted), ``shuffle_rate``;
- **in-painting** (random boxes replaced by uniform noise) or **out-painting** (everything outside a few
  random boxes replaced by noise), together with probability ``paint_rate``, in-painting
  ``inpaint_rate`` of those times,

and the network learns to output the clean image: ``training.loss: restoration_mse`` is the mean squared
error between ``sigmoid(logits)`` and the clean image scaled to [0, 1]. Labels are never read. The images
are made exactly as the model will see them: a segmenter's from any slice dataset of the data layer
(``data.dataset``) or ``phantom``, shaped by ``segmentation.crop`` and ``segmentation.lung_input``, with
``segmentation.val_fraction`` of the groups held out; a classifier's from its own cache (``data.stage``) and
grouped split, whose ``test`` rows are left out. The validation images, with distortions fixed once by the
seed, score ``val_loss`` (the same MSE), which selects the checkpoint (``training.monitor: val_loss``, or
``last``). A restoration error is not a segmentation or diagnostic score.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import keras
import numpy as np
from keras import layers
from scipy.special import expit
from tqdm.auto import tqdm

import covidct.models  # noqa: F401  (custom objects of saved models)
from covidct.data.datasets import load_dataset
from covidct.data.io import detect_format
from covidct.errors import CovidctError
from covidct.models import get_spec
from covidct.models.inference import is_pretrained_checkpoint  # re-exported: its old home
from covidct.segment.data import prepare_slice, read_gray
from covidct.train.data import prepare_data
from covidct.train.segmentation import MaskSequence, load_segmentation_pairs, lung_masked, model_inputs

log = logging.getLogger(__name__)

# Models Genesis' window sizes for local shuffling, as fractions of the side (their 64^3 cubes: 1-8 px of 64),
# and the in-/out-painting box sizes (in-painting boxes 1/6 to 1/3 of the side, 5 of them at most;
# out-painting keeps up to 4 boxes of 3/7 to 4/7 of the side).
SHUFFLE_WINDOW = (1 / 64, 8 / 64)
SHUFFLE_BLOCKS = 1000  # windows per 128 x 128 image (scaled with the area)
INPAINT_BOX = (1 / 6, 1 / 3)
INPAINT_BOXES = 5
OUTPAINT_BOX = (3 / 7, 4 / 7)
OUTPAINT_BOXES = 4
PICTURE_FORMATS = ("png", "jpeg", "bmp", "tiff")  # covidct.data.io.detect_format names of 2-D pictures


@dataclass
class UnlabeledImages:
    """Model inputs for restoration pretraining: uint8 (N, H, W, 1), with names and groups.

    ``splits`` (``"train"`` / ``"val"`` per image) is set when the images come with their own split (a
    classifier's grouped split, test rows left out); otherwise ``segmentation.val_fraction`` of the groups
    is held out for validation.
    """

    images: np.ndarray
    names: list
    groups: np.ndarray
    splits: np.ndarray | None = None


# ------------------------------------------------------------------------------------------------------
# Distortions (float images in [0, 1], (H, W))
# ------------------------------------------------------------------------------------------------------


def bezier_curve(control: np.ndarray, n: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """Points of the cubic Bezier curve with 4 control points (4, 2), from the first to the last."""
    t = np.linspace(0.0, 1.0, n)[:, None]
    p = np.asarray(control, dtype=np.float64)
    points = (1 - t) ** 3 * p[0] + 3 * (1 - t) ** 2 * t * p[1] + 3 * (1 - t) * t**2 * p[2] + t**3 * p[3]
    return points[:, 0], points[:, 1]


def nonlinear_intensity(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Map intensities through a random Bezier curve from (0, 0) to (1, 1) (reversed with probability 1/2).

    The two inner control points are uniform in the unit square; the curve's x coordinates are sorted so
    the mapping is a function; with probability 1/2 the curve runs from (0, 1) to (1, 0) instead (an
    intensity inversion). Values are interpolated on the curve.
    """
    control = np.array([[0.0, 0.0], rng.random(2), rng.random(2), [1.0, 1.0]])
    xs, ys = bezier_curve(control)
    order = np.argsort(xs)
    xs, ys = xs[order], ys[order]
    if rng.random() < 0.5:
        ys = ys[::-1]
    return np.interp(image, xs, ys).astype(np.float32)


def local_pixel_shuffle(image: np.ndarray, rng: np.random.Generator, blocks: int | None = None) -> np.ndarray:
    """Permute the pixels inside ``blocks`` small random windows (each window's pixels keep their values).

    Windows are 1/64 to 1/8 of the side, drawn on the original image (Models Genesis), so the overall
    anatomy stays while the local texture is destroyed.
    """
    height, width = image.shape
    blocks = SHUFFLE_BLOCKS * height * width // (128 * 128) if blocks is None else blocks
    source = image
    out = image.copy()
    low, high = (max(1, int(round(f * min(height, width)))) for f in SHUFFLE_WINDOW)
    for _ in range(int(blocks)):
        h = int(rng.integers(low, high + 1))
        w = int(rng.integers(low, high + 1))
        top = int(rng.integers(0, height - h + 1))
        left = int(rng.integers(0, width - w + 1))
        window = source[top : top + h, left : left + w].ravel()
        out[top : top + h, left : left + w] = rng.permutation(window).reshape(h, w)
    return out


def _random_box(rng: np.random.Generator, height: int, width: int, fraction: tuple) -> tuple[int, int, int, int]:
    h = int(rng.integers(max(1, int(fraction[0] * height)), max(2, int(fraction[1] * height)) + 1))
    w = int(rng.integers(max(1, int(fraction[0] * width)), max(2, int(fraction[1] * width)) + 1))
    h, w = min(h, height), min(w, width)
    top = int(rng.integers(0, height - h + 1))
    left = int(rng.integers(0, width - w + 1))
    return top, left, h, w


def inpaint(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Replace 1 to ``INPAINT_BOXES`` random boxes (1/6 to 1/3 of the side) by uniform noise in [0, 1)."""
    out = image.copy()
    height, width = image.shape
    for _ in range(int(rng.integers(1, INPAINT_BOXES + 1))):
        top, left, h, w = _random_box(rng, height, width, INPAINT_BOX)
        out[top : top + h, left : left + w] = rng.random((h, w), dtype=np.float32)
    return out


def outpaint(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Replace everything outside 1 to ``OUTPAINT_BOXES`` random boxes (3/7 to 4/7 of the side) by noise."""
    height, width = image.shape
    out = rng.random((height, width), dtype=np.float32)
    for _ in range(int(rng.integers(1, OUTPAINT_BOXES + 1))):
        top, left, h, w = _random_box(rng, height, width, OUTPAINT_BOX)
        out[top : top + h, left : left + w] = image[top : top + h, left : left + w]
    return out


def distort(image: np.ndarray, rng: np.random.Generator, rates) -> np.ndarray:
    """One Models-Genesis distortion of a (H, W) float image in [0, 1].

    Args:
        image: (H, W) float in [0, 1].
        rng: random generator (the draw order is fixed, so (seed, epoch, batch) reproduces a batch).
        rates: a ``covidct.config.PretrainConfig`` (``nonlinear_rate``, ``shuffle_rate``, ``paint_rate``,
            ``inpaint_rate``).

    Returns:
        float32 (H, W) in [0, 1].
    """
    x = np.asarray(image, dtype=np.float32)
    if rng.random() < rates.shuffle_rate:
        x = local_pixel_shuffle(x, rng)
    if rng.random() < rates.nonlinear_rate:
        x = nonlinear_intensity(x, rng)
    if rng.random() < rates.paint_rate:
        x = inpaint(x, rng) if rng.random() < rates.inpaint_rate else outpaint(x, rng)
    return np.clip(x, 0.0, 1.0).astype(np.float32)


# ------------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------------


def load_unlabeled_images(cfg, progress: bool = True) -> UnlabeledImages:
    """The unlabeled model inputs of ``cfg.data`` made as the model will see them.

    **Classification models:** the classifier's own data (``covidct.train.data.prepare_data``: ``data.stage``
    at ``data.size`` from the cache, split by group with ``data.split_fractions`` and ``data.seed``); the
    ``test`` rows are left out, so the images a classifier is tested on are never seen, not even unlabeled;
    the ``train`` rows train and the ``val`` rows validate the restoration.

    **Segmentation models:** ``data.dataset`` is any slice dataset of ``covidct.data.datasets`` (its labels
    are not read) read from ``data.root`` with ``data.options``, or ``phantom`` (``data.options``: ``n``,
    ``seed``). Each image is read as 8-bit grayscale and, with ``segmentation.crop: lungs``, cropped to the
    square around its dilated classical lung mask (``covidct.segment.data.lung_crop``), else resampled whole;
    with ``segmentation.lung_input: masked`` everything outside that lung mask is set to 0.

    Raises:
        CovidctError: an unknown dataset, an unreadable file (named), or no images.
    """
    d, s = cfg.data, cfg.segmentation
    if get_spec(cfg.model.name).task == "classification":
        data = prepare_data(cfg, progress=progress)
        split = data.manifest["split"].astype(str).to_numpy()
        keep = np.flatnonzero(split != "test")
        return UnlabeledImages(
            np.asarray(data.images[keep]),
            data.manifest["path"].astype(str).to_numpy()[keep].tolist(),
            data.groups[keep],
            split[keep],
        )
    masked = s.lung_input == "masked"
    if d.dataset == "phantom":  # the segmentation run's phantom pairs, masks unused
        unknown = sorted(set(d.options or {}) - {"n", "seed"})
        if unknown:
            raise CovidctError(f"data.options {unknown} do not apply to phantom pretraining images (n, seed).")
        pairs = load_segmentation_pairs(cfg)
        return UnlabeledImages(model_inputs(pairs, masked), list(pairs.names), np.asarray(pairs.groups))

    manifest = load_dataset(d.dataset, d.root, **dict(d.options or {}))
    paths = manifest["path"].astype(str).tolist()
    if not paths:
        raise CovidctError(f"data.dataset={d.dataset!r} ({d.root or 'default root'}) holds no images.")
    for path in paths:
        if detect_format(path) not in PICTURE_FORMATS:  # names the file; volumes are not 2-D slices
            raise CovidctError(
                f"{path} ({d.dataset}) is a {detect_format(path)} file; restoration pretraining reads 2-D slice "
                f"pictures ({', '.join(PICTURE_FORMATS)}), e.g. data.dataset: sars-cov-2-ct."
            )

    images = []
    for path in tqdm(paths, desc=f"pretraining inputs ({d.dataset})", disable=not progress, leave=False):
        image, _, lungs, _, _ = prepare_slice(read_gray(path), None, d.size, s.crop, with_lungs=masked)
        images.append(lung_masked(image[None, ..., None], lungs[None])[0] if masked else image[..., None])
    return UnlabeledImages(np.stack(images).astype(np.uint8), paths, manifest["group"].astype(str).to_numpy())


# ------------------------------------------------------------------------------------------------------
# Batches and scores
# ------------------------------------------------------------------------------------------------------


def restoration_network(model):
    """A classifier's backbone with a decoder back to the input size: the network a classifier pretrains as.

    The backbone ends at the classifier's last 4-D (spatial) layer, e.g. ``block4_pool`` of ``small_cnn``;
    the decoder doubles the resolution with ``restore_up<k>`` (3x3 transposed convolution, stride 2) +
    BatchNorm + ReLU blocks, halving the filters each time (at least 8), is resized to the input size when
    the backbone's stride is not a power of two, and ends in ``restore_logits`` (1x1 convolution, one map:
    the grey image). Backbone layers keep their names, so ``load_pretrained`` can copy them back into the
    classifier; the head (``logits``, pooling, dense layers after the last spatial layer) is not part of it.

    Raises:
        CovidctError: a model without a spatial layer or with several inputs.
    """
    if len(model.inputs) != 1:
        raise CovidctError(
            f"Model {model.name!r} takes {len(model.inputs)} inputs; restoration pretraining takes one image input."
        )
    height, width = (int(v) for v in model.inputs[0].shape[1:3])
    feature = None
    for layer in model.layers[1:]:
        shape = getattr(layer, "output", None)
        shape = getattr(shape, "shape", None)
        if shape is not None and len(shape) == 4 and shape[1] is not None and shape[1] > 1:
            feature = layer
    if feature is None:
        raise CovidctError(f"Model {model.name!r} has no spatial (4-D) layer to restore an image from.")
    x = feature.output
    filters = int(x.shape[-1])
    step = 0
    while int(x.shape[1]) < height:
        step += 1
        filters = max(8, filters // 2)
        x = layers.Conv2DTranspose(filters, 3, strides=2, padding="same", name=f"restore_up{step}")(x)
        x = layers.BatchNormalization(name=f"restore_bn{step}")(x)
        x = layers.ReLU(name=f"restore_relu{step}")(x)
    if tuple(int(v) for v in x.shape[1:3]) != (height, width):
        x = layers.Resizing(height, width, interpolation="bilinear", name="restore_resize")(x)
    outputs = layers.Conv2D(1, 1, name="restore_logits")(x)
    return keras.Model(model.inputs[0], outputs, name=f"{model.name}_restoration")


def load_pretrained(model, path) -> dict:
    """Copy a pretraining run's weights into ``model`` layer by layer (same layer names, same shapes).

    Layers of ``model`` without a namesake in the checkpoint (a classifier's head) keep their random
    initialisation; the checkpoint's own extra layers (the restoration decoder) are ignored.

    Returns:
        ``{"from": path, "copied": [layer names], "kept_random": [layer names with weights not copied]}``.

    Raises:
        CovidctError: an unreadable checkpoint, a namesake layer with other shapes (another ``model.kwargs``),
            or no layer copied at all (another model).
    """
    try:
        source = keras.saving.load_model(str(path), compile=False)
    except Exception as error:  # noqa: BLE001
        raise CovidctError(f"Pretrained weights {path}: cannot be read ({type(error).__name__}: {error}).") from None
    by_name = {layer.name: layer for layer in source.layers}
    copied, kept = [], []
    for layer in model.layers:
        if not layer.weights:
            continue
        other = by_name.get(layer.name)
        if other is None:
            kept.append(layer.name)
            continue
        shapes, other_shapes = [tuple(w.shape) for w in layer.weights], [tuple(w.shape) for w in other.weights]
        if shapes != other_shapes:
            raise CovidctError(
                f"Pretrained weights {path}: layer {layer.name!r} has shapes {other_shapes} there but {shapes} in "
                f"{model.name!r}; pretrain and fine-tune the same model.name with the same model.kwargs and input."
            )
        layer.set_weights(other.get_weights())
        copied.append(layer.name)
    if not copied:
        raise CovidctError(
            f"Pretrained weights {path}: no layer of {model.name!r} has a namesake in the checkpoint ({source.name}); "
            "it was pretrained for another model."
        )
    log.info("Initialised %d layers of %s from %s; %d kept random: %s", len(copied), model.name, path, len(kept), kept)
    return {"from": str(path), "copied": copied, "kept_random": kept}


def distort_batch(images: np.ndarray, rng: np.random.Generator, rates) -> np.ndarray:
    """``distort`` applied to each (H, W, C) image of a batch in [0, 1] (grey: channel 0, copied to all C)."""
    out = np.empty_like(images, dtype=np.float32)
    for index in range(len(images)):
        out[index] = distort(images[index, ..., 0], rng, rates)[..., None]
    return out


class RestorationSequence(MaskSequence):
    """Batches of (distorted image in [0, 255], clean grey image in [0, 1]) float32 pairs, new draws every epoch.

    Inputs keep the images' C channels (the distorted grey image copied to each); the target is one channel.
    The row order and the mirror / rotation (``augmentation``) are ``MaskSequence``'s, the images being their
    own "masks"; the distortions follow, drawn from (seed, epoch, batch), so a resumed run sees the same batches.

    Args:
        images: uint8 (N, H, W, C) model inputs (grey: equal channels).
        indices: rows of the training part.
        rates: the ``PretrainConfig``.
        **kwargs: ``batch_size``, ``shuffle``, ``seed``, ``augmentation``, ``max_steps``, ``drop_last`` of
            ``MaskSequence``.
    """

    def __init__(self, images, indices, rates, **kwargs):
        super().__init__(images, images[..., 0], indices, **kwargs)
        self.rates = rates

    def __getitem__(self, index: int):
        clean, _ = super().__getitem__(index)
        clean = clean / 255.0
        rng = np.random.default_rng([self.seed, self.epoch, int(index), 1])
        return distort_batch(clean, rng, self.rates) * 255.0, clean[..., :1].astype(np.float32)


def fixed_validation_pairs(images: np.ndarray, rows, rates, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Validation (distorted in [0, 255], clean grey in [0, 1]) drawn once from ``seed``: the same every epoch."""
    clean = np.asarray(images[np.asarray(rows, dtype=np.int64)], dtype=np.float32) / 255.0
    rng = np.random.default_rng([int(seed), 7919])
    return distort_batch(clean, rng, rates) * 255.0, clean[..., :1]


def restoration_mse_numpy(clean: np.ndarray, logits: np.ndarray) -> float:
    """Mean squared error between ``sigmoid(logits)`` and the clean images in [0, 1] (the training loss)."""
    clean = np.asarray(clean, dtype=np.float64).reshape(len(clean), -1)
    predicted = expit(np.asarray(logits, dtype=np.float64).reshape(len(logits), -1))
    return float(np.mean((predicted - clean) ** 2))


__all__ = [
    "RestorationSequence",
    "UnlabeledImages",
    "distort",
    "fixed_validation_pairs",
    "inpaint",
    "is_pretrained_checkpoint",
    "load_pretrained",
    "load_unlabeled_images",
    "local_pixel_shuffle",
    "nonlinear_intensity",
    "outpaint",
    "restoration_mse_numpy",
    "restoration_network",
]
