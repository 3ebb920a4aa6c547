"""Train the evaluation classifier and write its weights to helpers/assets/ (how they were made).

    python tools/export_classifier.py [--out helpers/assets/classifier-mnist-v3.npz]

3 epochs of Adam on the 60,000 MNIST training digits (seed 0, a few minutes on 2 CPU cores);
prints the test accuracy. Every machine then scores samples with the same network.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import helpers  # noqa: F401  (sets the GPU-memory variables before TensorFlow / JAX start)
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm


def train_classifier(images, labels, epochs: int = 3, batch_size: int = 128, seed: int = 0):
    """The evaluation classifier trained on uint8 digits: Adam with a cosine decay, random 1-pixel
    shifts (where a digit sits should not matter); 3 epochs with seed 0 made the shipped weights."""
    from helpers.data import batch_slice, epoch_order, steps_per_epoch, to_model_range
    from helpers.metrics import Classifier

    model = Classifier(rngs=nnx.Rngs(params=seed, dropout=seed + 1))
    total = epochs * steps_per_epoch(len(images), batch_size)
    opt = nnx.Optimizer(model, optax.adam(optax.cosine_decay_schedule(2e-3, total)), wrt=nnx.Param)
    data = jnp.asarray(images)
    labels_d = jnp.asarray(labels)
    key = jax.random.key(seed)

    @nnx.jit
    def step(model, opt, s):
        spe = steps_per_epoch(len(images), batch_size)
        idx, mask = batch_slice(epoch_order(key, s // spe, len(images), batch_size), s % spe, len(images), batch_size)
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

    for s in tqdm(range(total), desc="training the evaluation classifier", mininterval=5):
        step(model, opt, jnp.int32(s))
    model.eval()
    return model


def save_classifier_weights(model, path) -> None:
    """Write the classifier's parameters to an .npz (what `helpers.metrics.load_classifier_weights` reads)."""
    from helpers.metrics import flat_params

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **flat_params(model))


def classifier_accuracy(model, images_uint8, labels) -> float:
    """Share of uint8 images (N, 28, 28, 1) the classifier labels correctly."""
    from helpers.data import to_model_range
    from helpers.metrics import _predict

    logits, _ = _predict(model, np.asarray(to_model_range(jnp.asarray(images_uint8))))
    return float(np.mean(np.argmax(logits, -1) == np.asarray(labels)))


def main(argv=None) -> int:
    from helpers.data import load_split
    from helpers.metrics import SHIPPED_CLASSIFIER

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(SHIPPED_CLASSIFIER))
    p.add_argument("--data-dir")
    p.add_argument("--manual-dir")
    args = p.parse_args(argv)
    images, labels = load_split("mnist", "train", data_dir=args.data_dir, manual_dir=args.manual_dir)
    model = train_classifier(images, labels)
    test_x, test_y = load_split("mnist", "test", data_dir=args.data_dir, manual_dir=args.manual_dir)
    save_classifier_weights(model, args.out)
    print(f"wrote {args.out} (test accuracy {classifier_accuracy(model, test_x, test_y):.4f})")
    return 0


if __name__ == "__main__":
    from helpers.environment import tune_for_cpu

    tune_for_cpu()  # before JAX starts; may restart this script once (helpers.environment)
    sys.exit(main())
