"""multi_worker's pieces that need no second process: the params check, the coordinator, each process's share of
the training data and of the global batch (imgclf/training/distributed.py; the processes: tests/pipeline/
test_distributed.py)."""

from __future__ import annotations

import numpy as np
import pytest

from imgclf.config import params_from_dict
from imgclf.data import tfdata
from imgclf.errors import ConfigError, ModelConfigError
from imgclf.training import distributed

pytestmark = pytest.mark.duration(seconds=5)  # about, under make test: orders the modules


def test_a_global_batch_the_workers_cannot_split_is_refused_before_any_work(params_dict):
    params_dict["training"].update(distribute="multi_worker", workers=3)
    params_dict["scratch"]["batch_size"] = 64
    with pytest.raises(ConfigError, match=r"scratch\.batch_size: 64 images cannot be split evenly between "
                                          r"training\.workers: 3"):
        params_from_dict(params_dict, source="test")
    params_dict["training"]["workers"] = 4
    assert params_from_dict(params_dict, source="test").training.workers == 4
    params_dict["transfer"]["batch_size"] = 30  # transfer's head and fine-tuning are split too
    with pytest.raises(ConfigError, match=r"transfer\.batch_size: 30 images cannot be split evenly between "
                                          r"training\.workers: 4"):
        params_from_dict(params_dict, source="test")


@pytest.mark.parametrize("coordinator", ["10.0.0.1", "10.0.0.1:", ":4455", "10.0.0.1:port", "10.0.0.1:70000"])
def test_a_coordinator_that_is_not_host_port_is_refused_by_the_params_check(params_dict, coordinator):
    params_dict["training"]["coordinator"] = coordinator
    with pytest.raises(ConfigError, match=r"training\.coordinator: expected host:port"):
        params_from_dict(params_dict, source="test")


def test_coordinator_addresses():
    assert distributed.host_port("10.0.0.1:4455") == ("10.0.0.1", 4455)
    assert distributed.host_port("[::1]:0") == ("::1", 0)
    assert distributed.is_loopback("127.0.0.1:0") and distributed.is_loopback("localhost:9") \
        and distributed.is_loopback("[::1]:1")
    assert not distributed.is_loopback("10.0.0.1:4455") and not distributed.is_loopback("trainer-0:4455")
    with pytest.raises(ModelConfigError, match="host:port"):
        distributed.host_port("10.0.0.1")


def test_each_process_takes_its_share_of_the_global_batch_and_the_same_steps():
    first, second = distributed.Shard(count=2, index=0), distributed.Shard(count=2, index=1)
    assert first.is_chief and not second.is_chief
    assert first.batch_size(64) == 32
    # 145 images: 72 each (one left out of the epoch's shuffle), 2 whole batches of 32: every process runs 2 steps.
    assert first.steps_per_epoch(145, 64) == second.steps_per_epoch(145, 64) == 2


def test_launching_and_joining_depend_on_the_process(monkeypatch, params_dict):
    params_dict["training"]["distribute"] = "multi_worker"
    training = params_from_dict(params_dict, source="test").training
    monkeypatch.delenv(distributed.PROCESS_ID_ENV, raising=False)
    assert distributed.launching(training) and distributed.join(training) is None
    params_dict["training"]["distribute"] = "none"
    assert not distributed.launching(params_from_dict(params_dict, source="test").training)


def test_sharded_training_data_are_disjoint_equal_whole_batches(tmp_path, write_prepared):
    meta = write_prepared(tmp_path, class_names=["a", "b"], per_class={"train": 11})  # 22 images
    seen = []
    for index in range(2):
        dataset = tfdata.make_dataset(tmp_path, "train", image_shape=(8, 8, 3), num_classes=2, batch_size=5,
                                      training=True, seed=1, example_count=meta["counts"]["train"], with_index=True,
                                      shard=(2, index))
        batches = [batch[2].numpy() for batch in dataset]
        assert [len(batch) for batch in batches] == [5, 5], "11 images each, two whole batches of 5"
        seen.append(np.concatenate(batches))
    assert not set(seen[0]) & set(seen[1]), "no image in both shards"


def test_sharded_features_are_disjoint_equal_whole_batches_reshuffled_each_epoch():
    """The transfer head's input under multi_worker (tfdata.array_dataset): 23 feature rows, 2 processes."""
    features = np.arange(23, dtype=np.float32)[:, None]
    epochs = {}
    for index in range(2):
        dataset = tfdata.array_dataset(features, features, batch_size=5, seed=1, epochs=2, shard=(2, index))
        batches = [batch[0].numpy().ravel() for batch in dataset]
        assert [len(batch) for batch in batches] == [5, 5, 5, 5], "11 rows each, two whole batches an epoch"
        epochs[index] = (np.concatenate(batches[:2]), np.concatenate(batches[2:]))
    assert not set(epochs[0][0]) & set(epochs[1][0]), "no row in both shards"
    shard = set(features[:22:2].ravel())  # round robin: process 0 holds the even rows (row 22 is left out)
    assert set(epochs[0][0]) <= shard and set(epochs[0][1]) <= shard, "the same shard each epoch"
    assert list(epochs[0][0]) != list(epochs[0][1]), "each epoch in a new order"
    resumed = tfdata.array_dataset(features, features, batch_size=5, seed=1, epochs=2, first_epoch=1, shard=(2, 0))
    assert list(np.concatenate([batch[0].numpy().ravel() for batch in resumed])) == list(epochs[0][1]), \
        "a resumed epoch sees the order the uninterrupted run saw"
