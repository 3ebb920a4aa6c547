"""Figures: sample grids, the training curve, the reverse process. Each returns its matplotlib
Figure and, given `path`, also saves it as a PNG (inline in Jupyter, a file from a script)."""

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from helpers.data import from_model_range


def _save(fig, path):  # as a PNG too, when given a path
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110, bbox_inches="tight")
    return fig


def image_grid(images, ncols: int | None = None, pad: int = 2) -> np.ndarray:
    """Tile (N, H, W, 1) images in [-1, 1] into one (rows*H, cols*W) array in [0, 1], white between them."""
    x = from_model_range(images)[..., 0]
    n, h, w = x.shape
    ncols = ncols or int(np.ceil(np.sqrt(n)))
    nrows = int(np.ceil(n / ncols))
    x = np.pad(x, ((0, nrows * ncols - n), (pad, 0), (pad, 0)), constant_values=1.0)  # white border and blanks
    grid = x.reshape(nrows, ncols, h + pad, w + pad).transpose(0, 2, 1, 3).reshape(nrows * (h + pad), ncols * (w + pad))
    return np.pad(grid, ((0, pad), (0, pad)), constant_values=1.0)


def plot_samples(images, title: str = "Samples", ncols: int | None = None, path=None, size: float = 0.6,
                 row_labels=None):
    """A grid of images in [-1, 1]; optional `row_labels` name each row (e.g. the digit class)."""
    ncols = ncols or int(np.ceil(np.sqrt(len(images))))
    nrows = int(np.ceil(len(images) / ncols))
    fig, ax = plt.subplots(figsize=(max(3.0, ncols * size), max(3.0, nrows * size) + 0.4))
    ax.imshow(image_grid(images, ncols), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set(xticks=[], title=title)
    if row_labels is not None:
        h = images.shape[1] + 2
        ax.set_yticks([2 + h * i + h / 2 - 1 for i in range(len(row_labels))], [str(r) for r in row_labels])
        ax.tick_params(length=0)
        ax.spines[:].set_visible(False)
    else:
        ax.axis("off")
    fig.tight_layout()
    return _save(fig, path)


def plot_training_curve(history: dict, title: str = "Diffusion training (warmup + cosine decay)", path=None,
                        window: int | None = None):
    """Loss per step (raw, faint) and smoothed, with the learning rate on a second axis."""
    steps, loss, lr = (np.asarray(history[k]) for k in ("step", "loss", "lr"))
    fig, ax1 = plt.subplots(figsize=(10, 4.2))
    ax1.plot(steps, loss, alpha=0.3, linewidth=0.6, color="tab:blue", label="loss")
    window = window or max(1, min(100, len(loss) // 10))
    if window > 1 and len(loss) > window:
        ax1.plot(steps[window - 1:], np.convolve(loss, np.ones(window) / window, mode="valid"), linewidth=2,
                 color="tab:blue", label=f"loss (moving average of {window})")
    ax1.set(xlabel="step", yscale="log", title=title)
    ax1.set_ylabel("loss", color="tab:blue")
    ax1.grid(True, alpha=0.3)
    ax2 = ax1.twinx()
    ax2.plot(steps, lr, linewidth=1.5, color="tab:orange", label="learning rate")
    ax2.set_ylabel("learning rate", color="tab:orange")
    lines = ax1.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax1.legend(lines, [ln.get_label() for ln in lines], loc="upper right")
    fig.tight_layout()
    return _save(fig, path)


def plot_trajectory(xs, pairs, num_frames: int = 10, path=None, title: str = "Reverse process", at: str = "t_prev"):
    """Rows: samples; columns: `num_frames` evenly spaced steps of a sampler's trajectory, labelled with
    the step's t_prev (the x_t a step produces) or, with `at="t"`, its t (the x0_hat it estimated there)."""
    xs = np.asarray(xs)
    idx = np.unique(np.linspace(0, len(xs) - 1, num_frames).round().astype(int))
    n = xs.shape[1]
    fig, axes = plt.subplots(n, len(idx), figsize=(1.1 * len(idx), 1.1 * n + 0.4), squeeze=False)
    for j, k in enumerate(idx):
        for i in range(n):
            axes[i, j].imshow(from_model_range(xs[k, i])[..., 0], cmap="gray", vmin=0, vmax=1)
            axes[i, j].axis("off")
        axes[0, j].set_title(f"t={int(pairs[k][0 if at == 't' else 1])}", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def save_trajectory_gif(xs, path, ncols: int | None = None, frames: int = 40, scale: int = 3, duration_ms: int = 80):
    """An animated GIF of the reverse process: each frame is the grid of x_t at one step."""
    from PIL import Image
    xs = np.asarray(xs)
    grids = [(image_grid(xs[k], ncols) * 255).astype(np.uint8)
             for k in np.unique(np.linspace(0, len(xs) - 1, frames).round().astype(int))]
    images = [Image.fromarray(g).resize((g.shape[1] * scale, g.shape[0] * scale), Image.NEAREST) for g in grids]
    images += [images[-1]] * 10  # hold the final frame
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images[0].save(path, save_all=True, append_images=images[1:], duration=duration_ms, loop=0)
    return path
