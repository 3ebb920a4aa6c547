"""The sharded train step (batch split over 2 CPU devices) matches the single-device step."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import jax, numpy as np
    from flax import nnx
    assert len(jax.devices()) == 2, jax.devices()
    from helpers.config import get_config
    from helpers.training import Trainer
    from helpers.unet import create_unet

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(96, 28, 28, 1), dtype=np.uint8)
    cfg = get_config("tiny", batch_size=32, max_steps=3, log_every=3, train_limit=None)
    out = {}
    for name, devs in [("one", jax.devices()[:1]), ("two", jax.devices())]:
        tr = Trainer(cfg, create_unet(cfg.model, seed=0), images, devices=devs)
        hist = tr.fit(progress=False)
        params = jax.tree.leaves(nnx.state(tr.model, nnx.Param))
        out[name] = (np.array(hist["loss"]), [np.asarray(p) for p in params])
        print(name, tr.batch_sharding.mesh.devices.shape, hist["loss"])
    np.testing.assert_allclose(out["one"][0], out["two"][0], rtol=1e-4, atol=1e-6)
    for a, b in zip(out["one"][1], out["two"][1]):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)
    print("SHARDED_MATCHES")
""")


def test_sharded_step_matches_single_device():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    r = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    assert "SHARDED_MATCHES" in r.stdout
    assert "(2,)" in r.stdout  # the second trainer really used a 2-device mesh
