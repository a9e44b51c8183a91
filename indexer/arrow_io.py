"""The Arrow files of an index version: chunk embeddings and the optional per-motion features.

- `embeddings.arrow`: chunk_id (int64), motion_id (int64), vector (fixed-size list of float32), sorted by
  chunk_id; read memory-mapped.
- `motion_features.arrow`: motion_id, shape, values (one flattened float32 array per motion).

Both are written to a temporary name, fsynced and renamed into place (`engine.corpus.io.atomic_writer`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from engine.corpus.io import atomic_writer
from engine.corpus.types import CorpusError


@dataclass
class Embeddings:
    chunk_ids: np.ndarray  # (N,) int64
    motion_ids: np.ndarray  # (N,) int64
    vectors: np.ndarray  # (N, d) float32


def _write_arrow(path: Path, table: pa.Table) -> None:
    with atomic_writer(path) as tmp:
        with pa.OSFile(str(tmp), "wb") as sink:
            with pa.ipc.new_file(sink, table.schema) as writer:
                writer.write_table(table)


def write_embeddings(path: Path, emb: Embeddings) -> None:
    d = emb.vectors.shape[1]
    vec = pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(emb.vectors, np.float32).reshape(-1)), d)
    _write_arrow(path, pa.table({"chunk_id": pa.array(emb.chunk_ids, pa.int64()),
                                 "motion_id": pa.array(emb.motion_ids, pa.int64()), "vector": vec}))


def _values(arr: pa.Array, dtype) -> np.ndarray:
    """The values of a primitive Arrow array without nulls as a numpy view of its buffer (Array.to_numpy
    imports pandas: most of a cold search's second)."""
    if arr.null_count:
        raise ValueError(f"{arr.type} column with {arr.null_count} nulls")
    return np.frombuffer(arr.buffers()[1], dtype)[arr.offset: arr.offset + len(arr)]


def _one_chunk(col: pa.ChunkedArray) -> pa.Array:
    """A column as one array (the files hold one record batch; combining imports pyarrow.compute)."""
    return col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()


def read_embeddings(path: Path, copy: bool = False) -> Embeddings:
    """Memory-mapped (read-only views) unless copy=True."""
    try:
        t = pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()
        vec = _one_chunk(t.column("vector"))
        d = vec.type.list_size
        vectors = _values(vec.values, np.float32)[vec.offset * d: (vec.offset + len(vec)) * d].reshape(-1, d)
        out = Embeddings(_values(_one_chunk(t.column("chunk_id")), np.int64),
                         _values(_one_chunk(t.column("motion_id")), np.int64), vectors)
    except (OSError, pa.ArrowException, KeyError, AttributeError, ValueError) as e:
        raise CorpusError(str(path), f"unreadable embeddings file: {e}") from e
    if copy:
        out = Embeddings(np.array(out.chunk_ids), np.array(out.motion_ids), np.array(out.vectors))
    return out


def write_motion_features(path: Path, feats: dict[int, np.ndarray]) -> None:
    ids = sorted(feats)
    arrays = [np.ascontiguousarray(feats[i], np.float32) for i in ids]
    offsets = np.zeros(len(ids) + 1, np.int64)
    np.cumsum([a.size for a in arrays], out=offsets[1:])
    values = np.concatenate([a.reshape(-1) for a in arrays]) if arrays else np.zeros(0, np.float32)
    _write_arrow(path, pa.table({
        "motion_id": pa.array(ids, pa.int64()),
        "shape": pa.array([list(a.shape) for a in arrays], pa.list_(pa.int64())),
        "values": pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(values, pa.float32())),
    }))


def read_motion_features(path: Path) -> dict[int, np.ndarray]:
    try:
        t = pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()
        ids = t.column("motion_id").to_pylist()
        shapes = t.column("shape").to_pylist()
        values = t.column("values").combine_chunks()  # large_list<float32>: one flat buffer plus offsets
        # Read the buffers directly: Array.to_numpy imports pandas (~1 s of a cold search).
        inner = values.values
        flat = np.frombuffer(inner.buffers()[1], np.float32)[inner.offset: inner.offset + len(inner)]
        offsets = np.frombuffer(values.buffers()[1], np.int64)[values.offset: values.offset + len(values) + 1]
        return {int(i): flat[offsets[k]: offsets[k + 1]].reshape(shapes[k]) for k, i in enumerate(ids)}
    except (OSError, pa.ArrowException, KeyError, ValueError) as e:
        raise CorpusError(str(path), f"unreadable motion features file: {e}") from e
