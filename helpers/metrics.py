"""Sample quality without downloading anything: a small MNIST classifier trained here (its weights
ship in `helpers/assets/`, so every machine scores with the same network), and figures computed in
its feature space.

- Frechet distance between classifier features of samples and of the 10,000 test digits (as FID,
  Heusel et al. 2017, but with this classifier instead of Inception; float64). It depends on the
  number of samples N, so every report states N.
- Mean confidence and the share of samples classified with confidence > 0.9. Read them only
  together with class coverage: a classifier can be very confident on noise.
- Predicted-class histogram and its KL divergence from uniform (0 = all ten classes equally often).
- Precision and recall (Kynkaanniemi et al. 2019): k-nearest-neighbour balls around real and
  generated features.
- Nearest-training-neighbour distance (pixels), against the same figure for real test digits: a
  model that memorises its training set has samples much closer to it than new real digits are.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

CLASSIFIER_VERSION = "v3"


def cache_dir() -> Path:
    """Where the classifier and reference statistics are kept: $MNIST_DIFFUSION_CACHE or ~/.cache/..."""
    from helpers.environment import cache_root

    return cache_root()


class Classifier(nnx.Module):
    """A small CNN on 32 x 32 images in [-1, 1] (32 -> 16 -> 8 -> 4); `features` is its 128-d
    penultimate layer, the space the Frechet distance and precision/recall are computed in."""

    def __init__(self, num_classes: int = 10, *, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(1, 32, (3, 3), padding="SAME", rngs=rngs)
        self.conv2 = nnx.Conv(32, 64, (3, 3), padding="SAME", rngs=rngs)
        self.conv3 = nnx.Conv(64, 64, (3, 3), padding="SAME", rngs=rngs)
        self.dense = nnx.Linear(4 * 4 * 64, 128, rngs=rngs)
        self.dropout = nnx.Dropout(0.3, rngs=rngs)
        self.head = nnx.Linear(128, num_classes, rngs=rngs)

    def features(self, x: jax.Array) -> jax.Array:
        """The 128 pre-ReLU units of the dense layer: the feature space of every figure."""
        h = nnx.max_pool(nnx.relu(self.conv1(x)), (2, 2), (2, 2))
        h = nnx.max_pool(nnx.relu(self.conv2(h)), (2, 2), (2, 2))
        h = nnx.max_pool(nnx.relu(self.conv3(h)), (2, 2), (2, 2))
        return self.dense(h.reshape(h.shape[0], -1))  # before the ReLU: noise does not collapse to 0

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.head(self.dropout(nnx.relu(self.features(x))))


def _train_classifier(images, labels, epochs: int = 3, batch_size: int = 128, seed: int = 0, log=print):
    from helpers.data import batch_indices, steps_per_epoch, to_model_range

    model = Classifier(rngs=nnx.Rngs(params=seed, dropout=seed + 1))
    total = epochs * steps_per_epoch(len(images), batch_size)
    opt = nnx.Optimizer(model, optax.adam(optax.cosine_decay_schedule(2e-3, total)), wrt=nnx.Param)
    data = jnp.asarray(images)
    labels_d = jnp.asarray(labels)
    key = jax.random.key(seed)

    @nnx.jit
    def step(model, opt, s):
        idx, mask = batch_indices(key, s, len(images), batch_size)
        x = to_model_range(data[idx])
        # small random shifts (up to 1 pixel): the classifier should not care where a digit sits
        shift = jax.random.randint(jax.random.fold_in(key, s), (2,), -1, 2)
        x = jnp.roll(x, shift, axis=(1, 2))

        def loss_fn(model):
            logits = model(x)
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels_d[idx])
            return jnp.sum(ce * mask) / jnp.sum(mask)

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        opt.update(model, grads)
        return loss

    from tqdm import tqdm

    for s in tqdm(range(total), desc="training the evaluation classifier", mininterval=5):
        step(model, opt, jnp.int32(s))
    model.eval()
    return model


def _predict(model, images_m11: np.ndarray, batch: int = 1000):
    """Logits and features of images in [-1, 1], (N, 32, 32, 1)."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state, x):
        m = nnx.merge(graphdef, state)
        f = m.features(x)
        return m.head(nnx.relu(f)), f

    logits, feats = [], []
    for i in range(0, len(images_m11), batch):
        lo, fe = run(state, jnp.asarray(images_m11[i:i + batch], jnp.float32))
        logits.append(np.asarray(lo))
        feats.append(np.asarray(fe))
    return np.concatenate(logits), np.concatenate(feats).astype(np.float64)


# The weights of the evaluation classifier ship with the package, like the fixed Inception weights
# of FID: every machine then scores with the same network, and nobody waits for it to train. They
# are exactly what `_train_classifier` produces (3 epochs, seed 0); `export_classifier` rewrites them.
SHIPPED_CLASSIFIER = Path(__file__).resolve().parent / "assets" / f"classifier-mnist-{CLASSIFIER_VERSION}.npz"


def load_classifier(data_dir=None, manual_dir=None, log=print, quick: bool = False) -> Classifier:
    """The evaluation classifier: the shipped weights (`SHIPPED_CLASSIFIER`), else the cached ones,
    else trained now (a few minutes on 2 CPU cores) and cached.

    `quick=True` (smoke runs) uses the shipped weights too; only when they are missing does it train
    a rough one (1 epoch on 5,000 digits, seconds) instead of the real one.
    """
    if SHIPPED_CLASSIFIER.is_file():
        try:
            return load_classifier_weights(SHIPPED_CLASSIFIER)
        except Exception as err:  # a damaged file: fall back to the cache or to training
            log(f"the shipped classifier {SHIPPED_CLASSIFIER} could not be read ({type(err).__name__}: {err}); "
                f"using the cached or a newly trained one")
    return _cached_classifier(quick, data_dir, manual_dir, log)


def _cached_classifier(quick: bool, data_dir, manual_dir, log) -> Classifier:
    """The classifier from the cache, or trained now and cached (the real one, or with `quick` a rough one)."""
    from helpers.data import file_lock

    epochs, limit = (1, 5_000) if quick else (3, None)
    path = cache_dir() / (f"classifier-mnist-{CLASSIFIER_VERSION}" + ("-quick" if quick else ""))
    with file_lock(path.parent / f".{path.name}.lock"):  # train once even when processes ask together
        return _load_or_train_classifier(path, epochs, limit, quick, data_dir, manual_dir, log)


def _flat_params(model: Classifier) -> dict[str, np.ndarray]:
    """{'conv1/kernel': array, ...}: the parameters as one flat dict (what the .npz holds)."""
    from flax.traverse_util import flatten_dict

    pure = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    return {k: np.asarray(v) for k, v in flatten_dict(pure, sep="/").items()}


def load_classifier_weights(path) -> Classifier:
    """A Classifier with the weights of an .npz written by `export_classifier` (shapes checked)."""
    from flax.traverse_util import unflatten_dict

    model = Classifier(rngs=nnx.Rngs(0))
    model.eval()
    want = _flat_params(model)
    with np.load(path) as f:
        got = {k: f[k] for k in f.files}
    if set(got) != set(want) or any(got[k].shape != want[k].shape for k in want):
        raise ValueError(f"{path} does not hold the weights of this classifier (version {CLASSIFIER_VERSION})")
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, unflatten_dict({k: jnp.asarray(v) for k, v in got.items()}, sep="/"))
    nnx.update(model, state)
    return model


def export_classifier(path=SHIPPED_CLASSIFIER, data_dir=None, manual_dir=None, log=print) -> float:
    """Write the evaluation classifier's weights to `path` (.npz; from the cache, else trained) and
    return its test accuracy. This is how `helpers/assets/` was made."""
    from helpers.data import load_split

    model = _cached_classifier(False, data_dir, manual_dir, log)
    test_x, test_y = load_split("mnist", "test", data_dir=data_dir, manual_dir=manual_dir)
    acc = classifier_accuracy(model, test_x, test_y)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **_flat_params(model))
    log(f"wrote {path} (test accuracy {acc:.4f})")
    return acc


def _load_or_train_classifier(path, epochs, limit, quick, data_dir, manual_dir, log) -> Classifier:
    import orbax.checkpoint as ocp

    from helpers.data import load_split

    model = Classifier(rngs=nnx.Rngs(0))
    model.eval()
    state = nnx.state(model, nnx.Param)
    if (path / "params").exists():
        try:
            restored = ocp.StandardCheckpointer().restore((path / "params").absolute(),
                                                          nnx.to_pure_dict(state))
            nnx.replace_by_pure_dict(state, restored)
            nnx.update(model, state)
            return model
        except Exception as err:  # a broken cache: retrain
            log(f"the cached classifier in {path} could not be read ({type(err).__name__}); training it again")
    log(f"training the MNIST evaluation classifier once ({'seconds' if quick else 'a few minutes on 2 CPU cores'}); "
        f"it is cached in {path}")
    images, labels = load_split("mnist", "train", data_dir=data_dir, manual_dir=manual_dir, limit=limit)
    model = _train_classifier(images, labels, epochs=epochs, log=log)
    test_x, test_y = load_split("mnist", "test", data_dir=data_dir, manual_dir=manual_dir)
    acc = classifier_accuracy(model, test_x, test_y)
    log(f"evaluation classifier: test accuracy {acc:.4f}")
    path.mkdir(parents=True, exist_ok=True)
    ckptr = ocp.StandardCheckpointer()
    ckptr.save((path / "params").absolute(), nnx.to_pure_dict(nnx.state(model, nnx.Param)), force=True)
    ckptr.wait_until_finished()
    (path / "info.json").write_text(json.dumps({"test_accuracy": acc, "version": CLASSIFIER_VERSION}))
    return model


def classifier_accuracy(model, images_uint8, labels) -> float:
    """Share of uint8 images (N, 28, 28, 1) the classifier labels correctly."""
    from helpers.data import to_model_range

    logits, _ = _predict(model, np.asarray(to_model_range(jnp.asarray(images_uint8))))
    return float(np.mean(np.argmax(logits, -1) == np.asarray(labels)))


# ----------------------------------------------------------------------------- the figures


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) in float64 (Heusel et al. 2017, eq. 6).

    Tr((S1 S2)^(1/2)) is the sum of the square roots of the eigenvalues of S1 S2 (real and >= 0 for
    covariance matrices; tiny negative round-off is clipped), which avoids an unstable matrix sqrt.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    eig = np.linalg.eigvals(s1 @ s2)
    tr_sqrt = np.sum(np.sqrt(np.clip(eig.real, 0.0, None)))
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2.0 * tr_sqrt)


def feature_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of features (N, D), in float64, for the Frechet distance."""
    f = np.asarray(features, np.float64)
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _pairwise_sq(a, b):
    return jnp.maximum(jnp.sum(a**2, 1)[:, None] + jnp.sum(b**2, 1)[None, :] - 2.0 * a @ b.T, 0.0)


def _kth_nn_radius(feats, k: int, chunk: int = 2000) -> np.ndarray:
    """Distance from each point to its k-th nearest neighbour in the same set (itself excluded)."""
    f = jnp.asarray(feats, jnp.float32)
    out = []
    for i in range(0, len(f), chunk):
        d = _pairwise_sq(f[i:i + chunk], f)
        nearest = -jax.lax.top_k(-d, k + 1)[0]  # ascending; column 0 is the point itself
        out.append(np.sqrt(np.asarray(nearest[:, k])))
    return np.concatenate(out)


def _inside_any_ball(points, centers, radii, chunk: int = 2000) -> np.ndarray:
    c, r2 = jnp.asarray(centers, jnp.float32), jnp.asarray(radii, jnp.float32) ** 2
    out = []
    for i in range(0, len(points), chunk):
        d = _pairwise_sq(jnp.asarray(points[i:i + chunk], jnp.float32), c)
        out.append(np.asarray(jnp.any(d <= r2[None, :], axis=1)))
    return np.concatenate(out)


def precision_recall(real_features, fake_features, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019, eqs. 1-3) with k-NN manifolds."""
    real_r = _kth_nn_radius(real_features, k)
    fake_r = _kth_nn_radius(fake_features, k)
    precision = float(np.mean(_inside_any_ball(fake_features, real_features, real_r)))
    recall = float(np.mean(_inside_any_ball(real_features, fake_features, fake_r)))
    return precision, recall


def nearest_neighbours(samples_m11, train_m11, chunk: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """L2 pixel distance (images in [-1, 1]) from each sample to its nearest training image, and
    that image's index."""
    t = jnp.asarray(np.reshape(train_m11, (len(train_m11), -1)), jnp.float32)
    s = np.reshape(samples_m11, (len(samples_m11), -1))
    dist, idx = [], []
    for i in range(0, len(s), chunk):
        d = _pairwise_sq(jnp.asarray(s[i:i + chunk], jnp.float32), t)
        j = jnp.argmin(d, axis=1)
        idx.append(np.asarray(j))
        dist.append(np.sqrt(np.asarray(jnp.take_along_axis(d, j[:, None], axis=1)[:, 0])))
    return np.concatenate(dist), np.concatenate(idx)


def nearest_neighbour_distance(samples_m11, train_m11, chunk: int = 500) -> np.ndarray:
    """L2 pixel distance (images in [-1, 1]) from each sample to its nearest training image."""
    return nearest_neighbours(samples_m11, train_m11, chunk)[0]


class Evaluator:
    """Holds the classifier and the reference statistics of the real test (and training) digits."""

    def __init__(self, data_dir=None, manual_dir=None, log=print, quick: bool = False):
        from helpers.data import load_split, to_model_range

        self.quick = quick  # smoke runs: 2,000 test and 5,000 training digits (and a rough classifier
        # if the shipped weights are missing)
        self.model = load_classifier(data_dir, manual_dir, log=log, quick=quick)
        test_x, self.test_labels = load_split("mnist", "test", data_dir=data_dir, manual_dir=manual_dir,
                                              limit=2_000 if quick else None)
        train_x, _ = load_split("mnist", "train", data_dir=data_dir, manual_dir=manual_dir,
                                limit=5_000 if quick else None)
        self.test_m11 = np.asarray(to_model_range(jnp.asarray(test_x)))
        self.train_m11 = np.asarray(to_model_range(jnp.asarray(train_x)))
        _, self.test_features = _predict(self.model, self.test_m11)
        self.test_mu, self.test_sigma = feature_stats(self.test_features)
        self._nn_test = None

    def predict(self, images_m11) -> tuple[np.ndarray, np.ndarray]:
        """The classifier's logits (N, 10) and features (N, 128) for images in [-1, 1]."""
        return _predict(self.model, np.asarray(images_m11, np.float32))

    def nn_baseline(self, n: int = 1000) -> float:
        """Mean nearest-training-neighbour distance of n real test digits (what 'new digits' score)."""
        if self._nn_test is None:
            self._nn_test = float(np.mean(nearest_neighbour_distance(self.test_m11[:n], self.train_m11)))
        return self._nn_test

    def evaluate(self, samples_m11, num_real: int = 10_000) -> dict:
        """All figures for samples in [-1, 1] of shape (N, 32, 32, 1) (N >= 100 recommended)."""
        x = np.asarray(samples_m11, np.float32)
        if x.ndim != 4 or x.shape[1:] != (32, 32, 1):
            raise ValueError(f"Expected samples of shape (N, 32, 32, 1) in [-1, 1], got {x.shape}.")
        if not np.all(np.isfinite(x)):
            raise ValueError("The samples contain NaN or inf.")
        t0 = time.perf_counter()
        logits, feats = _predict(self.model, x)
        probs = np.asarray(jax.nn.softmax(jnp.asarray(logits), axis=-1))
        conf = probs.max(axis=1)
        pred = probs.argmax(axis=1)
        hist = np.bincount(pred, minlength=10) / len(pred)
        kl = float(np.sum(np.where(hist > 0, hist * np.log(np.maximum(hist, 1e-12) * 10), 0.0)))
        mu, sigma = feature_stats(feats)
        real = self.test_features[:num_real]
        precision, recall = precision_recall(real, feats)
        nn = nearest_neighbour_distance(x, self.train_m11)
        return {
            "n": int(len(x)),
            "frechet_distance": frechet_distance(mu, sigma, self.test_mu, self.test_sigma),
            "mean_confidence": float(conf.mean()),
            "confident_share": float(np.mean(conf > 0.9)),
            "class_histogram": [round(float(h), 4) for h in hist],
            "class_kl_from_uniform": kl,
            "min_class_share": float(hist.min()),
            "max_class_share": float(hist.max()),
            "precision": precision,
            "recall": recall,
            "nn_train_distance": float(nn.mean()),
            "nn_train_distance_real_test": self.nn_baseline(),
            "seconds": round(time.perf_counter() - t0, 1),
        }


_EVALUATOR: dict = {}


def get_evaluator(data_dir=None, manual_dir=None, log=print, quick: bool = False) -> Evaluator:
    """One Evaluator per process (the reference statistics take a few seconds to compute)."""
    key = (str(data_dir), str(manual_dir), quick)
    if key not in _EVALUATOR:
        _EVALUATOR[key] = Evaluator(data_dir, manual_dir, log=log, quick=quick)
    return _EVALUATOR[key]


def format_table(figures: dict) -> str:
    """The figures of `Evaluator.evaluate` as a readable two-column table."""
    rows = [
        ("samples (N)", f"{figures['n']}"),
        (f"Frechet distance (classifier features, N={figures['n']})", f"{figures['frechet_distance']:.3f}"),
        ("mean confidence", f"{figures['mean_confidence']:.3f}"),
        ("share with confidence > 0.9", f"{figures['confident_share']:.3f}"),
        ("class shares min / max", f"{figures['min_class_share']:.3f} / {figures['max_class_share']:.3f}"),
        ("KL(class histogram || uniform)", f"{figures['class_kl_from_uniform']:.4f}"),
        ("precision / recall (k=3)", f"{figures['precision']:.3f} / {figures['recall']:.3f}"),
        ("nearest-train distance (samples / real test)",
         f"{figures['nn_train_distance']:.2f} / {figures['nn_train_distance_real_test']:.2f}"),
    ]
    w = max(len(r[0]) for r in rows)
    return "\n".join(f"{a:<{w}}  {b}" for a, b in rows)


def evaluate_samples(samples_m11, out_dir=None, data_dir=None, manual_dir=None, log=print,
                     quick: bool = False) -> dict:
    """Figures for samples; printed as a table and, with `out_dir`, written to evaluate.json.
    `quick=True` (smoke runs) uses small reference sets: its figures say only that the code ran."""
    figures = get_evaluator(data_dir, manual_dir, log=log, quick=quick).evaluate(samples_m11)
    figures["classifier"] = (f"{CLASSIFIER_VERSION}, quick reference sets (smoke test only)" if quick
                             else f"full ({CLASSIFIER_VERSION})")
    log(format_table(figures))
    if out_dir is not None:
        (Path(out_dir) / "evaluate.json").write_text(json.dumps(figures, indent=2))
    return figures
