"""Train/eval steps: K steps per call = K calls, on-device epochs = the same batches fed one by one, padding
and unlabelled rows contribute nothing, eval outputs against numpy, the MAE learns retrieval, optimizers,
parameters created sharded on 8 devices."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import ml_collections
import numpy as np
import optax
import pytest
from conftest import test_seed
from flax import nnx

from deepearth_jax import optim, parallel, steps

L, C, S = 12, 5, 7  # language width, classes, store species (species 5 and 6 absent from training)
LABEL_MAP = np.array([0, 1, 2, 3, 4, -1, -1], np.int32)


def make_config(name: str = "language_classifier", **model_fields) -> ml_collections.ConfigDict:
    model = {"name": name, "hidden": (16, 16), "dropout": 0.3}
    model.update(model_fields)
    return ml_collections.ConfigDict(
        {
            "task": "masked_autoencoding" if name == "mae" else "classification",
            "model": model,
            "optimizer": {
                "name": "adam",
                "lr": 1e-2,
                "weight_decay": 0.0,
                "schedule": "constant",
                "warmup_steps": 0,
                "grad_clip": 0.0,
                "accumulate_steps": 1,
            },
            "batch_size": 8,
            "seed": 0,
            "mode": "language",
            "mesh": {"shard_params": False},
        }
    )


def random_batch(rng: np.random.Generator, *lead: int, b: int = 8) -> dict[str, np.ndarray]:
    return {
        "species": rng.integers(0, S, (*lead, b)).astype(np.int32),
        "language": rng.standard_normal((*lead, b, L)).astype(np.float32),
        "mask": np.ones((*lead, b), bool),
    }


def setup(config, mesh, seed=0):
    graphdef, state = steps.create_train_state(
        config, input_dims={"language": L, "vision": 4}, num_classes=C, total_steps=100, mesh=mesh, seed=seed
    )
    return graphdef, state, steps.state_sharding_of(state)


def copy(state):
    """A second, independent state (creating another would compile the init again)."""
    return jax.tree.map(lambda x: x.copy(), state)


def leaves(state) -> list[np.ndarray]:
    return [
        np.asarray(jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x)
        for x in jax.tree.leaves(state)
    ]


def assert_states_close(a, b, rtol=1e-6, atol=1e-7):
    for x, y in zip(leaves(a), leaves(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)


@pytest.fixture(scope="module")
def mesh():
    return parallel.make_mesh(1)


@pytest.fixture(scope="module")
def language(mesh):
    """(config, graphdef, initial state, state sharding, K=1 step) shared by tests: compiled once."""
    config = make_config()  # dropout on: the RNG stream must advance identically
    graphdef, initial, sharding = setup(config, mesh)
    one = steps.make_train_step(config, graphdef, LABEL_MAP, mesh=mesh, state_sharding=sharding)
    return config, graphdef, initial, sharding, one


def test_k_steps_per_call_equal_k_calls(mesh, language):
    config, graphdef, initial, sharding, one = language
    rng = np.random.default_rng(test_seed())
    batches = random_batch(rng, 4)
    state_a, state_b = copy(initial), copy(initial)
    four = steps.make_train_step(
        config, graphdef, LABEL_MAP, mesh=mesh, state_sharding=sharding, steps_per_call=4
    )
    metrics_a, metrics_b = steps.init_metrics(config), steps.init_metrics(config)
    for i in range(4):
        state_a, metrics_a = one(state_a, metrics_a, {k: v[i] for k, v in batches.items()})
    state_b, metrics_b = four(state_b, metrics_b, batches)
    assert_states_close(state_a, state_b)
    summary_a, summary_b = steps.summarize_metrics(metrics_a), steps.summarize_metrics(metrics_b)
    assert summary_a["steps"] == summary_b["steps"] == 4
    assert summary_a["count"] == np.isin(batches["species"], np.arange(5)).sum()
    np.testing.assert_allclose(summary_a["loss"], summary_b["loss"], rtol=1e-6)
    assert not np.allclose(leaves(initial["model"])[-1], leaves(state_a["model"])[-1])  # it trained
    with pytest.raises(ValueError, match="steps_per_call=4 but batch"):
        four(state_b, metrics_b, random_batch(rng, 3))


def test_device_epoch_equals_the_same_batches_step_by_step(mesh, language):
    config, graphdef, initial, sharding, one = language
    rng = np.random.default_rng(test_seed())
    n = 21  # 3 batches of 8, the last one padded
    data = {
        "species": rng.integers(0, S, n).astype(np.int32),
        "language": rng.standard_normal((n, L)).astype(np.float32),
    }
    key = jax.random.key(int(rng.integers(1 << 30)))
    state_a, state_b, state_c = copy(initial), copy(initial), copy(initial)
    epoch = steps.make_device_epoch(config, graphdef, LABEL_MAP, mesh=mesh, state_sharding=sharding)
    device_data = jax.device_put(data, parallel.replicated(mesh))
    state_a, metrics_a = epoch(state_a, steps.init_metrics(config), device_data, key)

    index, valid = (np.asarray(a) for a in steps.epoch_batches(key, n, 8))
    assert index.shape == (3, 8) and valid.sum() == n
    assert sorted(index[valid].tolist()) == list(range(n))  # every example exactly once
    metrics_b = steps.init_metrics(config)
    for rows, ok in zip(index, valid, strict=True):
        batch = {k: v[rows] for k, v in data.items()}
        batch["mask"] = ok
        state_b, metrics_b = one(state_b, metrics_b, batch)
    assert_states_close(state_a, state_b, rtol=1e-5, atol=1e-6)
    assert steps.summarize_metrics(metrics_a)["count"] == np.isin(data["species"], np.arange(5)).sum()
    # Another key, another order, other parameters.
    state_c, _ = epoch(state_c, steps.init_metrics(config), device_data, jax.random.key(12345))
    assert not np.allclose(leaves(state_c["model"])[-1], leaves(state_a["model"])[-1])


def test_padding_and_unlabelled_rows_contribute_nothing(mesh):
    config = make_config(dropout=0.0)
    rng = np.random.default_rng(test_seed())
    clean = random_batch(rng, b=6)
    clean["species"] = rng.integers(0, 5, 6).astype(np.int32)  # all labelled
    noisy = {k: np.concatenate([v, random_batch(rng, b=4)[k]]) for k, v in clean.items()}
    noisy["species"][6:8] = [5, 6]  # absent from training: label -1
    noisy["mask"][8:] = False  # padding (with labelled species, so only the mask excludes them)
    noisy["species"][8:] = [0, 1]
    results = []
    graphdef, initial, sharding = setup(config, mesh)
    step = steps.make_train_step(config, graphdef, LABEL_MAP, mesh=mesh, state_sharding=sharding)
    for batch in (clean, noisy):
        state, metrics = step(copy(initial), steps.init_metrics(config), batch)
        results.append((state, steps.summarize_metrics(metrics)))
    assert_states_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-6)
    assert results[0][1]["count"] == results[1][1]["count"] == 6
    np.testing.assert_allclose(results[0][1]["loss"], results[1][1]["loss"], rtol=1e-6)


def test_eval_step_outputs_match_numpy(mesh, language):
    config, graphdef, state, sharding, _ = language
    rng = np.random.default_rng(test_seed())
    batch = random_batch(rng, b=10)
    batch["species"][:2] = [5, 6]
    batch["mask"][-1] = False
    evaluate = steps.make_eval_step(config, graphdef, LABEL_MAP, mesh=mesh, state_sharding=sharding)
    out = jax.device_get(evaluate(state, batch))
    model = nnx.merge(graphdef, state).model
    model.eval()
    logits = np.asarray(model({"language": batch["language"]}), np.float64)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    labels = LABEL_MAP[batch["species"]]
    np.testing.assert_array_equal(out["labels"], labels)
    np.testing.assert_array_equal(out["mask"], batch["mask"])
    np.testing.assert_array_equal(out["top5"], np.argsort(-logits, axis=1)[:, :5])
    np.testing.assert_allclose(out["top5_prob"], np.exp(np.sort(log_probs, 1)[:, ::-1][:, :5]), rtol=1e-5)
    expected_loss = np.where(labels >= 0, -log_probs[np.arange(10), np.maximum(labels, 0)], 0.0)
    np.testing.assert_allclose(out["loss"], expected_loss, rtol=1e-5, atol=1e-6)
    assert out["top5"].dtype == np.int32 and out["loss"].shape == (10,)


def test_mae_trains_and_retrieves_species(mesh):
    config = make_config("mae", hidden=(32,), dropout=0.0, shared_dim=16, mask_ratio=0.3)
    config.mode = "multimodal"
    rng = np.random.default_rng(0)
    species_language = rng.standard_normal((S, L)).astype(np.float32)
    projection = rng.standard_normal((L, 4)).astype(np.float32)

    def batches(k, b=16):
        species = rng.integers(0, S, (k, b)).astype(np.int32)
        vision = species_language[species] @ projection + 0.1 * rng.standard_normal((k, b, 4)).astype(
            np.float32
        )
        return {"species": species, "language": species_language[species], "vision_pooled": vision}

    graphdef, state, sharding = setup(config, mesh)
    train = steps.make_train_step(
        config, graphdef, LABEL_MAP, mesh=mesh, state_sharding=sharding, steps_per_call=50
    )
    evaluate = steps.make_eval_step(
        config,
        graphdef,
        LABEL_MAP,
        mesh=mesh,
        state_sharding=sharding,
        constants={"species_language": species_language},
    )
    test = {k: v[0] for k, v in batches(1, 64).items()}
    before = jax.device_get(evaluate(state, test))
    losses = []
    for _ in range(4):
        state, metrics = train(state, steps.init_metrics(config), batches(50))
        losses.append(steps.summarize_metrics(metrics)["loss"])
    assert set(steps.metric_names(config)) == {*metrics}
    assert losses[-1] < 0.5 * losses[0]
    after = jax.device_get(evaluate(state, test))
    assert after["retrieval_top5"].shape == (64, 5) and after["retrieval_rank"].dtype == np.int32
    np.testing.assert_array_equal(
        after["retrieval_rank"] == 0, after["retrieval_top5"][:, 0] == test["species"]
    )
    assert np.mean(after["retrieval_rank"] == 0) > 0.8 > np.mean(before["retrieval_rank"] == 0)
    assert after["loss"].mean() < before["loss"].mean()


def test_optimizer_schedule_accumulation_clip_and_errors():
    opt = ml_collections.ConfigDict(make_config().optimizer.to_dict())
    opt.update(schedule="cosine", warmup_steps=10, lr=0.5)
    schedule = optim.make_schedule(opt, 110)
    np.testing.assert_allclose(
        [schedule(0), schedule(5), schedule(10), schedule(60), schedule(110)],
        [0.0, 0.25, 0.5, 0.25, 0.0],
        atol=1e-6,
    )
    opt.schedule = "constant"
    schedule = optim.make_schedule(opt, 110)
    np.testing.assert_allclose([schedule(5), schedule(10), schedule(1000)], [0.25, 0.5, 0.5], atol=1e-6)

    params = {"w": np.ones((2, 2), np.float32), "b": np.ones(2, np.float32)}
    grads = {"w": np.full((2, 2), 3.0, np.float32), "b": np.full(2, 4.0, np.float32)}
    opt.update(schedule="constant", warmup_steps=0, lr=0.1, accumulate_steps=2)
    tx = optim.make_optimizer(opt, 100)
    state = tx.init(params)
    first, state = tx.update(grads, state, params)
    second, state = tx.update(grads, state, params)
    assert np.all(np.asarray(first["w"]) == 0) and np.allclose(second["w"], -0.1)  # every 2nd step only

    opt.update(accumulate_steps=1, grad_clip=1.0, name="adam", lr=1.0)
    clipped = optax.chain(optax.clip_by_global_norm(1.0))
    expected, _ = clipped.update(grads, clipped.init(params))
    assert np.isclose(optax.tree.norm(expected), 1.0)
    opt.update(grad_clip=0.0, weight_decay=0.5)
    tx = optim.make_optimizer(opt, 100)  # adam + L2: the decay joins the gradient before Adam
    updates, _ = tx.update(
        {"w": np.zeros((2, 2), np.float32), "b": np.zeros(2, np.float32)}, tx.init(params), params
    )
    np.testing.assert_allclose(updates["w"], -1.0, rtol=1e-5)  # Adam's first step is -lr * sign(g)
    opt.name = "adamw"
    tx = optim.make_optimizer(opt, 100)  # decoupled, kernels only
    updates, _ = tx.update(
        {"w": np.zeros((2, 2), np.float32), "b": np.zeros(2, np.float32)}, tx.init(params), params
    )
    np.testing.assert_allclose(updates["w"], -0.5, rtol=1e-5)
    np.testing.assert_allclose(updates["b"], 0.0)
    opt.name = "sgd"
    with pytest.raises(ValueError, match="unknown optimizer 'sgd'; known: adam, adamw"):
        optim.make_optimizer(opt, 100)
    opt.update(name="adam", schedule="linear")
    with pytest.raises(ValueError, match="unknown optimizer.schedule 'linear'"):
        optim.make_optimizer(opt, 100)


SHARDED_SCRIPT = textwrap.dedent(
    """
    import sys; sys.path.insert(0, "tests")  # conftest, for test_seed
    import jax, numpy as np
    from deepearth_jax import parallel, steps
    from tests.test_steps import LABEL_MAP, make_config, random_batch
    cfg = make_config(hidden=(8192,), dropout=0.0)  # a (12, 8192) kernel: big enough to be split
    rng = np.random.default_rng(0)
    batches = [random_batch(rng) for _ in range(3)]
    results = []
    for shard, mesh in ((True, parallel.make_mesh()), (False, parallel.make_mesh(1))):
        cfg.mesh.shard_params = shard
        g, state = steps.create_train_state(
            cfg, input_dims={"language": 12}, num_classes=5, total_steps=10, mesh=mesh, seed=0)
        kernel = state["model"]["mlp"]["hidden"][0]["kernel"]
        mu = state["optimizer"]["opt_state"][0]["mu"]["mlp"]["hidden"][0]["kernel"]
        print("spec", shard, tuple(kernel.sharding.spec), tuple(mu.sharding.spec))
        sharding = steps.state_sharding_of(state)
        step = steps.make_train_step(cfg, g, LABEL_MAP, mesh=mesh, state_sharding=sharding)
        metrics = steps.init_metrics(cfg, mesh)
        for b in batches:
            state, metrics = step(state, metrics, jax.device_put(b, parallel.batch_sharding(mesh)))
        results.append(np.asarray(state["model"]["mlp"]["hidden"][0]["kernel"]))
        print("sharding kept", tuple(state["model"]["mlp"]["hidden"][0]["kernel"].sharding.spec))
    print("max diff", float(np.abs(results[0] - results[1]).max()))
    """
)


def test_parameters_created_sharded_on_8_devices():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    # tests/ on the path: tests.test_steps imports conftest as pytest does.
    path = os.pathsep.join(p for p in (os.path.join(root, "tests"), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": "8", "JAX_PLATFORMS": "cpu", "PYTHONPATH": path}
    proc = subprocess.run(
        [sys.executable, "-c", SHARDED_SCRIPT], capture_output=True, text=True, env=env, cwd=root, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert "spec True (None, 'data') (None, 'data')" in lines
    assert "spec False () ()" in lines
    assert lines.count("sharding kept (None, 'data')") == 1
    assert float(lines[-1].split()[-1]) < 1e-4
