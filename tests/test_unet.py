import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from helpers.unet import UNet, UNetConfig, count_params, create_unet, sinusoidal_embedding

BASE = UNetConfig(hidden_dims=(8, 16, 16), num_res_blocks=1, attention_resolutions=(8,), activation="gelu",
                  time_embedding_dim=16, max_norm_groups=4, num_heads=2)


def _randomize(model, seed=0):
    """Replace every parameter with noise: the zero-initialised output conv would hide differences."""
    params = nnx.state(model, nnx.Param)
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    nnx.update(model, jax.tree.unflatten(tree, [0.3 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)]))
    return model


def _shapes(cfg):
    """The model's parameter shapes without initialising (nothing to compile): for counting."""
    return nnx.eval_shape(lambda: UNet(cfg, rngs=nnx.Rngs(0)))


def _out(cfg, x=None, t=None, train=False):
    model = _randomize(create_unet(cfg, seed=0))
    if not train:
        model.eval()
    x = jnp.linspace(-1, 1, 2 * 32 * 32 * cfg.in_channels).reshape(2, 32, 32, cfg.in_channels) if x is None else x
    return np.asarray(nnx.jit(lambda m, x, t: m(x, t))(model, x, jnp.array([3, 700]) if t is None else t))


def test_shapes_and_param_count():
    model = create_unet(BASE)
    y = model(jnp.zeros((3, 32, 32, 1)), jnp.array([0, 1, 2]))
    assert y.shape == (3, 32, 32, 1)
    assert np.all(np.asarray(y) == 0)  # zero-initialised output layer
    assert count_params(model) == sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert count_params(_shapes(UNetConfig())) == pytest.approx(15.3e6, rel=0.02)  # the paper model, as diffusers counts it


@pytest.mark.parametrize("change", [
    dict(hidden_dims=(8, 16, 32)),
    dict(channel_mult=(1, 2, 4), hidden_dims=(8,)),
    dict(num_res_blocks=2),
    dict(attention_resolutions=(8, 16)),
    dict(attention_resolutions=()),
    dict(time_embedding_dim=32),
    dict(in_channels=3, out_channels=3),
    dict(num_classes=10),
    dict(patch_size=2, attention_resolutions=(4,)),
])
def test_each_field_changes_parameter_count(change):
    assert count_params(_shapes(BASE.replace(**change))) != count_params(_shapes(BASE))


def test_channel_mult_builds_the_progression():
    cfg = UNetConfig(hidden_dims=(8,), channel_mult=(1, 2, 2))
    assert cfg.channels == (8, 16, 16)
    assert count_params(_shapes(cfg.replace(attention_resolutions=()))) == \
        count_params(_shapes(UNetConfig(hidden_dims=(8, 16, 16), attention_resolutions=())))
    with pytest.raises(ValueError, match="disagree"):
        UNetConfig(hidden_dims=(8, 16), channel_mult=(1, 4)).validate()


def test_activation_changes_output():
    base = _out(BASE)
    assert not np.allclose(base, _out(BASE.replace(activation="silu")), atol=1e-4)
    assert not np.allclose(base, _out(BASE.replace(activation="relu")), atol=1e-4)


def test_dropout_changes_output_in_training_only():
    cfg = BASE.replace(dropout_rate=0.5)
    a, b = _out(BASE, train=True), _out(cfg, train=True)
    assert not np.allclose(a, b, atol=1e-4)
    np.testing.assert_allclose(_out(BASE), _out(cfg), atol=1e-5)  # eval: dropout is off


def test_attention_changes_output_and_time_matters():
    assert not np.allclose(_out(BASE), _out(BASE.replace(attention_resolutions=())), atol=1e-4)
    y = _out(BASE, t=jnp.array([3, 3]))
    y2 = _out(BASE, t=jnp.array([800, 800]))
    assert not np.allclose(y, y2, atol=1e-4)


def test_labels_change_output_of_conditional_model():
    model = _randomize(create_unet(BASE.replace(num_classes=10)))
    x, t = jnp.zeros((2, 32, 32, 1)), jnp.array([5, 5])
    a = np.asarray(model(x, t, jnp.array([1, 1])))
    b = np.asarray(model(x, t, jnp.array([7, 7])))
    assert not np.allclose(a, b, atol=1e-4)


@pytest.mark.parametrize("bad, match", [
    (dict(image_size=30), "cannot be halved"),
    (dict(attention_resolutions=(4,)), "never reached"),
    (dict(activation="tanhh"), "Unknown activation"),
    (dict(num_res_blocks=0), "must be positive"),
    (dict(hidden_dims=(8, -16)), "positive"),
    (dict(dropout_rate=1.5), r"\[0, 1\)"),
    (dict(time_embedding_dim=15), "even"),
    (dict(patch_size=3), "cannot be halved"),
    (dict(patch_size=8), "never reached"),  # feature maps 4, 2, 1: attention at 8 is never reached
])
def test_validation_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        UNet(BASE.replace(**bad), rngs=nnx.Rngs(0))


def test_patch_size_space_to_depth():
    from helpers.unet import depth_to_space, space_to_depth

    x = jnp.arange(2 * 4 * 4 * 1, dtype=jnp.float32).reshape(2, 4, 4, 1)
    y = space_to_depth(x, 2)
    assert y.shape == (2, 2, 2, 4)
    np.testing.assert_array_equal(y[0, 0, 0], [0, 1, 4, 5])  # the top-left 2x2 patch
    np.testing.assert_array_equal(depth_to_space(y, 2), x)
    cfg = BASE.replace(patch_size=2)
    assert cfg.resolutions == (16, 8, 4)
    model = create_unet(cfg)
    assert model(jnp.zeros((1, 32, 32, 1)), jnp.array([1])).shape == (1, 32, 32, 1)


def test_sinusoidal_embedding():
    e = np.asarray(sinusoidal_embedding(jnp.array([0.0, 10.0]), 8))
    assert e.shape == (2, 8)
    np.testing.assert_allclose(e[0], [0, 0, 0, 0, 1, 1, 1, 1], atol=1e-7)
    assert e[1, 0] == pytest.approx(np.sin(10.0), rel=1e-5)


def test_bfloat16_mixed_precision_matches_float32():
    """dtype="bfloat16": same parameters (float32), bf16 compute, float32 output close to the fp32 one."""
    model32 = _randomize(create_unet(BASE, seed=0))
    model16 = create_unet(BASE.replace(dtype="bfloat16"), seed=0)
    nnx.update(model16, nnx.state(model32))
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(model16, nnx.Param)))
    x = jax.random.normal(jax.random.key(0), (2, 32, 32, 1))
    t = jnp.array([10, 500])
    y32, y16 = model32(x, t), model16(x, t)
    assert y16.dtype == jnp.float32
    rel = float(jnp.linalg.norm(y16 - y32) / jnp.linalg.norm(y32))
    assert 0 < rel < 0.05, rel  # bf16 has ~3 significant digits: close, but not bit-identical

