"""Sample-quality figures: the math on synthetic cases, then the classifier on real digits."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers.metrics import frechet_distance, precision_recall

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))  # tools/export_classifier.py

REPO = Path(__file__).resolve().parents[1]


def test_frechet_distance_math():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2000, 8))
    mu, sig = a.mean(0), np.cov(a, rowvar=False)
    assert abs(frechet_distance(mu, sig, mu, sig)) < 1e-8
    # two Gaussians with identity covariance: the distance is ||mu1 - mu2||^2
    assert frechet_distance(np.zeros(3), np.eye(3), np.ones(3), np.eye(3)) == pytest.approx(3.0)
    # N(0, I) vs N(0, 4I) in d dims: d (1 + 4 - 2*2) = d
    assert frechet_distance(np.zeros(5), np.eye(5), np.zeros(5), 4 * np.eye(5)) == pytest.approx(5.0)


def test_precision_recall_synthetic():
    rng = np.random.default_rng(1)
    real = rng.normal(size=(1000, 4))
    same = rng.normal(size=(1000, 4))
    far = rng.normal(size=(1000, 4)) + 50.0
    p, r = precision_recall(real, same)
    assert p > 0.9 and r > 0.9
    p, r = precision_recall(real, far)
    assert p == 0.0 and r == 0.0
    # a mode-collapsed generator: precise, but covers little of the real distribution
    collapsed = 0.05 * rng.normal(size=(1000, 4))
    p, r = precision_recall(real, collapsed)
    assert p > 0.9 and r < 0.2


@pytest.fixture(scope="module")
def evaluator(tfds_dir, mnist_archives):
    from helpers.metrics import get_evaluator

    return get_evaluator(tfds_dir, mnist_archives)


def test_the_shipped_classifier_is_the_one_used_and_reaches_99_percent(evaluator, mnist_test):
    """Every figure of the project is computed with the shipped weights (helpers/assets/)."""
    from flax import nnx

    from export_classifier import classifier_accuracy

    from helpers.metrics import SHIPPED_CLASSIFIER, load_classifier_weights

    assert SHIPPED_CLASSIFIER.is_file()
    shipped = load_classifier_weights(SHIPPED_CLASSIFIER)
    for a, b in zip(jax_leaves(nnx.state(evaluator.model, nnx.Param)), jax_leaves(nnx.state(shipped, nnx.Param))):
        np.testing.assert_array_equal(a, b)
    images, labels = mnist_test
    assert classifier_accuracy(evaluator.model, images, labels) >= 0.99


def jax_leaves(tree):
    import jax

    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_the_classifier_training_code_learns(tfds_dir, mnist_archives, mnist_test):
    """What made the shipped weights (3 epochs on all 60,000 digits), run briefly: 1 epoch on 10,000."""
    from helpers.data import load_split
    from export_classifier import classifier_accuracy, train_classifier

    images, labels = load_split("mnist", "train", data_dir=tfds_dir, manual_dir=mnist_archives, limit=10_000)
    model = train_classifier(images, labels, epochs=1)
    test_x, test_y = mnist_test
    assert classifier_accuracy(model, test_x[:2000], test_y[:2000]) >= 0.9  # 92.8% here; chance is 10%


def test_a_damaged_weights_file_is_refused(tmp_path):
    from helpers.metrics import load_classifier_weights

    np.savez(tmp_path / "other.npz", w=np.zeros(3))
    with pytest.raises(ValueError, match="does not hold the weights"):
        load_classifier_weights(tmp_path / "other.npz")


def _blur(x):
    k = np.array([1, 4, 6, 4, 1], np.float32) / 16
    for axis in (1, 2):
        x = np.apply_along_axis(lambda m: np.convolve(m, k, mode="same"), axis, x)
    return x


@pytest.mark.slow
def test_figures_on_real_blurred_noised_and_noise(evaluator):
    real = evaluator.test_m11[:1000]
    f_real = evaluator.evaluate(real)
    f_blur = evaluator.evaluate(np.clip(_blur(real), -1, 1))
    rng = np.random.default_rng(0)
    f_noised = evaluator.evaluate(np.clip(real + 0.5 * rng.normal(size=real.shape), -1, 1).astype(np.float32))
    f_noise = evaluator.evaluate(rng.uniform(-1, 1, size=real.shape).astype(np.float32))
    # a set against itself: ~0
    own = evaluator.evaluate(evaluator.test_m11)
    assert abs(own["frechet_distance"]) < 1e-6
    assert f_real["frechet_distance"] < f_blur["frechet_distance"] < f_noise["frechet_distance"]
    assert f_real["frechet_distance"] < f_noised["frechet_distance"] < f_noise["frechet_distance"]
    assert f_real["precision"] > 0.9 and f_real["recall"] > 0.85  # N=1000 samples vs 10,000 real digits
    assert f_noise["precision"] < 0.05 and f_noise["recall"] < 0.05
    assert f_real["confident_share"] > 0.97 and f_real["class_kl_from_uniform"] < 0.01
    assert f_noise["class_kl_from_uniform"] > 0.5  # noise collapses onto few classes
    # real test digits are new digits: not closer to the training set than other real digits
    assert f_real["nn_train_distance"] == pytest.approx(f_real["nn_train_distance_real_test"], rel=0.05)


@pytest.mark.slow
def test_evaluate_script_on_real_and_noise(tmp_path, evaluator):
    np.save(tmp_path / "real.npy", evaluator.test_m11[:500])
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "evaluate.py"), str(tmp_path / "real.npy")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    figures = json.loads(r.stdout.strip().splitlines()[-1])
    assert figures["n"] == 500 and figures["min_class_share"] > 0.05
    assert json.loads((tmp_path / "evaluate.json").read_text()) == figures
    bad = subprocess.run([sys.executable, str(REPO / "scripts" / "evaluate.py"), str(tmp_path / "missing.npy")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "not found" in bad.stderr
