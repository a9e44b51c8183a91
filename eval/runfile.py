"""Run files and ground-truth files: the contract between search and eval (pyserini-like).

A *run* holds, per query, a ranked list of moments::

    query_id  query  motion_id  start_s  end_s  rank  score  p_se  r

A *ground-truth* file holds the labelled moments of each query (one row per moment; a query may have
several)::

    query_id  motion_id  start_s  end_s  text

Two encodings, chosen by the file suffix:

- ``.jsonl`` — one JSON object per line. An optional first line ``{"meta": {...}}`` carries the run's
  metadata, a `RunMeta`: the method, the index (directory, version, retrieval-model fingerprint), the
  localizer fingerprint and the request settings (k, lam, r mode, score, limit). Every writer records the
  same fields, so that `engine eval run` can score a run written earlier without searching again.
- ``.tsv`` — tab-separated with a header line, quoted by the `csv` module where a text needs it; an
  optional first line ``# meta: {...json...}`` carries the metadata. Empty `p_se` / `r` cells mean None.

Times are seconds; ranks start at 1. `p_se` (located score) and `r` (retrieval score) are None where
the method has none (a single-motion localizer has no `r`). Readers validate every row and raise
`CorpusError` naming the file, the line and the problem.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.corpus.io import atomic_write_text
from engine.corpus.types import CorpusError, Moment

log = logging.getLogger(__name__)

RUN_FIELDS: tuple[str, ...] = ("query_id", "query", "motion_id", "start_s", "end_s", "rank", "score", "p_se", "r")
TRUTH_FIELDS: tuple[str, ...] = ("query_id", "motion_id", "start_s", "end_s", "text")
_META_TSV_PREFIX = "# meta: "


@dataclass
class RunRow:
    """One ranked moment returned for a query."""

    query_id: str
    query: str
    motion_id: int
    start_s: float
    end_s: float
    rank: int
    score: float
    p_se: float | None = None
    r: float | None = None


@dataclass
class RunMeta:
    """Where a run came from and how it was made: the typed metadata line of a run file."""

    method: str
    index: str | None = None  # the index directory the run searched
    index_version: str | None = None
    retrieval_fingerprint: str | None = None
    localizer_fingerprint: str | None = None
    k: int | None = None
    lam: float | None = None
    r_mode: str | None = None
    score: str | None = None  # the ranking score's name (e.g. "paper": p_se * exp(lam * r))
    limit: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # method-specific settings (window sizes, ...)

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in dataclasses.asdict(self).items() if k != "extra"}
        d.update(self.extra)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunMeta:
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        d = dict(d)
        if "lambda" in d and "lam" not in d:  # older writers
            d["lam"] = d.pop("lambda")
        known = {k: d.pop(k) for k in list(d) if k in names}
        known.setdefault("method", "")
        return cls(**known, extra=d)


@dataclass
class GroundTruth:
    """One labelled moment of a query."""

    query_id: str
    motion_id: int
    start_s: float
    end_s: float
    text: str


@dataclass
class Run:
    """A run file's rows (in file order) and its metadata."""

    rows: list[RunRow]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def run_meta(self) -> RunMeta:
        return RunMeta.from_dict(self.meta)

    def by_query(self) -> dict[str, list[RunRow]]:
        """query_id -> its rows sorted by rank (queries in first-seen order)."""
        return group_run(self.rows)


def group_run(rows: Iterable[RunRow]) -> dict[str, list[RunRow]]:
    """query_id -> rows sorted by rank (queries in first-seen order)."""
    out: dict[str, list[RunRow]] = {}
    for row in rows:
        out.setdefault(row.query_id, []).append(row)
    for lst in out.values():
        lst.sort(key=lambda x: x.rank)
    return out


def group_truth(truth: Iterable[GroundTruth]) -> dict[str, list[GroundTruth]]:
    """query_id -> its ground-truth moments (queries in first-seen order)."""
    out: dict[str, list[GroundTruth]] = {}
    for g in truth:
        out.setdefault(g.query_id, []).append(g)
    return out


def rows_from_moments(query_id: str, query: str, moments: Sequence[Moment]) -> list[RunRow]:
    """Run rows for one query from the search's ranked moments (rank = position + 1)."""
    return [
        RunRow(query_id=str(query_id), query=query, motion_id=int(m.motion_id), start_s=float(m.start_s),
               end_s=float(m.end_s), rank=i + 1, score=float(m.score), p_se=_opt_float(m.p_se),
               r=_opt_float(m.r))
        for i, m in enumerate(moments)
    ]


# ---------------------------------------------------------------------------------------------- writing
def _format(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".jsonl"):
        return "jsonl"
    if name.endswith(".tsv"):
        return "tsv"
    raise CorpusError(str(path), "unknown run/ground-truth format: the file name must end in .jsonl or .tsv")


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)
    return str(v)


def _encode(records: list[dict[str, Any]], fields: Sequence[str], fmt: str, meta: dict[str, Any] | None) -> str:
    buf = io.StringIO()
    if fmt == "jsonl":
        if meta:
            buf.write(json.dumps({"meta": meta}, ensure_ascii=False, allow_nan=False) + "\n")
        for rec in records:
            buf.write(json.dumps(rec, ensure_ascii=False, allow_nan=False) + "\n")
        return buf.getvalue()
    if meta:
        buf.write(_META_TSV_PREFIX + json.dumps(meta, ensure_ascii=False, allow_nan=False) + "\n")
    w = csv.writer(buf, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    w.writerow(fields)
    for rec in records:
        w.writerow([_cell(rec[k]) for k in fields])
    return buf.getvalue()


def write_run(path: str | os.PathLike, rows: Iterable[RunRow], meta: RunMeta | dict[str, Any] | None = None) -> Path:
    """Write a run (.jsonl or .tsv by suffix), atomically; rows are validated first."""
    path = Path(path)
    if isinstance(meta, RunMeta):
        meta = meta.to_dict()
    fmt = _format(path)
    rows = list(rows)
    _check_run(rows, str(path))
    recs = [{k: getattr(r, k) for k in RUN_FIELDS} for r in rows]
    _atomic_write(path, _encode(recs, RUN_FIELDS, fmt, meta))
    log.info("wrote %d run rows to %s", len(rows), path)
    return path


def write_ground_truth(path: str | os.PathLike, truth: Iterable[GroundTruth]) -> Path:
    """Write ground-truth moments (.jsonl or .tsv by suffix), atomically."""
    path = Path(path)
    fmt = _format(path)
    truth = list(truth)
    for i, g in enumerate(truth):
        _check_span(g.start_s, g.end_s, f"{path}: ground truth {i} (query {g.query_id!r})")
    recs = [{k: getattr(g, k) for k in TRUTH_FIELDS} for g in truth]
    _atomic_write(path, _encode(recs, TRUTH_FIELDS, fmt, None))
    return path


# ---------------------------------------------------------------------------------------------- reading
def _records(path: Path, fields: Sequence[str]) -> tuple[list[tuple[int, dict[str, Any]]], dict[str, Any]]:
    """(line number, raw record) pairs and metadata; raw values are str (TSV) or JSON values."""
    fmt = _format(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise CorpusError(str(path), f"cannot read: {e}") from e
    meta: dict[str, Any] = {}
    out: list[tuple[int, dict[str, Any]]] = []
    if fmt == "jsonl":
        for ln, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise CorpusError(f"{path}:{ln}", f"not valid JSON: {e}") from e
            if not isinstance(obj, dict):
                raise CorpusError(f"{path}:{ln}", "each line must be a JSON object")
            if set(obj) == {"meta"}:
                if out or meta:
                    raise CorpusError(f"{path}:{ln}", "a meta line is only allowed as the first line")
                if not isinstance(obj["meta"], dict):
                    raise CorpusError(f"{path}:{ln}", "meta must be a JSON object")
                meta = obj["meta"]
                continue
            out.append((ln, obj))
        return out, meta
    lines = text.splitlines(keepends=True)
    first = 0
    if lines and lines[0].startswith(_META_TSV_PREFIX):
        try:
            meta = json.loads(lines[0][len(_META_TSV_PREFIX):])
        except json.JSONDecodeError as e:
            raise CorpusError(f"{path}:1", f"meta line is not valid JSON: {e}") from e
        first = 1
    reader = csv.reader(io.StringIO("".join(lines[first:])), delimiter="\t")
    header: list[str] | None = None
    for rec in reader:
        ln = reader.line_num + first
        if header is None:
            header = rec
            missing = [k for k in fields if k not in header]
            if missing:
                raise CorpusError(f"{path}:{ln}", f"header lacks column(s) {missing}; expected {list(fields)}")
            continue
        if not rec or (len(rec) == 1 and not rec[0].strip()):
            continue
        if len(rec) != len(header):
            raise CorpusError(f"{path}:{ln}", f"{len(rec)} cells but the header has {len(header)}")
        out.append((ln, dict(zip(header, rec))))
    if header is None:
        raise CorpusError(str(path), "empty TSV file: no header line")
    return out, meta


def _get(rec: dict[str, Any], key: str, where: str) -> Any:
    if key not in rec:
        raise CorpusError(where, f"missing field {key!r}")
    return rec[key]


def _as_str(v: Any, key: str, where: str, allow_empty: bool = False) -> str:
    if isinstance(v, bool) or not isinstance(v, (str, int)):
        raise CorpusError(where, f"{key} must be a string, got {v!r}")
    s = str(v)
    if not s and not allow_empty:
        raise CorpusError(where, f"{key} is empty")
    return s


def _as_int(v: Any, key: str, where: str) -> int:
    if isinstance(v, bool):
        raise CorpusError(where, f"{key} must be an integer, got {v!r}")
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str):
        try:
            return int(v.strip())
        except ValueError:
            pass
    raise CorpusError(where, f"{key} must be an integer, got {v!r}")


def _as_float(v: Any, key: str, where: str) -> float:
    if isinstance(v, bool):
        raise CorpusError(where, f"{key} must be a number, got {v!r}")
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise CorpusError(where, f"{key} must be a number, got {v!r}") from None
    if not math.isfinite(x):
        raise CorpusError(where, f"{key} must be finite, got {v!r}")
    return x


def _opt_float(v: Any, key: str = "value", where: str = "") -> float | None:
    if v is None or (isinstance(v, str) and not v.strip()):
        return None
    return _as_float(v, key, where)


def _check_span(start_s: float, end_s: float, where: str) -> None:
    if not (math.isfinite(start_s) and math.isfinite(end_s)):
        raise CorpusError(where, f"non-finite span [{start_s}, {end_s}]")
    if start_s > end_s:
        raise CorpusError(where, f"reversed span: start_s={start_s} > end_s={end_s}")


def _check_run(rows: Sequence[RunRow], where: str) -> None:
    seen: set[tuple[str, int]] = set()
    for i, r in enumerate(rows):
        w = f"{where}: row {i} (query {r.query_id!r}, rank {r.rank})"
        _check_span(r.start_s, r.end_s, w)
        if r.rank < 1:
            raise CorpusError(w, f"rank must be >= 1, got {r.rank}")
        if not math.isfinite(r.score):
            raise CorpusError(w, f"score must be finite, got {r.score}")
        key = (r.query_id, r.rank)
        if key in seen:
            raise CorpusError(w, "duplicate rank for this query")
        seen.add(key)


def read_run(path: str | os.PathLike) -> Run:
    """Read and validate a run file (.jsonl or .tsv)."""
    path = Path(path)
    recs, meta = _records(path, RUN_FIELDS)
    rows: list[RunRow] = []
    seen: dict[tuple[str, int], int] = {}
    for ln, rec in recs:
        w = f"{path}:{ln}"
        row = RunRow(
            query_id=_as_str(_get(rec, "query_id", w), "query_id", w),
            query=_as_str(_get(rec, "query", w), "query", w, allow_empty=True),
            motion_id=_as_int(_get(rec, "motion_id", w), "motion_id", w),
            start_s=_as_float(_get(rec, "start_s", w), "start_s", w),
            end_s=_as_float(_get(rec, "end_s", w), "end_s", w),
            rank=_as_int(_get(rec, "rank", w), "rank", w),
            score=_as_float(_get(rec, "score", w), "score", w),
            p_se=_opt_float(rec.get("p_se"), "p_se", w),
            r=_opt_float(rec.get("r"), "r", w),
        )
        _check_span(row.start_s, row.end_s, w)
        if row.rank < 1:
            raise CorpusError(w, f"rank must be >= 1, got {row.rank}")
        key = (row.query_id, row.rank)
        if key in seen:
            raise CorpusError(w, f"duplicate rank {row.rank} for query {row.query_id!r} (first on line {seen[key]})")
        seen[key] = ln
        rows.append(row)
    return Run(rows=rows, meta=meta)


def read_ground_truth(path: str | os.PathLike) -> list[GroundTruth]:
    """Read and validate a ground-truth file (.jsonl or .tsv)."""
    path = Path(path)
    recs, _ = _records(path, TRUTH_FIELDS)
    out: list[GroundTruth] = []
    for ln, rec in recs:
        w = f"{path}:{ln}"
        g = GroundTruth(
            query_id=_as_str(_get(rec, "query_id", w), "query_id", w),
            motion_id=_as_int(_get(rec, "motion_id", w), "motion_id", w),
            start_s=_as_float(_get(rec, "start_s", w), "start_s", w),
            end_s=_as_float(_get(rec, "end_s", w), "end_s", w),
            text=_as_str(_get(rec, "text", w), "text", w, allow_empty=True),
        )
        _check_span(g.start_s, g.end_s, w)
        out.append(g)
    return out
