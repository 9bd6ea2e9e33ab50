"""Image data sets: loading, splitting and augmentation as tensor operations.

One entry point, :func:`load_image_folder`, reads the layouts users have:

* an image-folder layout ``train/<class>/*``, ``test/<class>/*`` (JPEG, PNG or
  BMP), as a directory or a ``.zip``: any number of classes (at least 2),
  named by their folders (in sorted order; CIFAR-10's ten folders take the
  official label order), and any one image size: every image of the data set
  must have the same height and width; RGB, grayscale or palette images all
  become three channels (the shipped ``cifar10-jpeg.zip`` is one such set);
* CIFAR-10's official python-batches release (``cifar-10-batches-py/`` with
  ``data_batch_1..5`` and ``test_batch``, or its ``.tar.gz``).

:func:`load_cifar10` is the same loader that also insists on CIFAR-10's shape
(ten classes of 32x32 images).  Images stay ``uint8 [N, 3, H, W]`` in memory;
decoded image folders are cached as an uncompressed ``.npz`` in ``cache_dir``,
keyed by the data's content.  Augmentation (random crop with zero padding, an
eighth of the shorter side: CIFAR's 4 pixels at 32x32, as in He et al. 2016;
horizontal flip) works on whole batches, and all randomness comes from an
explicit seeded generator.
"""

from __future__ import annotations

import hashlib
import io
import os
import logging
import pickle
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nets.errors import DataError

__all__ = ["CIFAR10_CLASSES", "Cifar10", "ImageDataset", "augment", "batches", "check_image_size", "crop_padding",
           "load_cifar10", "load_image_folder", "stratified_holdout", "to_float"]

log = logging.getLogger(__name__)

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
_Splits = dict[str, tuple[np.ndarray, np.ndarray]]  # "train"/"test" -> (uint8 images [N, 3, H, W], int64 labels)


@dataclass
class ImageDataset:
    """The train/validation/test splits as uint8 images and int64 labels,
    with the class names (label ``i`` is ``classes[i]``)."""

    train_images: torch.Tensor  # [N, 3, H, W] uint8
    train_labels: torch.Tensor  # [N] int64
    val_images: torch.Tensor
    val_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: tuple[str, ...] = CIFAR10_CLASSES
    source: str = ""

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        if name not in ("train", "val", "test"):
            raise DataError(f"unknown split {name!r}; expected train, val or test")
        return getattr(self, f"{name}_images"), getattr(self, f"{name}_labels")

    @property
    def image_size(self) -> tuple[int, int]:
        """``(height, width)`` of every image."""
        return int(self.train_images.shape[-2]), int(self.train_images.shape[-1])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(channels, height, width)`` of one model input."""
        return (int(self.train_images.shape[1]), *self.image_size)


Cifar10 = ImageDataset  # the name from when CIFAR-10 was the only data set


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """The official batches are pickles of dicts of numpy arrays; refuse any
    other global so a malicious file cannot run code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch")


def _read_batch(raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        batch = _NumpyOnlyUnpickler(io.BytesIO(raw), encoding="bytes").load()
        data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except Exception as exc:
        raise DataError(f"{where} is not a CIFAR-10 python batch: {exc}") from None
    return data, labels


def _load_python_batches(files: dict[str, bytes], where: str) -> _Splits:
    train = [_read_batch(files[f"data_batch_{i}"], f"{where}/data_batch_{i}") for i in range(1, 6)]
    test = _read_batch(files["test_batch"], f"{where}/test_batch")
    return {
        "train": (np.concatenate([t[0] for t in train]), np.concatenate([t[1] for t in train])),
        "test": test,
    }


def _decode_image(raw: bytes, name: str) -> np.ndarray:
    """One image as ``uint8 [3, H, W]`` (grayscale and palette images become RGB)."""
    from PIL import Image  # imported lazily: only the image-folder layout needs it

    try:
        image = np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"))
    except Exception as exc:
        raise DataError(f"cannot decode image {name}: {exc}") from None
    return image.transpose(2, 0, 1)


def _class_order(by_split: dict[str, dict[str, list[str]]], where: str) -> list[str]:
    """The class names in label order: sorted folder names, CIFAR-10's own order for its ten."""
    for split, classes in by_split.items():
        if not classes:
            raise DataError(f"{where} has no {split}/<class>/<image> files")
    class_names = sorted(by_split["train"])
    if set(class_names) == set(CIFAR10_CLASSES):
        class_names = list(CIFAR10_CLASSES)  # the official label order
    if sorted(by_split["test"]) != sorted(class_names):
        differing = sorted(set(class_names) ^ set(by_split["test"]))
        raise DataError(f"{where}: train and test class folders differ ({', '.join(differing[:5])})")
    if len(class_names) < 2:
        raise DataError(f"{where} has one class folder ({class_names[0]}); a classifier needs at least 2")
    return class_names


def _load_image_folders(entries: dict[str, Callable[[], bytes]], where: str) -> tuple[_Splits, list[str]]:
    """``entries`` maps 'split/class/file' to a function returning the bytes;
    returns the decoded splits and the class names in label order."""
    by_split: dict[str, dict[str, list[str]]] = {"train": {}, "test": {}}
    for name in entries:
        parts = name.split("/")
        if len(parts) == 3 and parts[0] in by_split and parts[2].lower().endswith(_IMAGE_SUFFIXES):
            by_split[parts[0]].setdefault(parts[1], []).append(name)
    class_names = _class_order(by_split, where)
    out: _Splits = {}
    first: tuple[str, tuple[int, ...]] | None = None  # the first image's name and shape set the size
    for split, classes in by_split.items():
        images, labels = [], []
        for label, cls in enumerate(class_names):
            for name in sorted(classes[cls]):
                image = _decode_image(entries[name](), f"{where}/{name}")
                if first is None:
                    first = (name, image.shape)
                elif image.shape != first[1]:
                    raise DataError(f"image {where}/{name} is {image.shape[2]}x{image.shape[1]} pixels but "
                                    f"{first[0]} is {first[1][2]}x{first[1][1]}: every image of a data set "
                                    "must have the same size (resize them first)")
                images.append(image)
                labels.append(label)
        out[split] = (np.stack(images), np.asarray(labels, dtype=np.int64))
    return out, class_names


def _find_root_prefix(names: list[str]) -> str:
    """The folder inside an archive that holds train/ and test/ (maybe '')."""
    prefixes = set()
    for name in names:
        parts = name.split("/")
        if len(parts) >= 3 and parts[-3] == "train":
            prefixes.add("/".join(parts[:-3]))
    return min(prefixes, key=len) if prefixes else ""


def _read_source(path: Path) -> tuple[_Splits, list[str]]:
    """The decoded train and test splits at ``path`` (any supported layout) and the class names."""
    if path.is_dir():
        batches = path / "cifar-10-batches-py" if (path / "cifar-10-batches-py").is_dir() else path
        if (batches / "data_batch_1").is_file():
            try:
                files = {f"data_batch_{i}": (batches / f"data_batch_{i}").read_bytes() for i in range(1, 6)}
                files["test_batch"] = (batches / "test_batch").read_bytes()
            except FileNotFoundError as exc:
                raise DataError(f"incomplete CIFAR-10 python batches in {batches}: {exc.filename}") from None
            return _load_python_batches(files, str(batches)), list(CIFAR10_CLASSES)
        entries = {
            str(p.relative_to(path)).replace("\\", "/"): p.read_bytes
            for p in path.glob("*/*/*") if p.is_file()
        }
        return _load_image_folders(entries, str(path))
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            prefix = _find_root_prefix(names)
            strip = len(prefix) + 1 if prefix else 0
            entries = {n[strip:]: (lambda n=n: archive.read(n)) for n in names if not n.endswith("/")}
            return _load_image_folders(entries, str(path))
    if tarfile.is_tarfile(path):
        with tarfile.open(path) as archive:
            files = {}
            for member in archive.getmembers():
                base = member.name.rsplit("/", 1)[-1]
                if member.isfile() and (base.startswith("data_batch_") or base == "test_batch"):
                    files[base] = archive.extractfile(member).read()
        missing = [n for n in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"] if n not in files]
        if missing:
            raise DataError(f"{path} lacks CIFAR-10 batches: {', '.join(missing)}")
        return _load_python_batches(files, str(path)), list(CIFAR10_CLASSES)
    raise DataError(f"{path} is neither a directory, a zip of image folders nor a CIFAR-10 tar.gz")


def _content_digest(path: Path) -> str:
    # Keyed by content, not path and mtime: a remounted read-only data set keeps
    # its cache (hashing 60 MB takes ~0.1 s; decoding the JPEGs takes minutes).
    digest = hashlib.sha1()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():  # a folder's layout is part of its content
            digest.update(str(file.relative_to(path)).encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def _read_cache(digest: str, cache_dir: Path) -> tuple[_Splits, list[str]] | None:
    """The cached decoded data set of this content, if any.  ``images-*.npz``
    records its class names; a ``cifar10-*.npz`` of earlier versions does not
    and is used only when it holds CIFAR-10's shape (ten classes of 32x32)."""
    for name, legacy in ((f"images-{digest}.npz", False), (f"cifar10-{digest}.npz", True)):
        path = cache_dir / name
        if not path.is_file():
            continue
        with np.load(path, allow_pickle=False) as arrays:
            splits = {s: (arrays[f"{s}_x"], arrays[f"{s}_y"]) for s in ("train", "test")}
            classes = [str(c) for c in arrays["classes"]] if "classes" in arrays.files else list(CIFAR10_CLASSES)
        if legacy and (splits["train"][0].shape[1:] != (3, 32, 32) or len(np.unique(splits["train"][1])) != 10):
            continue
        return splits, classes
    return None


def _write_cache(splits: _Splits, classes: list[str], cache: Path) -> None:
    cache.parent.mkdir(parents=True, exist_ok=True)
    # A private temporary name: two runs building the same cache at once
    # must not rename each other's file away.
    handle, tmp_name = tempfile.mkstemp(dir=cache.parent, prefix=cache.stem, suffix=".tmp.npz")
    os.close(handle)
    tmp = Path(tmp_name)
    try:
        arrays = {f"{s}_{k}": v for s, (x, y) in splits.items() for k, v in (("x", x), ("y", y))}
        np.savez(tmp, classes=np.asarray(classes, dtype=str), **arrays)
        tmp.replace(cache)
    finally:
        tmp.unlink(missing_ok=True)


def load_image_folder(path: str | Path, val_size: int | None = None, seed: int = 0,
                      cache_dir: str | Path | None = None) -> ImageDataset:
    """Read an image data set from ``path`` (module docstring: image folders,
    as a directory or a zip, or CIFAR-10's python batches) and hold out a
    class-stratified validation split of ``val_size`` training images
    (``None``: a tenth of them, 5,000 for CIFAR-10)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"data path not found: {path}")
    digest = _content_digest(path) if cache_dir is not None else ""
    found = _read_cache(digest, Path(cache_dir)) if cache_dir is not None else None
    if found is None:
        found = _read_source(path)
        if cache_dir is not None:
            _write_cache(*found, Path(cache_dir) / f"images-{digest}.npz")
    (train_x, train_y), (test_x, test_y) = found[0]["train"], found[0]["test"]
    val_size = len(train_x) // 10 if val_size is None else val_size
    if not 0 <= val_size < len(train_x):
        raise DataError(f"val_size must be in [0, {len(train_x)}), got {val_size}")
    val_index = stratified_holdout(train_y, val_size, seed)
    keep = np.ones(len(train_x), dtype=bool)
    keep[val_index] = False
    log.info("loaded %d classes of %dx%d images from %s: %d train, %d val, %d test", len(found[1]),
             train_x.shape[3], train_x.shape[2], path, keep.sum(), val_size, len(test_x))
    t = torch.from_numpy
    return ImageDataset(
        t(np.ascontiguousarray(train_x[keep])), t(train_y[keep]),
        t(np.ascontiguousarray(train_x[val_index])), t(train_y[val_index]),
        t(np.ascontiguousarray(test_x)), t(test_y), classes=tuple(found[1]), source=str(path),
    )


def load_cifar10(path: str | Path, val_size: int = 5000, seed: int = 0,
                 cache_dir: str | Path | None = None) -> ImageDataset:
    """:func:`load_image_folder` for CIFAR-10: the data set must have ten
    classes of 32x32 images (any supported layout)."""
    data = load_image_folder(path, val_size, seed, cache_dir)
    if len(data.classes) != 10 or data.image_size != (32, 32):
        raise DataError(f"{path} holds {len(data.classes)} classes of {data.image_size[1]}x{data.image_size[0]} "
                        "images, not CIFAR-10's 10 classes of 32x32 (load_image_folder reads any image folders)")
    return data


def stratified_holdout(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Indices of ``size`` samples, spread evenly over the classes, seeded."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    per_class = np.full(len(classes), size // len(classes))
    per_class[: size % len(classes)] += 1
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:n] for c, n in zip(classes, per_class)]
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


def channel_statistics(images: torch.Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of uint8 images ``[N, C, H, W]``
    on the models' [0, 1] scale, in chunks (no float copy of the whole set):
    a user's data set is normalised by its own statistics, as CIFAR-10 by its
    published ones (``nets.layers.CIFAR10_MEAN``)."""
    if len(images) == 0:
        raise DataError("no images to take channel statistics from")
    sums = torch.zeros(images.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(sums)
    for start in range(0, len(images), chunk):
        x = images[start:start + chunk].to(torch.float64).div_(255.0)
        sums += x.sum(dim=(0, 2, 3))
        squares += (x * x).sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = sums / count
    std = (squares / count - mean * mean).clamp_min(1e-12).sqrt().clamp_min(1e-3)  # a flat channel stays finite
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images to float in [0, 1], the models' input convention."""
    return images.float().div_(255.0)


def check_image_size(image_size: tuple[int, int], minimum: int, what: str) -> None:
    """One :class:`DataError` when an image side is below ``minimum`` pixels
    (``what`` names the model in the message)."""
    height, width = image_size
    if min(height, width) < minimum:
        raise DataError(f"images of {width}x{height} pixels are too small for {what}: it needs at least "
                        f"{minimum}x{minimum} (each stage after the first halves the image)")


def crop_padding(image_size: tuple[int, int]) -> int:
    """Zero padding of the random crop: an eighth of the shorter side, at
    least 1 pixel (CIFAR's 4 at 32x32, as in He et al. 2016), so the crop
    moves images of any size by the same fraction."""
    return max(1, round(min(image_size) / 8))


def augment(images: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """Random crop after zero padding, then random horizontal flip, on a whole
    uint8 batch ``[B, C, H, W]`` at once (index arithmetic, no Python loop)."""
    batch, channels, height, width = images.shape
    padded = torch.nn.functional.pad(images, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (batch,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (batch,), generator=generator)
    rows = (dy[:, None] + torch.arange(height)[None, :])  # [B, H]
    cols = (dx[:, None] + torch.arange(width)[None, :])  # [B, W]
    flip = torch.rand(batch, generator=generator) < 0.5
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    index_b = torch.arange(batch)[:, None, None, None]
    index_c = torch.arange(channels)[None, :, None, None]
    return padded[index_b, index_c, rows[:, None, :, None], cols[:, None, None, :]]


def batches(images: torch.Tensor, labels: torch.Tensor, batch_size: int, shuffle: bool = False,
            generator: torch.Generator | None = None,
            drop_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(uint8 images, labels)`` batches; shuffled with ``generator``."""
    n = len(images)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        index = order[start:start + batch_size]
        yield images[index], labels[index]
