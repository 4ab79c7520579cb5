"""The Grain input pipeline: epochs, evaluation, seeds, process shards, exact resume, batch contents."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import test_seed

from deepearth_jax.data import compat, pipeline, reader
from deepearth_jax.data.synthetic import make_synthetic_store
from deepearth_jax.errors import StoreError


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory):
    seed = test_seed()
    path = tmp_path_factory.mktemp("pipeline") / f"store-seed{seed}"
    return make_synthetic_store(
        path, observations=200, species=10, vision_shape=(2, 3, 3, 8), language_dim=16, seed=seed
    )


def _rows(store, mode="vision"):
    return pipeline.usable_rows(store, np.arange(store.num_observations), mode)


def _take(batches, n):
    return [next(batches) for _ in range(n)]


def _assert_batch_matches_store(store, batch, mode):
    rows = batch["row"]
    real = batch["mask"]
    assert (rows[real] >= 0).all() and (rows[~real] == -1).all()
    read_rows = rows[real]
    np.testing.assert_array_equal(batch["species"][real], store.column("species_index")[read_rows])
    np.testing.assert_array_equal(
        batch["location"][real, 0], store.column("latitude")[read_rows].astype(np.float32)
    )
    np.testing.assert_array_equal(
        batch["location"][real, 1], store.column("longitude")[read_rows].astype(np.float32)
    )
    np.testing.assert_array_equal(batch["time"][real, 0], store.column("year")[read_rows].astype(np.float32))
    np.testing.assert_array_equal(
        batch["time"][real, 5], store.column("second")[read_rows].astype(np.float32)
    )
    if mode in ("vision", "multimodal"):
        assert batch["vision"].dtype == store.vision.dtype
        np.testing.assert_array_equal(
            batch["vision"][real], store.vision[store.column("vision_row")[read_rows]]
        )
    if mode in ("language", "multimodal"):
        np.testing.assert_array_equal(
            batch["language"][real], store.language[store.column("language_row")[read_rows]]
        )


def test_usable_rows_drops_rows_without_vision(store):
    all_rows = np.arange(store.num_observations)
    has_vision = store.column("vision_row") >= 0
    assert 0 < has_vision.sum() < store.num_observations  # the fixture has both kinds
    np.testing.assert_array_equal(pipeline.usable_rows(store, all_rows, "vision"), all_rows[has_vision])
    np.testing.assert_array_equal(pipeline.usable_rows(store, all_rows[::-1], "language"), all_rows[::-1])
    with pytest.raises(ValueError, match="unknown mode 'pixels'"):
        pipeline.usable_rows(store, all_rows, "pixels")
    with pytest.raises(ValueError, match=r"outside the observation table \[0, 200\)"):
        pipeline.usable_rows(store, np.array([0, 200]), "language")


@pytest.mark.parametrize("mode", ["vision", "language", "multimodal"])
def test_epoch_yields_each_row_at_most_once_and_all_but_the_remainder(store, mode):
    rows = _rows(store, mode)
    global_batch = 16
    with pipeline.train_batches(store, rows, mode=mode, global_batch_size=global_batch, seed=5) as batches:
        assert batches.steps_per_epoch == len(rows) // global_batch
        epochs = [_take(batches, batches.steps_per_epoch) for _ in range(2)]
    for epoch in epochs:
        seen = np.concatenate([b["row"] for b in epoch])
        assert len(seen) == len(np.unique(seen)) == batches.steps_per_epoch * global_batch
        assert set(seen) <= set(rows.tolist())
        assert len(rows) - len(seen) < global_batch
        for batch in epoch:
            assert batch["mask"].all() and batch["species"].dtype == np.int32
            assert batch["location"].shape == (global_batch, 3) and batch["time"].shape == (global_batch, 6)
            _assert_batch_matches_store(store, batch, mode)
    first, second = (np.concatenate([b["row"] for b in e]) for e in epochs)
    assert not np.array_equal(first, second)  # each epoch is shuffled anew


def test_seed_repeats_the_order_and_another_seed_changes_it(store):
    rows = _rows(store)

    def order(seed, epochs=1):
        with pipeline.train_batches(store, rows, mode="vision", global_batch_size=8, seed=seed) as b:
            return np.concatenate([x["row"] for x in _take(b, epochs * b.steps_per_epoch)])

    a, a_again, b = order(11), order(11), order(12)
    np.testing.assert_array_equal(a, a_again)
    assert not np.array_equal(a, b)


@pytest.mark.parametrize("process_count", [2, 4])
def test_process_shards_are_disjoint_and_cover_the_global_batch(store, process_count):
    rows = _rows(store)
    global_batch = 16
    with pipeline.train_batches(store, rows, mode="vision", global_batch_size=global_batch, seed=3) as one:
        whole = _take(one, one.steps_per_epoch + 2)
    shards = []
    for p in range(process_count):
        with pipeline.train_batches(
            store,
            rows,
            mode="vision",
            global_batch_size=global_batch,
            seed=3,
            process_index=p,
            process_count=process_count,
        ) as part:
            assert part.steps_per_epoch == one.steps_per_epoch
            shards.append(_take(part, len(whole)))
    for step, batch in enumerate(whole):
        parts = [shards[p][step]["row"] for p in range(process_count)]
        assert all(len(x) == global_batch // process_count for x in parts)
        union = np.concatenate(parts)
        assert len(np.unique(union)) == global_batch  # disjoint
        assert set(union) == set(batch["row"])  # and together the same global batch


def test_resume_from_saved_state_yields_the_identical_remaining_sequence(store):
    rows = _rows(store)
    kwargs = dict(mode="multimodal", global_batch_size=8, seed=test_seed())
    with pipeline.train_batches(store, rows, **kwargs) as batches:
        _take(batches, batches.steps_per_epoch - 2)  # the rest crosses an epoch boundary
        state = json.loads(json.dumps(batches.get_state()))
        expected = [{k: v.copy() for k, v in b.items()} for b in _take(batches, 6)]
    with pipeline.train_batches(store, rows, **kwargs) as resumed:
        _take(resumed, 1)  # state is set mid-stream, with reads in flight
        resumed.set_state(state)
        got = _take(resumed, 6)
    assert resumed.epoch == 1
    for want, have in zip(expected, got, strict=True):
        assert want.keys() == have.keys()
        for key in want:
            np.testing.assert_array_equal(want[key], have[key])


def test_start_epoch_equals_skipping_epochs(store):
    rows = _rows(store)
    with pipeline.train_batches(store, rows, mode="vision", global_batch_size=8, seed=1) as batches:
        _take(batches, 2 * batches.steps_per_epoch)
        want = next(batches)["row"]
    with pipeline.train_batches(store, rows, mode="vision", global_batch_size=8, seed=1, start_epoch=2) as b:
        np.testing.assert_array_equal(next(b)["row"], want)


def test_set_state_refuses_another_pipeline(store):
    rows = _rows(store)
    with pipeline.train_batches(store, rows, mode="vision", global_batch_size=8, seed=1) as batches:
        state = batches.get_state()
    with pipeline.train_batches(store, rows, mode="vision", global_batch_size=8, seed=2) as other:
        with pytest.raises(ValueError, match="seed=1"):
            other.set_state(state)
    with pipeline.train_batches(store, rows[:-8], mode="vision", global_batch_size=8, seed=1) as other:
        with pytest.raises(ValueError, match="cannot resume"):
            other.set_state(state)


@pytest.mark.parametrize("process_count", [1, 2])
def test_evaluation_yields_every_row_exactly_once_in_fixed_shapes(store, process_count):
    rows = np.random.default_rng(test_seed()).permutation(_rows(store))[:37]
    global_batch = 8
    seen, shapes = [], set()
    for p in range(process_count):
        batches = list(
            pipeline.eval_batches(
                store,
                rows,
                mode="multimodal",
                global_batch_size=global_batch,
                process_index=p,
                process_count=process_count,
            )
        )
        assert len(batches) == -(-len(rows) // global_batch)
        for batch in batches:
            shapes.add(tuple((k, v.shape) for k, v in sorted(batch.items())))
            _assert_batch_matches_store(store, batch, "multimodal")
            assert np.isfinite(batch["vision"].astype(np.float32)).all()
            assert np.isfinite(batch["language"]).all()
            seen.append(batch["row"][batch["mask"]])
    assert len(shapes) == 1  # one shape: no recompile for the last batch
    seen = np.concatenate(seen)
    assert len(seen) == len(rows) and set(seen) == set(rows.tolist())


def test_evaluation_pads_and_masks_the_last_batch(store):
    rows = _rows(store)[:10]
    batches = list(pipeline.eval_batches(store, rows, mode="vision", global_batch_size=8))
    assert [int(b["mask"].sum()) for b in batches] == [8, 2]
    last = batches[-1]
    assert (last["row"][~last["mask"]] == -1).all()
    # Padding repeats a real example (rows[0]), never uninitialised memory.
    first_vision = store.vision[store.column("vision_row")[rows[0]]]
    for v in last["vision"][~last["mask"]]:
        np.testing.assert_array_equal(v, first_vision)


def test_held_batches_are_never_overwritten_by_later_reads(store):
    rows = _rows(store)
    # buffer_bytes=1: one batch read ahead, so buffers are recycled as soon as they are free
    with pipeline.train_batches(store, rows, mode="vision", global_batch_size=8, seed=4, buffer_bytes=1) as b:
        held = _take(b, 3)
        _take(b, 30)
        for batch in held:
            _assert_batch_matches_store(store, batch, "vision")
        assert len(b.reader.pools["vision"]._buffers) <= b.prefetch + 4  # and buffers are reused


def test_views_of_batches_keep_their_data(store):
    rows = _rows(store)
    with pipeline.train_batches(store, rows, mode="vision", global_batch_size=8, seed=6, buffer_bytes=1) as b:
        pairs = []
        for batch in _take(b, 4):
            pairs.append((batch["row"].copy(), batch["vision"][1:3]))
            del batch
        _take(b, 20)
    vision_row = store.column("vision_row")
    for rows_of_batch, view in pairs:
        np.testing.assert_array_equal(view, store.vision[vision_row[rows_of_batch[1:3]]])


def test_vision_pooled_batches_hold_the_mean(store):
    rows = _rows(store)
    with pipeline.train_batches(store, rows, mode="vision_pooled", global_batch_size=8, seed=0) as batches:
        batch = next(batches)
    assert set(batch) == {"species", "location", "time", "mask", "row", "vision_pooled"}
    assert batch["vision_pooled"].dtype == np.float32 and batch["vision_pooled"].shape == (8, 8)
    expected = store.vision[store.column("vision_row")[batch["row"]]].astype(np.float32).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(batch["vision_pooled"], expected, rtol=1e-5, atol=1e-6)


def test_close_stops_the_reading_threads(store):
    def grain_threads():
        return {t for t in threading.enumerate() if t.name.startswith("grain")}

    before = grain_threads()
    batches = pipeline.train_batches(store, _rows(store), mode="vision", global_batch_size=8, seed=0)
    _take(batches, 3)
    assert grain_threads() - before
    batches.close()
    deadline = time.monotonic() + 5
    while grain_threads() - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not grain_threads() - before


def test_bad_batching_arguments(store):
    rows = _rows(store)
    with pytest.raises(ValueError, match="not divisible by the process count 3"):
        pipeline.train_batches(store, rows, mode="vision", global_batch_size=8, seed=0, process_count=3)
    with pytest.raises(ValueError, match="make no full global batch"):
        pipeline.train_batches(store, rows[:5], mode="vision", global_batch_size=8, seed=0)
    with pytest.raises(ValueError, match="no rows to evaluate"):
        pipeline.eval_batches(store, rows[:0], mode="vision", global_batch_size=8)


def test_device_prefetch_places_sharded_arrays(store):
    import jax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    mesh = jax.make_mesh((len(jax.devices()),), ("data",))
    sharding = NamedSharding(mesh, P("data"))
    global_batch = 8 * len(jax.devices())
    rows = _rows(store)
    # Only this test's prefetcher counts: a trainer run earlier in this process may still be winding down.
    earlier = {t for t in threading.enumerate() if t.name == "device-prefetch"}
    with pipeline.train_batches(store, rows, mode="multimodal", global_batch_size=global_batch, seed=2) as b:
        host = [{k: v.copy() for k, v in x.items()} for x in _take(b, 3)]
    with pipeline.train_batches(
        store, rows, mode="multimodal", global_batch_size=global_batch, seed=2, buffer_bytes=1
    ) as b:
        stream = pipeline.device_prefetch(b, sharding, depth=2)
        placed = [next(stream) for _ in range(3)]
        for _ in range(20):  # later reads must not overwrite host buffers that placed arrays may alias
            next(stream)
        stream.close()  # early close: the background thread must stop
    for want, have in zip(host, placed, strict=True):
        assert have["vision"].dtype == np.float16 and have["vision"].sharding == sharding
        for key in want:
            np.testing.assert_array_equal(np.asarray(have[key]), want[key])
    ours = lambda: [t for t in threading.enumerate() if t.name == "device-prefetch" and t not in earlier]
    deadline = time.monotonic() + 5
    while ours() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not ours()


def test_device_prefetch_raises_source_errors():
    import jax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    def broken():
        yield {"x": np.zeros(len(jax.devices()), np.float32)}
        raise RuntimeError("disk on fire")

    sharding = NamedSharding(jax.make_mesh((len(jax.devices()),), ("data",)), P("data"))
    stream = pipeline.device_prefetch(broken(), sharding)
    assert np.asarray(next(stream)["x"]).shape == (len(jax.devices()),)
    with pytest.raises(RuntimeError, match="disk on fire"):
        next(stream)


def test_get_training_batch_returns_the_ids_in_order(store, tmp_path: Path):
    vision_row = store.column("vision_row")
    chosen = np.random.default_rng(test_seed()).permutation(np.flatnonzero(vision_row >= 0))[:5]
    ids = store.observation_ids[chosen].tolist()
    batch = compat.get_training_batch(store.path, ids)  # a path works as well as an opened store
    assert batch["observation_ids"] == ids
    assert batch["species"] == [store.species_names[i] for i in store.column("species_index")[chosen]]
    np.testing.assert_array_equal(batch["vision_embeddings"], store.vision[vision_row[chosen]])
    np.testing.assert_array_equal(
        batch["language_embeddings"], store.language[store.column("language_row")[chosen]]
    )
    assert batch["locations"].shape == (5, 3) and batch["timestamps"].shape == (5, 6)
    np.testing.assert_array_equal(batch["timestamps"][:, 1], store.column("month")[chosen].astype(np.float32))


def test_get_training_batch_errors_name_the_ids(store):
    vision_row = store.column("vision_row")
    no_vision = store.observation_ids[np.flatnonzero(vision_row < 0)[0]]
    with_vision = store.observation_ids[np.flatnonzero(vision_row >= 0)[0]]
    with pytest.raises(StoreError, match="999999999_7"):
        compat.get_training_batch(store, [with_vision, "999999999_7"])
    with pytest.raises(StoreError, match=f"1 observation id\\(s\\) have no vision embedding: {no_vision}"):
        compat.get_training_batch(store, [with_vision, no_vision])
    batch = compat.get_training_batch(store, [no_vision], include_vision=False)
    assert "vision_embeddings" not in batch and batch["language_embeddings"].shape == (1, 16)


@pytest.mark.parametrize("mode", ["vision", "vision_pooled"])
def test_data_benchmark_writes_its_figures(store, tmp_path: Path, capsys, mode):
    from deepearth_jax.benchmark import main

    out = tmp_path / "b.json"
    argv = ["data", "--store", str(store.path), "--batch-size", "8", "--runs", "2", "--repeats", "1"]
    assert main([*argv, "--mode", mode, "--json", str(out), "--device"]) == 0
    figures = json.loads(out.read_text())
    for key in ("pipeline_samples_per_s", "raw_samples_per_s", "ratio", "ms_per_batch", "gb_per_s"):
        assert figures[key] > 0, key
    assert figures["ratio"] == pytest.approx(figures["pipeline_samples_per_s"] / figures["raw_samples_per_s"])
    assert figures["rss_anon_peak_mb"] >= figures["rss_anon_before_mb"] > 0
    assert figures["device"]["delivered_samples_per_s"] > 0
    assert "ratio" in capsys.readouterr().out
    assert main(["data", "--store", str(tmp_path / "missing")]) == 2
    assert "error: no store at" in capsys.readouterr().err


def test_split_copy_equals_a_single_copy(store, monkeypatch):
    monkeypatch.setattr(reader, "_MIN_SPLIT_BYTES", 1)  # split even these tiny batches
    rows = np.random.default_rng(test_seed()).choice(_rows(store, "multimodal"), 13, replace=False)
    single = reader.BatchReader(store, "multimodal", 13)
    split = reader.BatchReader(store, "multimodal", 13, split=3)
    assert split.split == 3
    try:
        want, got = single.read(rows), split.read(rows)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])
        _assert_batch_matches_store(store, got, "multimodal")
    finally:
        split.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("batch-copy")]
