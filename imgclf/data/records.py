"""Read the prepared TFRecord shards without TensorFlow.

The analyze stage needs the pixels of a few dozen test images for its galleries. Importing TensorFlow for
them costs about 4 s of CPU per run, more than the rest of the stage's reading; the shards' format is
simple enough to read here. Each record is framed as TFRecord frames it (length, masked CRC-32C of the
length, data, masked CRC-32C of the data) and holds a `tf.train.Example` with the three features
`tfdata.write_shards` writes: `image` (raw uint8 bytes), `label` and `index` (int64). Both checksums are
verified on every record returned, so a damaged shard is an error here as it is in tf.data.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np

_CASTAGNOLI_REVERSED = 0x82F63B78
_CRC_MASK_DELTA = 0xA282EAD8
_LENGTH = struct.Struct("<Q")
_CRC = struct.Struct("<I")


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ _CASTAGNOLI_REVERSED if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_TABLE = _crc_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), the checksum TFRecord frames use (zlib's crc32 is another polynomial)."""
    crc = 0xFFFFFFFF
    table = _TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _CRC_MASK_DELTA) & 0xFFFFFFFF


class Record(NamedTuple):
    pixels: bytes
    label: int
    index: int


class CorruptShardError(ValueError):
    pass


def split_files(prepared_dir: Path, split: str) -> list[str]:
    """The shards of one split, in order."""
    files = sorted(str(path) for path in Path(prepared_dir).glob(f"{split}-*.tfrecord"))
    if not files:
        raise FileNotFoundError(f"no {split} shards in {prepared_dir}; run the preprocess stage (dvc repro)")
    return files


def read_records(files: Iterable[str | Path]) -> Iterator[FramedRecord]:
    """Every record of the shards, in file order (the manifest order). Each length is checked here; a record's
    data checksum when the caller keeps it (`FramedRecord.verify`): a pure-Python CRC of every image of a
    split would cost more than the TensorFlow import this module avoids."""
    for path in files:
        with open(path, "rb") as handle:
            data = handle.read()
        offset = 0
        while offset < len(data):
            header = data[offset:offset + 12]
            if len(header) < 12:
                raise _corrupt(path, offset, "truncated record header")
            (length,) = _LENGTH.unpack_from(header)
            if _CRC.unpack_from(header, 8)[0] != masked_crc(header[:8]):
                raise _corrupt(path, offset, "length checksum mismatch")
            start, end = offset + 12, offset + 12 + length
            if end + 4 > len(data):
                raise _corrupt(path, offset, "truncated record")
            yield FramedRecord(data, path, offset, start, end)
            offset = end + 4


class FramedRecord:
    """A record whose example is decoded, and its data checksum verified, only when asked."""

    __slots__ = ("_data", "_end", "_offset", "_path", "_start")

    def __init__(self, data: bytes, path: str | Path, offset: int, start: int, end: int) -> None:
        self._data, self._path, self._offset, self._start, self._end = data, path, offset, start, end

    def example(self) -> Record:
        """The decoded example, checksum unchecked; a payload that does not decode is checked, then refused."""
        try:
            return parse_example(self._data[self._start:self._end])
        except (IndexError, ValueError) as error:  # a damaged payload runs off its end or misreads a field
            self.verify()
            raise _corrupt(self._path, self._offset, f"undecodable example ({error})") from error

    def verify(self) -> None:
        """Check the data checksum (for the records a caller keeps: see `read_records`)."""
        if _CRC.unpack_from(self._data, self._end)[0] != masked_crc(self._data[self._start:self._end]):
            raise _corrupt(self._path, self._offset, "data checksum mismatch")

    def image(self, image_shape: tuple[int, int, int], example: Record | None = None) -> np.ndarray:
        """The record's uint8 pixels as `image_shape`, checksum verified (`example`: the record's, if already
        decoded). An image of another size is refused: the shards and meta.json come from different runs."""
        self.verify()
        example = example or self.example()
        expected_bytes = int(np.prod(image_shape))
        if len(example.pixels) != expected_bytes:
            raise CorruptShardError(
                f"image {example.index} holds {len(example.pixels)} bytes, but meta.json's image shape "
                f"{tuple(image_shape)} needs {expected_bytes}: the shards and meta.json come from different "
                "preprocess runs; rerun the preprocess stage (`dvc repro --force preprocess`)")
        return np.frombuffer(example.pixels, np.uint8).reshape(image_shape).copy()


def _corrupt(path: str | Path, offset: int, reason: str) -> CorruptShardError:
    return CorruptShardError(f"{path}: {reason} at byte {offset}; the prepared data is damaged: rerun the "
                             "preprocess stage (`dvc repro --force preprocess`)")


def _varint(buffer: bytes, position: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buffer[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7


def _fields(buffer: bytes) -> Iterator[tuple[int, int, bytes | int]]:
    """(field number, wire type, value) of a protobuf message: bytes for length-delimited fields, an int
    for varints; fixed-width fields are skipped (no field read here has them)."""
    position = 0
    while position < len(buffer):
        key, position = _varint(buffer, position)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, position = _varint(buffer, position)
            yield number, wire_type, value
        elif wire_type == 2:
            length, position = _varint(buffer, position)
            yield number, wire_type, buffer[position:position + length]
            position += length
        elif wire_type in (1, 5):
            position += 8 if wire_type == 1 else 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire_type}")


def _int64s(int64_list: bytes) -> list[int]:
    """Int64List.value: packed (as TensorFlow writes it) or not; two's complement for negatives."""
    values: list[int] = []
    for _, wire_type, value in _fields(int64_list):
        if wire_type == 2:
            position = 0
            while position < len(value):
                number, position = _varint(value, position)
                values.append(number)
        else:
            values.append(value)
    return [value - (1 << 64) if value >= 1 << 63 else value for value in values]


def _first(message: bytes, *, field: int) -> bytes:
    """The first length-delimited value of `field` in a message."""
    for number, _, value in _fields(message):
        if number == field:
            return value
    raise CorruptShardError(f"a record's feature lacks protobuf field {field}: not a prepared shard")


def parse_example(payload: bytes) -> Record:
    """The `image`, `label` and `index` features of a serialized `tf.train.Example`."""
    features: dict[str, bytes] = {}
    for number, _, value in _fields(payload):  # Example.features
        if number != 1:
            continue
        for entry_number, _, entry in _fields(value):  # Features.feature: map<string, Feature> entries
            if entry_number != 1:
                continue
            key = feature = b""
            for field, _, part in _fields(entry):
                if field == 1:
                    key = part
                elif field == 2:
                    feature = part
            features[key.decode()] = feature
    missing = {"image", "label", "index"} - set(features)
    if missing:
        raise CorruptShardError(f"a record lacks the features {sorted(missing)}: not a prepared shard")
    pixels = _first(_first(features["image"], field=1), field=1)  # Feature.bytes_list -> BytesList.value
    label, index = (_int64s(_first(features[name], field=3))[0] for name in ("label", "index"))  # .int64_list
    return Record(bytes(pixels), label, index)


def read_images(files: Iterable[str | Path], ids: set[int], image_shape: tuple[int, int, int]) -> dict[int, np.ndarray]:
    """The uint8 pixels of the examples whose manifest index is in `ids`, verified, in one pass that stops
    once all are found."""
    wanted, found = set(ids), {}
    if not wanted:
        return found
    for record in read_records(files):
        example = record.example()
        if example.index in wanted:
            found[example.index] = record.image(image_shape, example)
            if len(found) == len(wanted):
                break
    return found
