"""Parity with the original PyTorch models (DATA.md section 4): same weights, same outputs, same Adam steps.

Skipped when PyTorch is absent (`pip install torch` adds it; CI installs the CPU build). Small dims; the
architecture is the original's: Linear -> ReLU -> Dropout twice, then Linear to C; vision mean-pools
(T, H, W).
"""

from __future__ import annotations

import json
from pathlib import Path

import ml_collections
import numpy as np
import pytest
from conftest import optional_import, test_seed
from flax import nnx

torch = optional_import("torch", "parity with the original's PyTorch models")

from deepearth_jax import parallel, steps  # noqa: E402
from deepearth_jax.benchmarks.torch_reference import (  # noqa: E402
    copy_weights_to_torch,
    torch_optimizer,
    torch_reference_model,
)

L, D, C, B = 40, 24, 9, 16
VISION = (2, 3, 3, D)


def make_config(
    name: str, dropout: float, lr: float = 1e-3, weight_decay: float = 0.0
) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {
            "task": "classification",
            "model": {"name": name, "hidden": (32, 16), "dropout": dropout},
            "optimizer": {
                "name": "adam",
                "lr": lr,
                "weight_decay": weight_decay,
                "schedule": "constant",
                "warmup_steps": 0,
                "grad_clip": 0.0,
                "accumulate_steps": 1,
                # Adam divides by sqrt(v) + eps: with PyTorch's 1e-8 a gradient that cancels to ~1e-9 turns
                # summation-order noise into a full lr-sized step; 1e-4 keeps the comparison well conditioned.
                "eps": 1e-4,
            },
            "batch_size": B,
            "mode": "language" if name == "language_classifier" else "vision",
            "mesh": {"shard_params": False},
        }
    )


def make_batch(rng: np.random.Generator, name: str) -> dict[str, np.ndarray]:
    batch = {"species": rng.integers(0, C, B).astype(np.int32), "mask": np.ones(B, bool)}
    if name == "language_classifier":
        batch["language"] = rng.standard_normal((B, L)).astype(np.float32)
    else:
        batch["vision"] = rng.standard_normal((B, *VISION)).astype(np.float16)
    return batch


def torch_inputs(batch: dict[str, np.ndarray]) -> dict:
    return {k: torch.from_numpy(v) for k, v in batch.items() if k in ("language", "vision")}


@pytest.mark.parametrize("name", ["language_classifier", "vision_classifier"])
def test_forward_outputs_agree(name):
    rng = np.random.default_rng(test_seed())
    config = make_config(name, dropout=0.3)
    graphdef, state = steps.create_train_state(
        config,
        input_dims={"language": L, "vision": D},
        num_classes=C,
        total_steps=10,
        mesh=parallel.make_mesh(1),
        seed=int(rng.integers(1000)),
    )
    model = nnx.merge(graphdef, state).model
    reference = torch_reference_model(config, {"language": L, "vision": D}, C)
    copy_weights_to_torch(model, reference)
    model.eval()
    reference.eval()
    batch = make_batch(rng, name)
    ours = np.asarray(nnx.jit(lambda m, x: m(x))(model, batch))
    with torch.no_grad():
        theirs = reference(torch_inputs(batch)).numpy()
    assert ours.shape == theirs.shape == (B, C)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("name", "weight_decay"),
    [("language_classifier", 0.1), ("vision_classifier", 0.0)],  # 0.1: Adam's L2 weight decay too
)
def test_ten_adam_steps_agree(name, weight_decay):
    """The trainer's real jitted step (dropout off) against torch.optim.Adam on the same 10 batches."""
    rng = np.random.default_rng(test_seed())
    config = make_config(name, dropout=0.0, lr=1e-2, weight_decay=weight_decay)
    mesh = parallel.make_mesh(1)
    graphdef, state = steps.create_train_state(
        config, input_dims={"language": L, "vision": D}, num_classes=C, total_steps=10, mesh=mesh, seed=3
    )
    reference = torch_reference_model(config, {"language": L, "vision": D}, C)
    copy_weights_to_torch(nnx.merge(graphdef, state).model, reference)
    optimizer = torch_optimizer(config, reference.parameters())
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.defaults["eps"] == 1e-4
    label_map = np.arange(C, dtype=np.int32)
    train_step = steps.make_train_step(
        config, graphdef, label_map, mesh=mesh, state_sharding=steps.state_sharding_of(state)
    )
    metrics = steps.init_metrics(config)
    bias_before = np.array(state["model"]["mlp"]["head"]["bias"][...], copy=True)  # the state is donated
    torch_losses = []
    for _ in range(10):
        batch = make_batch(rng, name)
        state, metrics = train_step(state, metrics, batch)
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(
            reference(torch_inputs(batch)), torch.from_numpy(batch["species"]).long()
        )
        loss.backward()
        optimizer.step()
        torch_losses.append(loss.item())
    summary = steps.summarize_metrics(metrics)
    np.testing.assert_allclose(summary["loss"], np.mean(torch_losses), rtol=1e-5)
    model = nnx.merge(graphdef, state).model
    torch_layers = [m for m in reference.modules() if isinstance(m, torch.nn.Linear)]
    for ours, theirs in zip([*model.mlp.hidden, model.mlp.head], torch_layers, strict=True):
        np.testing.assert_allclose(
            np.asarray(ours.kernel[...]), theirs.weight.detach().numpy().T, rtol=1e-4, atol=2e-6
        )
        np.testing.assert_allclose(
            np.asarray(ours.bias[...]), theirs.bias.detach().numpy(), rtol=1e-4, atol=2e-6
        )
    # The parameters moved by about 10 * lr: agreement is not the trivial "nothing changed".
    assert np.abs(np.asarray(model.mlp.head.bias[...]) - bias_before).max() > 1e-2


def test_step_benchmark_cli_writes_rows(tmp_path, capsys):
    from deepearth_jax import benchmark

    out = tmp_path / "rows.json"
    configs = Path(__file__).resolve().parents[1] / "configs"
    argv = [
        "step",
        "--config",
        f"{configs}/language.py:tiny",
        "--batch-sizes",
        "4",
        "--steps-per-call",
        "1,3",
    ]
    argv += ["--compare-torch", "--min-time", "0.05", "--num-classes", "6", "--json", str(out)]
    argv += ["--matmul-size", "64", "--copy-mb", "1"]
    assert benchmark.main(argv) == 0
    rows = json.loads(out.read_text())
    assert [(r["batch_size"], r["steps_per_call"]) for r in rows] == [(4, 1), (4, 3)]
    for row in rows:
        assert {
            "batch_size",
            "steps_per_call",
            "us_per_step",
            "samples_per_s",
            "compile_s",
            "torch_us_per_step",
            "ratio",
            "flops_per_step",
            "utilisation_flops",
        } <= set(row)
        assert row["us_per_step"] > 0 and row["torch_us_per_step"] > 0 and row["compile_s"] > 0
        np.testing.assert_allclose(row["ratio"], row["torch_us_per_step"] / row["us_per_step"], rtol=1e-2)
        np.testing.assert_allclose(row["samples_per_s"], 4 / row["us_per_step"] * 1e6, rtol=1e-2)
    capsys.readouterr()
    argv = ["step", "--config", f"{configs}/attentive_probe.py:tiny", "--compare-torch", "--min-time", "0.05"]
    assert benchmark.main(argv) == 2
    assert "error: no PyTorch reference for model 'attentive_probe'" in capsys.readouterr().err
