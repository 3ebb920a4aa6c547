from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from helpers import data
from helpers.data import ARCHIVE_FILES, DataNotFoundError, from_model_range, load_split, to_model_range


def test_real_mnist_through_tfds_offline(mnist_test):
    images, labels = mnist_test
    assert images.shape == (10_000, 28, 28, 1) and images.dtype == np.uint8
    assert labels.shape == (10_000,) and set(np.unique(labels)) == set(range(10))
    assert images.max() == 255 and images.min() == 0


def test_preprocessing_range_padding_and_shape(mnist_test):
    images, _ = mnist_test
    x = np.asarray(to_model_range(jnp.asarray(images[:64])))
    assert x.shape == (64, 32, 32, 1) and x.dtype == np.float32
    assert x.min() == -1.0 and x.max() == 1.0
    # the 2-pixel border is exactly -1 (the background value after normalisation)
    border = np.concatenate([x[:, :2].ravel(), x[:, -2:].ravel(), x[:, :, :2].ravel(), x[:, :, -2:].ravel()])
    assert np.all(border == -1.0)
    np.testing.assert_allclose(x[:, 2:-2, 2:-2], images[:64] / 127.5 - 1.0, atol=1e-6)
    np.testing.assert_allclose(from_model_range(x, crop=True), images[:64] / 255.0, atol=1e-6)


def test_limit_and_bad_names(tfds_dir, mnist_archives):
    images, labels = load_split("mnist", "test", data_dir=tfds_dir, manual_dir=mnist_archives, limit=100)
    assert len(images) == len(labels) == 100
    with pytest.raises(ValueError, match="Unknown dataset"):
        load_split("cifar10")
    with pytest.raises(ValueError, match="Unknown split"):
        load_split("mnist", "validation")


def test_missing_data_fails_fast_with_files_and_folder(tmp_path, monkeypatch):
    import time

    monkeypatch.setattr(data, "_reachable", lambda url, timeout=3.0: False)  # no internet
    start = time.perf_counter()
    with pytest.raises(DataNotFoundError) as err:
        load_split("mnist", "train", data_dir=tmp_path)
    msg = str(err.value)
    assert time.perf_counter() - start < 60
    for f in ARCHIVE_FILES:
        assert f in msg
    assert str(tmp_path / "downloads" / "manual") in msg


def test_real_network_check_fails_fast_here(tmp_path):
    # This machine reaches no download host: the check answers in seconds, it does not retry.
    import time

    start = time.perf_counter()
    reachable = data._reachable("https://storage.googleapis.com/cvdf-datasets/mnist/", timeout=2.0)
    assert time.perf_counter() - start < 10
    if not reachable:
        with pytest.raises(DataNotFoundError, match="train-images-idx3-ubyte.gz"):
            load_split("mnist", "test", data_dir=tmp_path)


def test_wrong_archives_are_reported(tmp_path, monkeypatch):
    manual = tmp_path / "manual"
    manual.mkdir()
    for f in ARCHIVE_FILES:  # right names, wrong bytes: TFDS's checksum check must catch it
        (manual / f).write_bytes(b"not an archive")
    with pytest.raises(DataNotFoundError, match="could not prepare"):
        load_split("mnist", "test", data_dir=tmp_path / "data", manual_dir=manual)


def test_mnist_and_fashion_mnist_prepared_side_by_side_stay_different(tmp_path, mnist_archives):
    """Both datasets from their manual folders in one data dir: the files share names, and TFDS's
    extraction cache must not hand Fashion-MNIST the MNIST images prepared before it."""
    import os
    import shutil

    import numpy as np

    from helpers.data import load_split

    fashion = os.environ.get("FASHION_MNIST_ARCHIVES_DIR")
    if not fashion:
        pytest.skip("Fashion-MNIST archives not found (set FASHION_MNIST_ARCHIVES_DIR)")
    for name, src in (("mnist", mnist_archives), ("fashion_mnist", fashion)):
        dst = tmp_path / "downloads" / "manual" / name
        dst.mkdir(parents=True)
        for f in Path(src).glob("*.gz"):
            shutil.copy(f, dst / f.name)
    digits, _ = load_split("mnist", "test", data_dir=tmp_path)
    clothes, _ = load_split("fashion_mnist", "test", data_dir=tmp_path)
    assert digits.shape == clothes.shape == (10_000, 28, 28, 1)
    assert not np.array_equal(digits, clothes)
    assert abs(float(clothes.mean()) - float(digits.mean())) > 10  # clothes: about 73 of 255; digits: 33
