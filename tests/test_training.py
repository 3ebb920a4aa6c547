import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from helpers.config import get_config
from helpers.data import batch_slice, epoch_order, steps_per_epoch
from helpers.training import EMA, Trainer, ema_decay_at, make_lr_schedule
from helpers.unet import create_unet


def test_lr_schedule_values():
    f = make_lr_schedule(1e-4, 500, 11700, 0.01)
    assert float(f(0)) == 0.0
    assert float(f(250)) == pytest.approx(0.5e-4, rel=1e-5)
    assert float(f(500)) == pytest.approx(1e-4, rel=1e-5)  # peak at the end of warmup
    assert float(f(11700)) == pytest.approx(1e-6, rel=1e-4)  # 1% at the end
    mid = 500 + (11700 - 500) / 2
    assert float(f(mid)) == pytest.approx(1e-6 + (1e-4 - 1e-6) * 0.5, rel=1e-3)


def test_steps_that_fit_the_time_limit():
    from helpers.training import steps_that_fit

    assert steps_that_fit(0.1, 1.0, chunk=50, margin=0.92) == 550  # 0.92 * 60 s / 0.1 s = 552 -> whole chunks
    assert steps_that_fit(0.1, 1.0, chunk=1, margin=1.0) == 600
    assert steps_that_fit(100.0, 0.01, chunk=4) == 4  # never less than one chunk
    with pytest.raises(ValueError, match="positive"):
        steps_that_fit(0.0, 1.0)


def test_an_explicit_step_count_turns_fitting_off():
    fitted = get_config("tiny", fit_steps_to_time=True, time_limit_minutes=1.0)
    assert fitted.fit_steps_to_time
    assert not fitted.replace(max_steps=100).fit_steps_to_time
    assert not fitted.replace(epochs=2).fit_steps_to_time
    assert fitted.replace(max_steps=100, fit_steps_to_time=True).fit_steps_to_time  # unless asked for both
    with pytest.raises(ValueError, match="needs a time limit"):
        get_config("tiny", fit_steps_to_time=True)


def test_ema_decay_warmup_formula():
    assert float(ema_decay_at(0.9999, 0)) == pytest.approx(0.1)
    assert float(ema_decay_at(0.9999, 90)) == pytest.approx(91 / 100)
    assert float(ema_decay_at(0.9999, 10**7)) == pytest.approx(0.9999)
    assert float(ema_decay_at(0.9999, 0, warmup=False)) == pytest.approx(0.9999)


def _param(model):
    return np.asarray(jax.tree.leaves(nnx.state(model, nnx.Param))[0])


def test_ema_math_and_interval():
    from helpers.unet import UNetConfig

    cfg = UNetConfig(hidden_dims=(4,), attention_resolutions=(), time_embedding_dim=4, max_norm_groups=2)
    model = create_unet(cfg)
    ema = EMA(model, decay=0.5, every=2, warmup=False)
    w0 = _param(model)
    nnx.update(model, jax.tree.map(lambda p: p + 1.0, nnx.state(model, nnx.Param)))
    ema.update(model, 1)  # step 1: not a multiple of 2, nothing changes
    np.testing.assert_allclose(_param(ema.model), w0)
    assert int(ema.count.value) == 0
    ema.update(model, 2)  # 0.5 * w0 + 0.5 * (w0 + 1)
    np.testing.assert_allclose(_param(ema.model), w0 + 0.5, rtol=1e-6)
    assert int(ema.count.value) == 1
    # with warm-up, the first update keeps only 10% of the old average
    ema2 = EMA(create_unet(cfg), decay=0.9999, every=1, warmup=True)
    ema2.update(model, 1)
    np.testing.assert_allclose(_param(ema2.model), 0.1 * w0 + 0.9 * (w0 + 1), rtol=1e-5)


def test_ema_with_warmup_tracks_the_model_after_short_runs():
    # 0.9999 without warm-up keeps 0.9999^1170 = 89% of the initial weights (the reference's problem)
    n = 1170
    kept_plain = 0.9999**n
    kept_warm = np.prod([1 - (1 - float(ema_decay_at(0.9999, i))) for i in range(n)])
    assert kept_plain > 0.88 and kept_warm < 1e-3


def epoch_batches(key, epoch, n, batch_size):
    """Every (indices, mask) of one epoch, shapes (steps_per_epoch, B)."""
    order = epoch_order(key, epoch, n, batch_size)
    return jax.vmap(lambda pos: batch_slice(order, pos, n, batch_size))(jnp.arange(steps_per_epoch(n, batch_size)))


def test_batches_cover_every_example_once_per_epoch():
    key = jax.random.key(3)
    idx, mask = epoch_batches(key, 0, 1000, 128)
    assert idx.shape == (8, 128) and steps_per_epoch(1000, 128) == 8
    real = np.asarray(idx)[np.asarray(mask) > 0]
    assert sorted(real.tolist()) == list(range(1000))
    assert float(mask.sum()) == 1000 and float(mask[-1].sum()) == 1000 - 7 * 128
    idx1, _ = epoch_batches(key, 1, 1000, 128)
    assert not np.array_equal(idx, idx1)  # a new order each epoch
    i5, _ = batch_slice(epoch_order(key, 0, 1000, 128), 5, 1000, 128)
    np.testing.assert_array_equal(i5, idx[5])


def _tiny_trainer(images, **over):
    cfg = get_config("tiny", **over)
    return Trainer(cfg, create_unet(cfg.model, seed=cfg.seed), images)


def test_train_step_lowers_loss_on_a_fixed_batch():
    rng = np.random.default_rng(0)
    # one batch of 32 "images": a bright square at random places
    imgs = np.zeros((32, 28, 28, 1), np.uint8)
    for i in range(32):
        r, c = rng.integers(4, 18, 2)
        imgs[i, r:r + 8, c:c + 8] = 255
    tr = _tiny_trainer(imgs, max_steps=60, batch_size=32, log_every=20, learning_rate=3e-3, warmup_steps=5,
                       train_limit=None)
    hist = tr.fit(progress=False)
    loss = np.asarray(hist["loss"])
    assert len(loss) == 60 and tr.step == 60
    assert loss[-10:].mean() < 0.7 * loss[:10].mean()
    assert hist["lr"][0] == 0.0 and max(hist["lr"]) == pytest.approx(3e-3, rel=1e-4)


def test_last_short_batch_does_not_recompile():
    imgs = np.zeros((40, 28, 28, 1), np.uint8)  # 40 = 32 + 8: the second batch is padded and masked
    from helpers.data import get_batch
    from helpers.training import compiled_train_step

    tr = _tiny_trainer(imgs, max_steps=4, batch_size=32, log_every=4, train_limit=None)
    before = compiled_train_step._cache_size(), get_batch._cache_size()
    tr.fit(progress=False)
    assert (compiled_train_step._cache_size(), get_batch._cache_size()) == (before[0] + 1, before[1] + 1)
    assert tr.history["epoch"] == [0, 0, 1, 1]


def test_nan_loss_stops_with_clear_message():
    imgs = np.zeros((64, 28, 28, 1), np.uint8)
    tr = _tiny_trainer(imgs, max_steps=4, log_every=2, train_limit=None)
    nnx.update(tr.model, jax.tree.map(lambda p: p * jnp.nan, nnx.state(tr.model, nnx.Param)))
    tr.place_on_mesh()
    from helpers.training import NonFiniteLossError
    with pytest.raises(NonFiniteLossError, match="learning-rate"):
        tr.fit(progress=False)


def test_the_step_written_out_is_the_trainers_step():
    """Notebook 04's explicit loop (get_batch, then the NNX train_step under nnx.jit) gives the
    Trainer's losses exactly."""
    from helpers.data import epoch_order, get_batch
    from helpers.training import train_step

    train_step = nnx.jit(train_step, static_argnames="cfg")

    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(64, 28, 28, 1), dtype=np.uint8)
    a = _tiny_trainer(imgs, max_steps=2, log_every=2, train_limit=None)
    b = _tiny_trainer(imgs, max_steps=2, log_every=2, train_limit=None)
    a.fit(progress=False)
    order = epoch_order(b.data_key, 0, 64, b.cfg.batch_size)
    losses = []
    for s in range(2):
        x0, labels, mask = get_batch(b.images, b.labels, order, s, b.cfg.batch_size)
        m = train_step(b.model, b.optimizer, b.ema, b.schedule, x0, labels, mask,
                       jax.random.fold_in(b.step_key, s), b.lr_schedule(s), cfg=b.cfg)
        losses.append(float(m["loss"]))
    np.testing.assert_allclose(losses, a.history["loss"], rtol=1e-5)
    x = a.sample(jax.random.key(0), 2, steps=3)
    assert x.shape == (2, 32, 32, 1)


def test_guide_step_is_a_whole_chunk_inside_the_run():
    from helpers.training import guide_step

    assert guide_step(0.15, 8250, 50) == 1250  # 1,237.5 -> the nearest chunk end
    assert guide_step(0.01, 100, 50) == 50  # at least one chunk
    assert guide_step(0.99, 90, 50) == 90  # never past the end (2 chunks would be 100)


def test_the_guide_is_the_ema_at_its_step_and_survives_a_checkpoint(tmp_path):
    from helpers.checkpoints import CheckpointManager

    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(64, 28, 28, 1), dtype=np.uint8)
    over = {"max_steps": 8, "log_every": 2, "train_limit": None, "guide_fraction": 0.5, "autoguidance_scale": 2.0}
    tr = _tiny_trainer(imgs, **over)
    assert tr.guide_step == 4 and tr.guide.step == -1
    seen = {}  # the EMA weights after each chunk

    def keep_ema(t):
        seen[t.step] = jax.tree.map(np.array, nnx.state(t.ema.model, nnx.Param))

    tr.fit(progress=False, on_chunk=keep_ema)
    assert tr.guide.step == 4
    guide_params = nnx.state(tr.guide.model, nnx.Param)
    jax.tree.map(np.testing.assert_array_equal, guide_params, seen[4])  # the EMA weights of step 4, frozen
    assert not all(jax.tree.leaves(jax.tree.map(np.array_equal, guide_params, seen[8])))

    ckpt = CheckpointManager(tmp_path / "ckpt")
    ckpt.save(tr)
    back = _tiny_trainer(imgs, **over)
    assert ckpt.restore_latest(back) == 8 and back.guide.step == 4
    jax.tree.map(np.testing.assert_array_equal, nnx.state(back.guide.model, nnx.Param), guide_params)
    key = jax.random.key(0)
    np.testing.assert_array_equal(back.sample(key, 2, steps=3), tr.sample(key, 2, steps=3))
    assert not np.allclose(tr.sample(key, 2, steps=3), tr.sample(key, 2, steps=3, autoguidance_scale=1.0))


def test_autoguidance_needs_a_guide():
    with pytest.raises(ValueError, match="needs a guide model"):
        get_config("tiny", guide_fraction=None, autoguidance_scale=2.0)
    with pytest.raises(ValueError, match="at least 1"):
        get_config("tiny", guide_fraction=0.2, autoguidance_scale=0.5)
    with pytest.raises(ValueError, match="guide_fraction must be in"):
        get_config("tiny", guide_fraction=1.5)
    imgs = np.zeros((32, 28, 28, 1), np.uint8)
    tr = _tiny_trainer(imgs, train_limit=None, guide_fraction=None, autoguidance_scale=1.0)
    with pytest.raises(ValueError, match="trained without --guide-fraction"):
        tr.sample(jax.random.key(0), 2, steps=2, autoguidance_scale=2.0)
    tr = _tiny_trainer(imgs, train_limit=None, guide_fraction=0.5, autoguidance_scale=2.0)
    with pytest.raises(ValueError, match="none yet"):  # before its step the guide holds the initial weights
        tr.sample(jax.random.key(0), 2, steps=2)


def test_the_time_limit_stops_between_chunks():
    imgs = np.zeros((64, 28, 28, 1), np.uint8)
    tr = _tiny_trainer(imgs, max_steps=1000, log_every=2, train_limit=None, time_limit_minutes=0.001)
    hist = tr.fit(progress=False)
    assert tr.step == 2 and hist["step"] == [0, 1]  # the first chunk (with compilation) already took 0.06 s


def test_a_checkpoint_written_in_the_background_holds_the_state_of_its_step(tmp_path):
    """Training goes on (donating its buffers) while orbax writes: the files still hold step 4."""
    from helpers.checkpoints import CheckpointManager

    imgs = np.random.default_rng(0).integers(0, 255, (64, 28, 28, 1)).astype(np.uint8)
    tr = _tiny_trainer(imgs, max_steps=12, log_every=4, train_limit=None)
    ckpt, saved = CheckpointManager(tmp_path / "ckpt"), {}

    def on_chunk(t):
        if t.step == 4:
            saved["params"] = jax.tree.map(np.array, nnx.state(t.model, nnx.Param))
            ckpt.save(t)  # returns at once; the next chunks run while it writes

    tr.fit(progress=False, on_chunk=on_chunk)
    ckpt.wait()
    back = _tiny_trainer(imgs, max_steps=12, log_every=4, train_limit=None)
    assert ckpt.restore(back, 4) == 4 and back.step == 4
    jax.tree.map(np.testing.assert_array_equal, nnx.state(back.model, nnx.Param), saved["params"])


def test_checkpoints_at_multiples_of_keep_every_outlive_the_last_few(tmp_path):
    """keep=1, keep_every=8: of saves at steps 4, 8, ..., 20, step 8 and 16 stay besides the newest."""
    from helpers.checkpoints import CheckpointManager

    imgs = np.random.default_rng(0).integers(0, 255, (64, 28, 28, 1)).astype(np.uint8)
    tr = _tiny_trainer(imgs, max_steps=20, log_every=4, train_limit=None)
    ckpt = CheckpointManager(tmp_path / "ckpt", keep=1, keep_every=8)
    tr.fit(progress=False, on_chunk=ckpt.save)
    assert ckpt.steps() == [8, 16, 20]


def test_a_fitted_run_re_plans_from_the_loops_rate_without_recompiling(monkeypatch):
    """The schedule is re-made as the run goes, to end near the limit; the optimiser keeps its state
    (step count and moments) and the step is not compiled again (the learning rate is an argument)."""
    import types

    import helpers.training
    from helpers.training import PLAN_END, compiled_train_step

    clock = iter(np.arange(0.0, 1e6, 0.1))  # 0.1 s per reading: three readings, 0.3 s, per chunk
    monkeypatch.setattr(helpers.training, "time", types.SimpleNamespace(perf_counter=lambda: next(clock)))
    imgs = np.random.default_rng(0).integers(0, 255, (64, 28, 28, 1)).astype(np.uint8)
    tr = _tiny_trainer(imgs, max_steps=60, log_every=4, train_limit=None, time_limit_minutes=0.5)
    tr.run_chunk(0, 1)  # compile
    compiled = compiled_train_step._cache_size()
    tr.fit(progress=False, replan=True)
    assert compiled_train_step._cache_size() == compiled
    # the first plan's guide step (30 of 60) came before the first re-plan; the guide waited for it
    assert tr.guide.step >= 0.4 * tr.total_steps
    # 30 s at 0.3 s per chunk of 4 steps: the plan ends PLAN_END of the way, where the run stopped
    assert tr.cfg.max_steps == tr.total_steps == tr.step and tr.cfg.fit_steps_to_time
    assert tr.total_steps == pytest.approx(PLAN_END * 30 / 0.3 * 4, abs=8)
    assert tr.step == len(tr.history["step"]) + 1  # the optimiser's count went on (1: the compiling step)
    assert float(tr.lr_schedule(tr.total_steps)) == pytest.approx(tr.cfg.learning_rate * tr.cfg.end_lr_fraction)
