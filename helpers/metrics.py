"""Sample quality offline, in the feature space of a small MNIST classifier whose weights ship in
`helpers/assets/` (every machine scores with the same network): the Frechet distance to the 10,000 test
digits (FID's formula, Heusel et al. 2017; it depends on N, so reports state N), the confident share with
the class histogram (a classifier can be confident on noise), precision and recall (Kynkaanniemi et al.
2019), and the distance to the nearest training image against real test digits' (memorised copies sit closer)."""

import functools
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.traverse_util import flatten_dict, unflatten_dict

from helpers.data import load_split, to_model_range

CLASSIFIER_VERSION = "v3"


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
        for conv in (self.conv1, self.conv2, self.conv3):
            x = nnx.max_pool(nnx.relu(conv(x)), (2, 2), (2, 2))
        return self.dense(x.reshape(x.shape[0], -1))  # before the ReLU: noise does not collapse to 0

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.head(self.dropout(nnx.relu(self.features(x))))


def _predict(model, images_m11: np.ndarray, batch: int = 1000):
    """Logits and features of images in [-1, 1], (N, 32, 32, 1)."""
    graphdef, state = nnx.split(model)
    @jax.jit
    def run(state, x):
        m = nnx.merge(graphdef, state)
        f = m.features(x)
        return m.head(nnx.relu(f)), f

    out = [run(state, jnp.asarray(images_m11[i:i + batch], jnp.float32)) for i in range(0, len(images_m11), batch)]
    return np.concatenate([o[0] for o in out]), np.concatenate([o[1] for o in out]).astype(np.float64)


# Shipped like FID's fixed Inception weights, so every machine scores alike (tools/export_classifier.py).
SHIPPED_CLASSIFIER = Path(__file__).resolve().parent / "assets" / f"classifier-mnist-{CLASSIFIER_VERSION}.npz"


def flat_params(model: Classifier) -> dict[str, np.ndarray]:
    """{'conv1/kernel': array, ...}: the parameters as one flat dict (what the .npz holds)."""
    return {k: np.asarray(v) for k, v in flatten_dict(nnx.to_pure_dict(nnx.state(model, nnx.Param)), sep="/").items()}


def load_classifier_weights(path=SHIPPED_CLASSIFIER) -> Classifier:
    """A Classifier with the weights of an .npz written by tools/export_classifier.py (shapes checked)."""
    model = Classifier(rngs=nnx.Rngs(0))
    model.eval()
    want = flat_params(model)
    try:
        with np.load(path) as f:
            got = {k: f[k] for k in f.files}
    except (OSError, ValueError) as err:
        raise ValueError(f"The evaluation classifier's weights {path} cannot be read ({err}): reinstall the "
                         f"package, or rewrite them with `python tools/export_classifier.py`.") from err
    if set(got) != set(want) or any(got[k].shape != want[k].shape for k in want):
        raise ValueError(f"{path} does not hold the weights of this classifier (version {CLASSIFIER_VERSION})")
    nnx.update(model, unflatten_dict({k: jnp.asarray(v) for k, v in got.items()}, sep="/"))
    return model


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) in float64 (Heusel et al. 2017, eq. 6); the trace
    of the square root is the sum of the square roots of S1 S2's eigenvalues (no unstable matrix sqrt)."""
    mu1, mu2, s1, s2 = (np.asarray(a, np.float64) for a in (mu1, mu2, sigma1, sigma2))
    tr_sqrt = np.sum(np.sqrt(np.clip(np.linalg.eigvals(s1 @ s2).real, 0.0, None)))
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2.0 * tr_sqrt)


def feature_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of features (N, D), in float64, for the Frechet distance."""
    f = np.asarray(features, np.float64)
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _pairwise_sq(a, b):  # squared distances between the rows of a and of b
    return jnp.maximum(jnp.sum(a**2, 1)[:, None] + jnp.sum(b**2, 1)[None, :] - 2.0 * a @ b.T, 0.0)


def _kth_nn_radius(feats, k: int, chunk: int = 2000) -> np.ndarray:
    """Distance from each point to its k-th nearest neighbour in the same set (itself excluded)."""
    f = jnp.asarray(feats, jnp.float32)
    # the k + 1 smallest squared distances, ascending; column 0 is the point itself
    nearest = [-jax.lax.top_k(-_pairwise_sq(f[i:i + chunk], f), k + 1)[0][:, k] for i in range(0, len(f), chunk)]
    return np.sqrt(np.concatenate([np.asarray(d) for d in nearest]))


def _inside_any_ball(points, centers, radii, chunk: int = 2000) -> np.ndarray:
    c, r2 = jnp.asarray(centers, jnp.float32), jnp.asarray(radii, jnp.float32) ** 2
    return np.concatenate([np.asarray(jnp.any(_pairwise_sq(jnp.asarray(points[i:i + chunk], jnp.float32), c)
                                              <= r2[None, :], axis=1)) for i in range(0, len(points), chunk)])


def precision_recall(real_features, fake_features, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019, eqs. 1-3) with k-NN manifolds."""
    return (float(np.mean(_inside_any_ball(fake_features, real_features, _kth_nn_radius(real_features, k)))),
            float(np.mean(_inside_any_ball(real_features, fake_features, _kth_nn_radius(fake_features, k)))))


def nearest_neighbours(samples_m11, train_m11, chunk: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """L2 pixel distance (images in [-1, 1]) from each sample to its nearest training image, and its index."""
    t = jnp.asarray(np.reshape(train_m11, (len(train_m11), -1)), jnp.float32)
    s = np.reshape(samples_m11, (len(samples_m11), -1))
    d2 = (_pairwise_sq(jnp.asarray(s[i:i + chunk], jnp.float32), t) for i in range(0, len(s), chunk))  # one at a time
    dist2, idx = zip(*((np.asarray(d.min(axis=1)), np.asarray(d.argmin(axis=1))) for d in d2))
    return np.sqrt(np.concatenate(dist2)), np.concatenate(idx)


class Evaluator:
    """Holds the classifier and the reference statistics of the real test (and training) digits."""
    def __init__(self, data_dir=None, manual_dir=None, quick: bool = False):
        self.model = load_classifier_weights()
        where = dict(data_dir=data_dir, manual_dir=manual_dir)  # quick (smoke runs): 2,000 test, 5,000 training digits
        test_x, self.test_labels = load_split("mnist", "test", limit=2_000 if quick else None, **where)
        train_x, _ = load_split("mnist", "train", limit=5_000 if quick else None, **where)
        self.test_m11, self.train_m11 = (np.asarray(to_model_range(jnp.asarray(x))) for x in (test_x, train_x))
        _, self.test_features = _predict(self.model, self.test_m11)
        self.test_mu, self.test_sigma = feature_stats(self.test_features)

    def predict(self, images_m11) -> tuple[np.ndarray, np.ndarray]:
        """The classifier's logits (N, 10) and features (N, 128) for images in [-1, 1]."""
        return _predict(self.model, np.asarray(images_m11, np.float32))

    @functools.cached_property
    def train_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Feature mean and covariance of 10,000 training digits: a second reference, to choose settings on
        while reporting against the test digits (so the reported figures are not tuned to themselves)."""
        return feature_stats(_predict(self.model, self.train_m11[:10_000])[1])

    @functools.cached_property
    def nn_baseline(self) -> float:
        """Mean nearest-training-neighbour distance of 1,000 real test digits (what new digits score)."""
        return float(np.mean(nearest_neighbours(self.test_m11[:1000], self.train_m11)[0]))

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
        conf, hist = probs.max(axis=1), np.bincount(probs.argmax(axis=1), minlength=10) / len(probs)
        kl = float(np.sum(np.where(hist > 0, hist * np.log(np.maximum(hist, 1e-12) * 10), 0.0)))
        mu, sigma = feature_stats(feats)
        precision, recall = precision_recall(self.test_features[:num_real], feats)
        nn = nearest_neighbours(x, self.train_m11)[0]
        return {"n": int(len(x)), "frechet_distance": frechet_distance(mu, sigma, self.test_mu, self.test_sigma),
                "frechet_distance_train": frechet_distance(mu, sigma, *self.train_stats),
                "mean_confidence": float(conf.mean()), "confident_share": float(np.mean(conf > 0.9)),
                "class_histogram": [round(float(h), 4) for h in hist], "class_kl_from_uniform": kl,
                "min_class_share": float(hist.min()), "max_class_share": float(hist.max()),
                "precision": precision, "recall": recall, "nn_train_distance": float(nn.mean()),
                "nn_train_distance_real_test": self.nn_baseline, "seconds": round(time.perf_counter() - t0, 1)}


@functools.cache
def get_evaluator(data_dir=None, manual_dir=None, quick: bool = False) -> Evaluator:
    """One Evaluator per process (the reference statistics take a few seconds to compute)."""
    return Evaluator(data_dir, manual_dir, quick=quick)


def format_table(figures: dict) -> str:
    """The figures of `Evaluator.evaluate` as a readable two-column table."""
    f = figures
    rows = {"samples (N)": f"{f['n']}",
            f"Frechet distance (classifier features, N={f['n']})": f"{f['frechet_distance']:.3f}",
            "mean confidence": f"{f['mean_confidence']:.3f}", "share with confidence > 0.9": f"{f['confident_share']:.3f}",
            "class shares min / max": f"{f['min_class_share']:.3f} / {f['max_class_share']:.3f}",
            "KL(class histogram || uniform)": f"{f['class_kl_from_uniform']:.4f}",
            "precision / recall (k=3)": f"{f['precision']:.3f} / {f['recall']:.3f}",
            "nearest-train distance (samples / real test)":
                f"{f['nn_train_distance']:.2f} / {f['nn_train_distance_real_test']:.2f}"}
    return "\n".join(f"{a:<{max(map(len, rows))}}  {b}" for a, b in rows.items())


def evaluate_samples(samples_m11, out_dir=None, data_dir=None, manual_dir=None, log=print,
                     quick: bool = False) -> dict:
    """Figures for samples; printed as a table and, with `out_dir`, written to evaluate.json.
    `quick=True` (smoke runs) uses small reference sets: its figures say only that the code ran."""
    figures = get_evaluator(data_dir, manual_dir, quick=quick).evaluate(samples_m11)
    figures["classifier"] = (f"{CLASSIFIER_VERSION}, quick reference sets (smoke test only)" if quick
                             else f"full ({CLASSIFIER_VERSION})")
    log(format_table(figures))
    if out_dir is not None:
        (Path(out_dir) / "evaluate.json").write_text(json.dumps(figures, indent=2))
    return figures
