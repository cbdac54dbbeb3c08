"""The TensorFlow-free shard reader the analyze stage uses: the same examples as tf.data, damage refused."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from imgclf.data import records, tfdata
from imgclf.entry_points import PROJECT_ROOT

pytestmark = pytest.mark.duration(seconds=25)  # about, under make test (four processes importing TensorFlow)

SHAPE = (5, 4, 3)


@pytest.fixture
def shard(tmp_path):
    rng = np.random.default_rng(0)
    examples = [(rng.integers(0, 256, SHAPE, dtype=np.uint8), label, index)
                for label, index in ((0, 0), (3, 7), (1, 2**40), (2, 130), (0, 1))]
    tfdata.write_shards(tmp_path, "test", iter(examples), count=len(examples), examples_per_shard=3)
    return tmp_path, examples


def test_crc32c_known_answer():
    assert records.crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value


def test_reads_what_tensorflow_wrote_in_manifest_order(shard):
    directory, examples = shard
    files = records.split_files(directory, "test")
    assert len(files) == 2
    framed = list(records.read_records(files))
    for record in framed:
        record.verify()
    read = [record.example() for record in framed]
    assert [(record.label, record.index) for record in read] == [(label, index) for _, label, index in examples]
    assert all(record.pixels == pixels.tobytes() for record, (pixels, _, _) in zip(read, examples, strict=True))
    by_tf = tfdata.make_dataset(directory, "test", image_shape=SHAPE, num_classes=4, batch_size=8, with_index=True)
    (images, _, indices), = tfdata.iterate_numpy(by_tf)
    found = records.read_images(files, {7, 2**40}, SHAPE)
    for position, index in enumerate(indices):
        if int(index) in found:
            np.testing.assert_array_equal(found[int(index)], images[position].astype(np.uint8))
    assert set(found) == {7, 2**40}
    with pytest.raises(records.CorruptShardError, match=r"meta.json's image shape \(4, 4, 3\) needs 48"):
        records.read_images(files, {7}, (4, 4, 3))


def test_damaged_image_bytes_and_lengths_are_errors_that_say_what_to_do(shard):
    directory, _ = shard
    first = Path(records.split_files(directory, "test")[0])
    pristine = first.read_bytes()
    damaged = bytearray(pristine)
    damaged[len(damaged) // 2] ^= 0xFF  # inside the second record's pixels
    first.write_bytes(bytes(damaged))
    with pytest.raises(records.CorruptShardError, match=r"data checksum.*rerun the preprocess stage"):
        records.read_images([first], {7}, SHAPE)
    damaged = bytearray(pristine)
    damaged[14] ^= 0xFF  # the first record's first protobuf tag: its example no longer decodes
    first.write_bytes(bytes(damaged))
    with pytest.raises(records.CorruptShardError, match="data checksum"):
        records.read_images([first], {7}, SHAPE)
    damaged = bytearray(pristine)
    damaged[0] ^= 0x01  # the first record's length
    first.write_bytes(bytes(damaged))
    with pytest.raises(records.CorruptShardError, match="length checksum"):
        records.read_images([first], {0}, SHAPE)
    first.write_bytes(pristine[:-3])
    with pytest.raises(records.CorruptShardError, match="truncated"):
        records.read_images([first], {1}, SHAPE)  # index 1 is in the other shard: the whole file is read


WRITE_A_SHARD = """
import sys
from pathlib import Path

import numpy as np

from imgclf.data import tfdata

examples = [(np.full((2, 2, 3), label, np.uint8), label, index) for index, label in enumerate((0, 1, 2, 1) * 8)]
tfdata.write_shards(Path(sys.argv[1]), "train", examples, count=len(examples), examples_per_shard=100)
"""


def test_the_same_examples_give_the_same_shard_bytes_in_every_process(tmp_path):
    # Protobuf writes a map (the example's features) in a per-process hash order unless asked for a deterministic
    # one: five of six processes disagreed, so each preprocess rerun stored new shards in DVC's cache and reran
    # every later stage on unchanged data.
    digests = set()
    for attempt in range(3):  # with the old writer 5 of 6 processes disagreed: three show it
        folder = tmp_path / str(attempt)
        folder.mkdir()
        subprocess.run([sys.executable, "-c", WRITE_A_SHARD, str(folder)], cwd=PROJECT_ROOT, check=True,
                       capture_output=True, timeout=120)
        (shard,) = folder.glob("train-*.tfrecord")
        digests.add(hashlib.sha256(shard.read_bytes()).hexdigest())
    assert len(digests) == 1
