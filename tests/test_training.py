import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from helpers.config import get_config
from helpers.data import batch_slice, epoch_order, steps_per_epoch
from helpers.training import EMA, ema_decay_at, make_lr_schedule
from helpers.unet import create_unet


def test_lr_schedule_values():
    f = make_lr_schedule(1e-4, 500, 11700, 0.01)
    assert float(f(0)) == 0.0
    assert float(f(250)) == pytest.approx(0.5e-4, rel=1e-5)
    assert float(f(500)) == pytest.approx(1e-4, rel=1e-5)  # peak at the end of warmup
    assert float(f(11700)) == pytest.approx(1e-6, rel=1e-4)  # 1% at the end
    mid = 500 + (11700 - 500) / 2
    assert float(f(mid)) == pytest.approx(1e-6 + (1e-4 - 1e-6) * 0.5, rel=1e-3)


def test_steps_for_minutes():
    from helpers.training import steps_for_minutes

    assert steps_for_minutes(0.1, 1.0, chunk=50) == 600  # 60 s / 0.1 s, in whole chunks
    assert steps_for_minutes(0.11, 1.0, chunk=50) == 500  # 545 -> 500
    assert steps_for_minutes(100.0, 0.01, chunk=4) == 4  # never less than one chunk
    with pytest.raises(ValueError, match="positive"):
        steps_for_minutes(0.0, 1.0)


def test_the_cpu_plan_is_fixed_and_does_not_time_the_machine(monkeypatch):
    """The cpu preset trains its own number of steps on any machine: planning it times nothing."""
    import types

    import helpers.runs
    from helpers.training import make_plan

    monkeypatch.setattr(helpers.runs, "seconds_per_step", lambda *a, **k: pytest.fail("the cpu plan timed a step"))
    cfg = get_config("cpu")
    assert helpers.runs.budget_steps(cfg, types.SimpleNamespace(num_examples=60_000)) is None
    plan = make_plan(cfg, 60_000)
    assert plan.total_steps == cfg.max_steps == 9000
    assert plan.guide_step == 1350 and plan.checkpoint_steps[:2] == (500, 1000) and plan.checkpoint_steps[-1] == 9000
    assert all(e % cfg.log_every == 0 for e in plan.chunk_ends)
    steps = np.arange(plan.total_steps + 1)
    lr = np.asarray(plan.learning_rate(steps))  # one warmup, then one cosine: no kink anywhere
    assert np.argmax(lr) == cfg.warmup_steps and np.all(np.diff(lr[cfg.warmup_steps:]) <= 0)
    assert lr[-1] == pytest.approx(cfg.learning_rate * cfg.end_lr_fraction)


def test_a_time_budget_times_one_step_and_plans_once(monkeypatch):
    import types

    import helpers.runs

    calls = []
    from helpers.training import make_plan

    monkeypatch.setattr(helpers.runs, "seconds_per_step", lambda cfg, feed: calls.append(1) or 0.12)
    cfg = get_config("cpu", minutes=10)
    steps = helpers.runs.budget_steps(cfg, types.SimpleNamespace(num_examples=60_000), log=lambda *a: None)
    plan = make_plan(cfg, 60_000, steps)
    assert calls == [1] and plan.total_steps == 5000  # 600 s / 0.12 s, whole chunks of 50
    assert plan.guide_step == 750


def test_replace_has_no_side_effects():
    cfg = get_config("cpu")
    changed = cfg.replace(max_steps=100, hidden_dims=(8, 16, 32))
    assert changed.max_steps == 100 and changed.model.hidden_dims == (8, 16, 32)
    assert {f for f in cfg.__dataclass_fields__ if getattr(cfg, f) != getattr(changed, f)} == {"max_steps", "model"}
    assert cfg.max_steps == 9000 and cfg.model.hidden_dims == (16, 32, 64)


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


def _tiny_run(images, devices=None, **over):
    """(cfg, plan, state, feed) of a tiny run on `images`, its state on the mesh of `devices`."""
    from helpers.distributed import data_mesh
    from helpers.training import BatchFeed, TrainState, make_plan, place_state

    cfg = get_config("tiny", **over)
    mesh = data_mesh(devices)
    state = place_state(TrainState(cfg), mesh)
    return cfg, make_plan(cfg, len(images)), state, BatchFeed(cfg, state, images, None, mesh)


def _fit(images, hooks=(), **over):
    """A tiny run trained to its end; returns (cfg, plan, state, history)."""
    from helpers.training import History, stop_at_non_finite_loss, take_guide_at, train

    cfg, plan, state, feed = _tiny_run(images, **over)
    history = History(plan, cfg.batch_size)
    train(state, feed, plan, cfg, [stop_at_non_finite_loss, history, take_guide_at(plan.guide_step), *hooks])
    return cfg, plan, state, history.record


def test_train_step_lowers_loss_on_a_fixed_batch():
    rng = np.random.default_rng(0)
    # one batch of 32 "images": a bright square at random places
    imgs = np.zeros((32, 28, 28, 1), np.uint8)
    for i in range(32):
        r, c = rng.integers(4, 18, 2)
        imgs[i, r:r + 8, c:c + 8] = 255
    _, _, state, hist = _fit(imgs, max_steps=60, batch_size=32, log_every=20, learning_rate=3e-3, warmup_steps=5,
                             train_limit=None)
    loss = np.asarray(hist["loss"])
    assert len(loss) == 60 and state.step == 60
    assert loss[-10:].mean() < 0.7 * loss[:10].mean()
    assert hist["lr"][0] == 0.0 and max(hist["lr"]) == pytest.approx(3e-3, rel=1e-4)


def test_last_short_batch_does_not_recompile():
    imgs = np.zeros((40, 28, 28, 1), np.uint8)  # 40 = 32 + 8: the second batch is padded and masked
    from helpers.data import get_batch
    from helpers.training import compiled_train_step

    before = compiled_train_step._cache_size(), get_batch._cache_size()
    _, _, _, hist = _fit(imgs, max_steps=4, batch_size=32, log_every=4, train_limit=None, seed=7)
    assert (compiled_train_step._cache_size(), get_batch._cache_size()) <= (before[0] + 1, before[1] + 1)
    assert hist["epoch"] == [0, 0, 1, 1]


def test_nan_loss_stops_with_clear_message():
    from helpers.training import History, NonFiniteLossError, stop_at_non_finite_loss, train

    imgs = np.zeros((64, 28, 28, 1), np.uint8)
    cfg, plan, state, feed = _tiny_run(imgs, max_steps=4, log_every=2, train_limit=None)
    nnx.update(state.model, jax.tree.map(lambda p: p * jnp.nan, nnx.state(state.model, nnx.Param)))
    history, seen = History(plan, cfg.batch_size), []
    with pytest.raises(NonFiniteLossError, match="learning-rate"):
        train(state, feed, plan, cfg, [stop_at_non_finite_loss, history, lambda st, chunk: seen.append(chunk)])
    assert history.record["step"] == [] and seen == []  # no later hook (a checkpoint) saw the bad chunk


def test_the_step_written_out_is_the_loops_step():
    """Notebook 04's explicit loop (get_batch, then the NNX train_step under nnx.jit) gives the loop's
    losses exactly."""
    from helpers.data import epoch_order, get_batch
    from helpers.training import TrainState, noise_schedule, train_step

    train_step = nnx.jit(train_step, static_argnames="cfg")
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(64, 28, 28, 1), dtype=np.uint8)
    cfg, plan, _, hist = _fit(imgs, max_steps=2, log_every=2, train_limit=None)
    b = TrainState(cfg)
    data_key, step_key = jax.random.split(jax.random.key(cfg.seed))
    order = epoch_order(data_key, 0, 64, cfg.batch_size)
    losses = []
    for s in range(2):
        x0, labels, mask = get_batch(jnp.asarray(imgs), None, order, s, cfg.batch_size)
        m = train_step(b.model, b.optimizer, b.ema, noise_schedule(cfg), x0, labels, mask,
                       jax.random.fold_in(step_key, s), plan.learning_rate(s), cfg=cfg)
        losses.append(float(m["loss"]))
    np.testing.assert_allclose(losses, hist["loss"], rtol=1e-5)


def test_guide_step_is_a_whole_chunk_inside_the_run():
    from helpers.training import guide_step

    assert guide_step(0.15, 8250, 50) == 1250  # 1,237.5 -> the nearest chunk end
    assert guide_step(0.01, 100, 50) == 50  # at least one chunk
    assert guide_step(0.99, 90, 50) == 90  # never past the end (2 chunks would be 100)


def test_the_guide_is_the_ema_at_its_step_and_survives_a_checkpoint(tmp_path):
    from helpers.checkpoints import CheckpointManager
    from helpers.runs import autoguidance_of, draw_samples
    from helpers.training import TrainState

    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(64, 28, 28, 1), dtype=np.uint8)
    over = {"max_steps": 8, "log_every": 2, "train_limit": None, "guide_fraction": 0.5, "autoguidance_scale": 2.0}
    seen = {}  # the EMA weights after each chunk

    def keep_ema(state, chunk):
        seen[state.step] = jax.tree.map(np.array, nnx.state(state.ema.model, nnx.Param))

    cfg, plan, state, _ = _fit(imgs, hooks=[keep_ema], **over)
    assert plan.guide_step == 4 and state.guide.step == 4
    guide_params = nnx.state(state.guide.model, nnx.Param)
    jax.tree.map(np.testing.assert_array_equal, guide_params, seen[4])  # the EMA weights of step 4, frozen
    assert not all(jax.tree.leaves(jax.tree.map(np.array_equal, guide_params, seen[8])))

    ckpt = CheckpointManager(tmp_path / "ckpt")
    ckpt.save(state.step, state, {"history": {}})
    back = nnx.eval_shape(lambda: TrainState(cfg))
    assert ckpt.restore_latest(back)["step"] == 8 and back.guide.step == 4
    jax.tree.map(np.testing.assert_array_equal, nnx.state(back.guide.model, nnx.Param), guide_params)
    key = jax.random.key(0)
    draw = lambda st, w=None: draw_samples(cfg, st, key, 2, steps=3, autoguidance=autoguidance_of(cfg, st, w))  # noqa: E731
    np.testing.assert_array_equal(draw(back), draw(state))
    assert not np.allclose(draw(state), draw(state, 1.0))


def test_autoguidance_is_decided_once_and_needs_a_guide():
    from helpers.runs import autoguidance_of
    from helpers.training import TrainState

    with pytest.raises(ValueError, match="needs a guide model"):
        get_config("tiny", guide_fraction=None, autoguidance_scale=2.0)
    with pytest.raises(ValueError, match="at least 1"):
        get_config("tiny", guide_fraction=0.2, autoguidance_scale=0.5)
    with pytest.raises(ValueError, match="guide_fraction must be in"):
        get_config("tiny", guide_fraction=1.5)
    cfg = get_config("tiny", guide_fraction=None, autoguidance_scale=1.0)
    state = TrainState(cfg)
    assert autoguidance_of(cfg, state) is None
    with pytest.raises(ValueError, match="trained without --guide-fraction"):
        autoguidance_of(cfg, state, 2.0)
    cfg = get_config("tiny", guide_fraction=0.5, autoguidance_scale=2.0)
    state = TrainState(cfg)
    with pytest.raises(ValueError, match="not taken yet"):  # before its step the guide holds the initial weights
        autoguidance_of(cfg, state)
    state.guide.take(state.ema.model, 4)
    guidance = autoguidance_of(cfg, state)
    assert guidance.scale == 2.0 and guidance.guide is state.guide.model and guidance.interval is None
    assert autoguidance_of(cfg, state, 1.0) is None


def test_a_checkpoint_written_in_the_background_holds_the_state_of_its_step(tmp_path):
    """Training goes on (donating its buffers) while orbax writes: the files still hold step 4."""
    from helpers.checkpoints import CheckpointManager
    from helpers.training import TrainState

    imgs = np.random.default_rng(0).integers(0, 255, (64, 28, 28, 1)).astype(np.uint8)
    ckpt, saved = CheckpointManager(tmp_path / "ckpt"), {}

    def save_at_4(state, chunk):
        if state.step == 4:
            saved["params"] = jax.tree.map(np.array, nnx.state(state.model, nnx.Param))
            ckpt.save(4, state, {"history": {}})  # returns at once; the next chunks run while it writes

    cfg, _, _, _ = _fit(imgs, hooks=[save_at_4], max_steps=12, log_every=4, train_limit=None)
    ckpt.wait()
    back = nnx.eval_shape(lambda: TrainState(cfg))
    assert ckpt.restore(4, back)["step"] == 4 and back.step == 4
    jax.tree.map(np.testing.assert_array_equal, nnx.state(back.model, nnx.Param), saved["params"])


def test_checkpoints_at_multiples_of_keep_every_outlive_the_last_few(tmp_path):
    """keep=1, keep_every=8: of saves at steps 4, 8, ..., 20, step 8 and 16 stay besides the newest."""
    from helpers.checkpoints import CheckpointManager

    imgs = np.random.default_rng(0).integers(0, 255, (64, 28, 28, 1)).astype(np.uint8)
    ckpt = CheckpointManager(tmp_path / "ckpt", keep=1, keep_every=8)
    _fit(imgs, hooks=[lambda state, chunk: ckpt.save(state.step, state, {})], max_steps=20, log_every=4,
         train_limit=None)
    assert ckpt.steps() == [8, 16, 20]


def test_every_run_learning_rate_is_one_warmup_and_cosine():
    """The history's learning rate at step s, written out: s / 4 of the peak during the 4 warm-up steps, then
    a half cosine from the peak down to 1% of it at step 24 (no re-plan between chunks, no kink)."""
    imgs = np.random.default_rng(0).integers(0, 255, (64, 28, 28, 1)).astype(np.uint8)
    cfg, plan, _, hist = _fit(imgs, max_steps=24, log_every=4, warmup_steps=4, train_limit=None)
    peak, end, s = cfg.learning_rate, cfg.learning_rate * cfg.end_lr_fraction, np.arange(24)
    want = np.where(s < 4, peak * s / 4, end + (peak - end) * 0.5 * (1 + np.cos(np.pi * (s - 4) / 20)))
    np.testing.assert_allclose(hist["lr"], want, rtol=1e-5)
    assert plan.chunk_ends == (4, 8, 12, 16, 20, 24)
