"""MNIST / Fashion-MNIST through TFDS, held in device memory and batched on the device.

TensorFlow only prepares and reads the dataset, once; it never runs inside the training loop.
Each split is read into memory as uint8 (N, 28, 28, 1) and moved to the device. The training step
gathers its batch with indices from an on-device permutation and converts it with
`to_model_range`, so there is no host round trip per step.
"""

from __future__ import annotations

import os
import socket
import urllib.parse
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

DATASETS = ("mnist", "fashion_mnist")
SPLITS = ("train", "test")
#: The original archives, as TFDS's `mnist` and `fashion_mnist` builders expect them (both use these names).
ARCHIVE_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
IMAGE_SIZE = 32  # 28 x 28 padded by 2 on each side: 32 -> 16 -> 8 halves cleanly in the UNet
PAD = 2
CLASS_NAMES = {
    "mnist": tuple(str(d) for d in range(10)),
    "fashion_mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                      "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
}


class DataNotFoundError(RuntimeError):
    """The dataset is neither prepared, nor in a manual directory, nor downloadable."""


def default_data_dir() -> Path:
    """TFDS's data directory: `$TFDS_DATA_DIR`, else `~/tensorflow_datasets` (TFDS's own default)."""
    return Path(os.environ.get("TFDS_DATA_DIR", Path.home() / "tensorflow_datasets")).expanduser()


def manual_dir_candidates(name: str, data_dir: Path) -> list[Path]:
    """Where the original archives are looked for, in order.

    `<data_dir>/downloads/manual/<name>/` lets MNIST and Fashion-MNIST (same file names) live side
    by side; `<data_dir>/downloads/manual/` is TFDS's own default manual directory.
    """
    manual = Path(data_dir) / "downloads" / "manual"
    return [manual / name, manual]


def _has_archives(folder: Path) -> bool:
    return all((Path(folder) / f).is_file() for f in ARCHIVE_FILES)


def _import_tfds():
    """Import TFDS with TensorFlow kept off every GPU (JAX owns the accelerator)."""
    from helpers.environment import configure_environment

    configure_environment()
    import tensorflow as tf

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TensorFlow was already initialised by the user: nothing more to do
        pass
    import tensorflow_datasets as tfds

    return tfds


def _reachable(url: str, timeout: float = 3.0) -> bool:
    """True when a TCP connection to the download host opens within `timeout` seconds."""
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def missing_data_message(name: str, data_dir: Path, manual_dir: Path | None = None) -> str:
    """What to do when the dataset can be neither downloaded nor prepared from local archives."""
    folders = [Path(manual_dir)] if manual_dir else manual_dir_candidates(name, data_dir)
    files = "\n".join(f"    {f}" for f in ARCHIVE_FILES)
    where = "\n".join(f"    {f}/" for f in folders)
    return (
        f"Cannot get the '{name}' dataset: it is not prepared in {data_dir}, there is no internet "
        f"connection to download it, and the original archives were not found.\n"
        f"Put these four files:\n{files}\n"
        f"into one of:\n{where}\n"
        f"(or pass --manual-dir / manual_dir= pointing at the folder that holds them), then run again. "
        f"TFDS verifies their checksums and prepares the dataset offline (about 20 s)."
    )


class file_lock:
    """An exclusive advisory lock on `path` (created if needed) for a `with` block: processes that
    share a data or cache folder (parallel tests, two notebooks) prepare things once, not twice."""

    def __init__(self, path):
        self.path = Path(path)

    def __enter__(self):
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "w")
        fcntl.flock(self._fh, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        import fcntl

        fcntl.flock(self._fh, fcntl.LOCK_UN)
        self._fh.close()


def _cache_path(name: str, split: str, version: str, data_dir: Path) -> Path:
    return Path(data_dir) / "mnist_diffusion_jax_cache" / f"{name}-{version}-{split}.npz"


def load_split(
    name: str = "mnist",
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    manual_dir: str | os.PathLike | None = None,
    limit: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Read one split into memory: uint8 images (N, 28, 28, 1) and int32 labels (N,).

    Order of attempts: an array cache next to the prepared dataset; a prepared TFDS dataset;
    the original archives in a manual directory (prepared offline by TFDS's own builder, checksums
    verified); a download when the internet is there. Otherwise `DataNotFoundError`, at once.
    """
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}: choose one of {', '.join(DATASETS)}.")
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}: choose one of {', '.join(SPLITS)}.")
    data_dir = Path(data_dir).expanduser() if data_dir else default_data_dir()

    tfds = None
    version = {"mnist": "3.0.1", "fashion_mnist": "3.0.1"}[name]
    cache = _cache_path(name, split, version, data_dir)
    if not cache.is_file():
        cache.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(cache.parent / f".{name}.lock"):  # one process prepares; others wait, then read
            if not cache.is_file():
                tfds = _import_tfds()
                builder = tfds.builder(name, data_dir=str(data_dir))
                if not builder.is_prepared():
                    _prepare(tfds, builder, name, data_dir, manual_dir)
                data = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
                tmp = cache.with_suffix(".tmp.npz")
                np.savez(tmp, image=data["image"], label=data["label"])
                tmp.replace(cache)
    with np.load(cache) as arrays:
        images = arrays["image"].astype(np.uint8)
        labels = arrays["label"].astype(np.int32)
    if limit is not None:
        if limit <= 0:
            raise ValueError(f"limit must be positive, got {limit}.")
        images, labels = images[:limit], labels[:limit]
    return images, labels


def _prepare(tfds, builder, name: str, data_dir: Path, manual_dir) -> None:
    """Prepare a TFDS dataset from local archives when they are there, else by download."""
    candidates = [Path(manual_dir).expanduser()] if manual_dir else manual_dir_candidates(name, data_dir)
    for folder in candidates:
        if _has_archives(folder):
            # TFDS names extracted files after the archive alone (downloads/extracted/GZIP.<file>),
            # and MNIST and Fashion-MNIST share file names: without a folder per dataset, the second
            # one prepared would silently reuse the first one's images.
            config = tfds.download.DownloadConfig(
                manual_dir=str(folder), extract_dir=str(Path(data_dir) / "downloads" / "extracted" / name))
            try:
                builder.download_and_prepare(download_config=config)
            except Exception as err:  # checksum mismatch: e.g. Fashion-MNIST files in MNIST's folder
                raise DataNotFoundError(
                    f"TFDS could not prepare '{name}' from the archives in {folder}: {err}\n"
                    f"Check that the folder holds the {name} archives (MNIST and Fashion-MNIST use the "
                    f"same file names) and that they are complete."
                ) from err
            return
    if manual_dir and not Path(manual_dir).expanduser().is_dir():
        raise DataNotFoundError(f"--manual-dir {manual_dir} does not exist.\n"
                                + missing_data_message(name, data_dir, manual_dir))
    url = getattr(type(builder), "URL", None) or "https://storage.googleapis.com/"
    if not _reachable(url):
        raise DataNotFoundError(missing_data_message(name, data_dir, manual_dir))
    builder.download_and_prepare()


# ----------------------------------------------------------------------------- on the device


def to_model_range(images_uint8: jax.Array) -> jax.Array:
    """uint8 (B, 28, 28, 1) -> float32 in [-1, 1], padded to (B, 32, 32, 1) with -1 (the background).

    A batch keeps the configured batch size: the reference tutorial prints (64, 32, 32, 1) for a batch
    while its BATCH_SIZE is 256; here a batch of 256 has shape (256, 32, 32, 1).
    """
    x = images_uint8.astype(jnp.float32) / 127.5 - 1.0
    return jnp.pad(x, ((0, 0), (PAD, PAD), (PAD, PAD), (0, 0)), constant_values=-1.0)


def from_model_range(x: jax.Array | np.ndarray, crop: bool = False) -> np.ndarray:
    """[-1, 1] -> [0, 1] float numpy, optionally cropped back to 28 x 28."""
    x = np.clip((np.asarray(x, dtype=np.float32) + 1.0) / 2.0, 0.0, 1.0)
    if crop:
        x = x[..., PAD:-PAD, PAD:-PAD, :]
    return x


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Steps that show every example once: the last batch is padded (and masked), not dropped."""
    return -(-num_examples // batch_size)


def epoch_order(data_key: jax.Array, epoch, num_examples: int, batch_size: int) -> jax.Array:
    """The example order of one epoch, padded to steps_per_epoch * batch_size; pure and jittable.

    It is `permutation(fold_in(data_key, epoch))`, so every epoch sees every example exactly once and
    a resumed run sees exactly the batches it would have seen. The padding repeats the first indices;
    `batch_slice` gives them mask 0.
    """
    spe = steps_per_epoch(num_examples, batch_size)
    perm = jax.random.permutation(jax.random.fold_in(data_key, epoch), num_examples)
    return jnp.concatenate([perm, perm[: spe * batch_size - num_examples]])


def batch_slice(order: jax.Array, pos, num_examples: int, batch_size: int):
    """Indices (B,) and mask (B,) of batch `pos` of an epoch order. The last batch of an epoch keeps
    its shape (B,), so it never triggers a recompile; its padded examples get mask 0 and do not
    count in the loss."""
    start = jnp.asarray(pos) * batch_size
    idx = jax.lax.dynamic_slice_in_dim(order, start, batch_size)
    mask = (start + jnp.arange(batch_size)) < num_examples
    return idx, mask.astype(jnp.float32)


def batch_indices(data_key: jax.Array, step, num_examples: int, batch_size: int):
    """Indices and mask of global step `step` (epoch = step // steps_per_epoch); pure and jittable."""
    spe = steps_per_epoch(num_examples, batch_size)
    step = jnp.asarray(step)
    order = epoch_order(data_key, step // spe, num_examples, batch_size)
    return batch_slice(order, step % spe, num_examples, batch_size)


def epoch_batches(data_key: jax.Array, epoch: int, num_examples: int, batch_size: int):
    """All (indices, mask) of one epoch at once, shapes (steps_per_epoch, B): for plots and checks."""
    spe = steps_per_epoch(num_examples, batch_size)
    steps = epoch * spe + jnp.arange(spe)
    return jax.vmap(lambda s: batch_indices(data_key, s, num_examples, batch_size))(steps)
