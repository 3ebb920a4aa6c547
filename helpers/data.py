"""MNIST / Fashion-MNIST through TFDS, held in device memory and batched on the device.

TensorFlow only prepares and reads each split, once, into uint8 (N, 28, 28, 1) arrays; batches are
then gathered on the device from a per-epoch permutation, with no host round trip per step."""

import contextlib
import fcntl
import functools
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
ARCHIVE_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
PAD = 2  # 28 x 28 padded by 2 on each side: 32 -> 16 -> 8 halves cleanly in the UNet


class DataNotFoundError(RuntimeError):
    """The dataset is neither prepared, nor in a manual directory, nor downloadable."""


def default_data_dir() -> Path:
    """TFDS's data directory: `$TFDS_DATA_DIR`, else `~/tensorflow_datasets` (TFDS's own default)."""
    return Path(os.environ.get("TFDS_DATA_DIR", Path.home() / "tensorflow_datasets")).expanduser()


def manual_dir_candidates(name: str, data_dir: Path) -> list[Path]:
    """Where the archives are looked for: `downloads/manual/<name>/` (MNIST and Fashion-MNIST share file
    names), then TFDS's own default `downloads/manual/`."""
    return [Path(data_dir) / "downloads" / "manual" / name, Path(data_dir) / "downloads" / "manual"]


def _import_tfds():
    """Import TFDS with TensorFlow kept off every GPU (JAX owns the accelerator)."""
    import tensorflow as tf
    import tensorflow_datasets as tfds
    with contextlib.suppress(RuntimeError):  # raised when TensorFlow already runs: nothing more to do
        tf.config.set_visible_devices([], "GPU")
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
    return (f"Cannot get the '{name}' dataset: it is not prepared in {data_dir}, there is no internet connection "
            f"to download it, and the original archives were not found.\nPut these four files:\n"
            + "".join(f"    {f}\n" for f in ARCHIVE_FILES) + "into one of:\n" + "".join(f"    {f}/\n" for f in folders)
            + "(or pass --manual-dir / manual_dir= pointing at the folder that holds them), then run again. "
              "TFDS verifies their checksums and prepares the dataset offline (about 20 s).")


@contextlib.contextmanager
def file_lock(path):
    """An exclusive lock on `path` for a `with` block: processes that share a data or cache folder
    (parallel tests, two notebooks) prepare things once, not twice."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield  # closing the file releases the lock


def load_split(name: str = "mnist", split: str = "train", data_dir: str | os.PathLike | None = None,
               manual_dir: str | os.PathLike | None = None, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read one split into memory: uint8 images (N, 28, 28, 1) and int32 labels (N,). Tried in turn: an
    array cache next to the prepared dataset; the prepared TFDS dataset; the original archives in a manual
    directory (prepared offline by TFDS, checksums verified); a download. Else `DataNotFoundError`, at once."""
    for kind, value, allowed in (("dataset", name, DATASETS), ("split", split, SPLITS)):
        if value not in allowed:
            raise ValueError(f"Unknown {kind} {value!r}: choose one of {', '.join(allowed)}.")
    data_dir = Path(data_dir).expanduser() if data_dir else default_data_dir()
    cache = data_dir / "mnist_diffusion_jax_cache" / f"{name}-3.0.1-{split}.npz"  # TFDS's version of both
    if not cache.is_file():
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
        return arrays["image"][:limit].astype(np.uint8), arrays["label"][:limit].astype(np.int32)


def _prepare(tfds, builder, name: str, data_dir: Path, manual_dir) -> None:
    """Prepare a TFDS dataset from local archives when they are there, else by download."""
    candidates = [Path(manual_dir).expanduser()] if manual_dir else manual_dir_candidates(name, data_dir)
    for folder in candidates:
        if all((folder / f).is_file() for f in ARCHIVE_FILES):
            # TFDS names extracted files after the archive alone, and MNIST and Fashion-MNIST share file
            # names: without a folder per dataset the second one prepared would reuse the first's images.
            config = tfds.download.DownloadConfig(
                manual_dir=str(folder), extract_dir=str(Path(data_dir) / "downloads" / "extracted" / name))
            try:
                builder.download_and_prepare(download_config=config)
            except Exception as err:  # checksum mismatch: e.g. Fashion-MNIST files in MNIST's folder
                raise DataNotFoundError(f"TFDS could not prepare '{name}' from the archives in {folder}: {err}\n"
                                        f"Check that the folder holds the {name} archives (MNIST and Fashion-MNIST "
                                        f"use the same file names) and that they are complete.") from err
            return
    if manual_dir and not Path(manual_dir).expanduser().is_dir():
        raise DataNotFoundError(f"--manual-dir {manual_dir} does not exist.\n"
                                + missing_data_message(name, data_dir, manual_dir))
    url = getattr(type(builder), "URL", None) or "https://storage.googleapis.com/"
    if not _reachable(url):
        raise DataNotFoundError(missing_data_message(name, data_dir, manual_dir))
    builder.download_and_prepare()


def to_model_range(images_uint8: jax.Array) -> jax.Array:
    """uint8 (B, 28, 28, 1) -> float32 in [-1, 1], padded to (B, 32, 32, 1) with -1 (the background)."""
    x = images_uint8.astype(jnp.float32) / 127.5 - 1.0
    return jnp.pad(x, ((0, 0), (PAD, PAD), (PAD, PAD), (0, 0)), constant_values=-1.0)


def from_model_range(x: jax.Array | np.ndarray, crop: bool = False) -> np.ndarray:
    """[-1, 1] -> [0, 1] float numpy, optionally cropped back to 28 x 28."""
    x = np.clip((np.asarray(x, dtype=np.float32) + 1.0) / 2.0, 0.0, 1.0)
    return x[..., PAD:-PAD, PAD:-PAD, :] if crop else x


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Steps that show every example once: the last batch is padded (and masked), not dropped."""
    return -(-num_examples // batch_size)


def epoch_order(data_key: jax.Array, epoch, num_examples: int, batch_size: int) -> jax.Array:
    """The example order of one epoch, `permutation(fold_in(data_key, epoch))` padded to steps_per_epoch *
    batch_size (repeating its first indices, which `batch_slice` masks): every epoch sees every example
    once, and a resumed run sees exactly the batches it would have seen. Pure and jittable."""
    spe = steps_per_epoch(num_examples, batch_size)
    perm = jax.random.permutation(jax.random.fold_in(data_key, epoch), num_examples)
    return jnp.concatenate([perm, perm[: spe * batch_size - num_examples]])


def batch_slice(order: jax.Array, pos, num_examples: int, batch_size: int):
    """Indices (B,) and mask (B,) of batch `pos` of an epoch order. An epoch's last batch keeps its shape
    (no recompile); its padded examples get mask 0 and do not count in the loss."""
    start = jnp.asarray(pos) * batch_size
    idx = jax.lax.dynamic_slice_in_dim(order, start, batch_size)
    mask = (start + jnp.arange(batch_size)) < num_examples
    return idx, mask.astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=("batch_size", "sharding"))
def get_batch(images_uint8, labels, order, position, batch_size: int, sharding=None):
    """Batch `position` of an epoch `order`, gathered on the device: (x0 in [-1, 1], labels or None, mask).
    With a `sharding`, split across its devices along the first axis: each keeps only its own rows."""
    idx, mask = batch_slice(order, position, images_uint8.shape[0], batch_size)
    batch = (to_model_range(images_uint8[idx]), None if labels is None else labels[idx], mask)
    return batch if sharding is None else jax.lax.with_sharding_constraint(batch, sharding)
