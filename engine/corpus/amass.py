"""Importer: AMASS `.npz` sequences (SMPL+H parameters) -> canonical 22 joints, through `smplx`.

An AMASS file (SMPL+H G release, as BABEL and HumanML3D use) holds:

    poses            (T, 156)  axis-angle: root 3, body 63 (21 joints), hands 90
    trans            (T, 3)    metres, z up
    betas            (16,)     shape (the first `num_betas` of the body model are used, 10 for SMPL+H)
    gender           'male' | 'female' | 'neutral'
    mocap_framerate  e.g. 120.0   (SMPL-X G files: `mocap_frame_rate`, poses (T, 165), and
                                   `surface_model_type` 'smplx')

Frames are resampled to `fps` (default 20) by nearest frame: t_k = k / fps. Joint positions come from
the body model (joints 0..21 of SMPL+H / SMPL-X are the canonical SMPL body joints) and are turned from
AMASS's z-up frame into the canonical y-up frame as HumanML3D does, (x, y, z) -> (-x, z, y) (a proper
rotation). The body model is not shipped: the user downloads it (see data/README.md) and passes the
folder. Accepted layouts, per gender (falling back to neutral):

    <dir>/smplh/SMPLH_MALE.pkl|npz      (smplx's layout; also <dir>/SMPLH_MALE.pkl|npz)
    <dir>/smplh/male/model.npz          (AMASS / human_body_prior layout; also <dir>/male/model.npz)
    a model file given directly

(the same with smplx/SMPLX_* for SMPL-X sequences). Hand PCA fields missing from a model file are
filled with zeros: hand poses do not move the 22 body joints.
"""

from __future__ import annotations

import contextlib
import io
import logging
import pickle
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.corpus.importers import as_motion_array, report_bad
from engine.corpus.skeleton import FPS, N_JOINTS
from engine.corpus.types import CorpusError, Motion

log = logging.getLogger(__name__)

BATCH_FRAMES = 512
SKIP_NAMES = ("shape.npz",)  # per-subject shape files in AMASS folders: no motion


@dataclass
class AmassSequence:
    """The parameters of one AMASS file."""

    path: Path
    poses: np.ndarray  # (T, 156) SMPL+H or (T, 165) SMPL-X, axis-angle
    trans: np.ndarray  # (T, 3)
    betas: np.ndarray  # (n_betas,)
    gender: str
    mocap_fps: float
    model_type: str  # "smplh" | "smplx"

    @property
    def n_frames(self) -> int:
        return int(self.poses.shape[0])

    @property
    def duration_s(self) -> float:
        return self.n_frames / self.mocap_fps


def _scalar_str(v: Any) -> str:
    if isinstance(v, np.ndarray):
        v = v.item() if v.size == 1 else v.tolist()
    if isinstance(v, bytes):
        v = v.decode("utf-8", "replace")
    return str(v).strip().lower()


def _open_npz(path: Path) -> Any:
    if not path.is_file():
        raise CorpusError(str(path), "file not found")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise CorpusError(str(path), f"unreadable .npz file: {e}") from e


def _fps_of(data: Any, path: Path) -> float:
    for k in ("mocap_framerate", "mocap_frame_rate"):
        if k in data.files:
            try:
                fps = float(np.asarray(data[k]).item())
            except (TypeError, ValueError) as e:
                raise CorpusError(str(path), f"invalid {k}: {e}") from e
            if not (np.isfinite(fps) and fps > 0):
                raise CorpusError(str(path), f"invalid {k} {fps!r}")
            return fps
    raise CorpusError(str(path), "no mocap_framerate / mocap_frame_rate")


def read_mocap_fps(path: Path | str) -> float:
    """The capture rate stored in an AMASS file."""
    p = Path(path)
    with _open_npz(p) as data:
        return _fps_of(data, p)


def read_amass_npz(path: Path | str) -> AmassSequence:
    """Parse and check an AMASS `.npz`; CorpusError naming the file and the problem."""
    p = Path(path)
    with _open_npz(p) as data:
        missing = [k for k in ("poses", "trans") if k not in data.files]
        if missing:
            raise CorpusError(
                str(p),
                f"not an AMASS motion file: missing {', '.join(missing)} "
                f"(keys: {', '.join(sorted(data.files))})",
            )
        fps = _fps_of(data, p)
        poses = np.asarray(data["poses"], dtype=np.float64)
        trans = np.asarray(data["trans"], dtype=np.float64)
        betas = (
            np.asarray(data["betas"], dtype=np.float64).reshape(-1) if "betas" in data.files else np.zeros(10)
        )
        gender = _scalar_str(data["gender"]) if "gender" in data.files else "neutral"
        surface = _scalar_str(data["surface_model_type"]) if "surface_model_type" in data.files else ""
    if poses.ndim != 2 or poses.shape[1] not in (156, 165):
        raise CorpusError(
            str(p), f"poses have shape {poses.shape}, expected (T, 156) SMPL+H or (T, 165) SMPL-X"
        )
    if trans.shape != (poses.shape[0], 3):
        raise CorpusError(str(p), f"trans has shape {trans.shape}, expected ({poses.shape[0]}, 3)")
    if poses.shape[0] < 2:
        raise CorpusError(str(p), f"zero-length motion ({poses.shape[0]} frames)")
    for name, arr in (("poses", poses), ("trans", trans)):
        bad = ~np.isfinite(arr).all(axis=1)
        if bad.any():
            raise CorpusError(
                str(p), f"NaN/inf {name} in {int(bad.sum())} frames (first: frame {int(np.argmax(bad))})"
            )
    if not np.isfinite(betas).all():
        raise CorpusError(str(p), "NaN/inf betas")
    gender = gender if gender in ("male", "female", "neutral") else "neutral"
    model_type = "smplx" if surface.startswith("smplx") or poses.shape[1] == 165 else "smplh"
    return AmassSequence(
        path=p, poses=poses, trans=trans, betas=betas, gender=gender, mocap_fps=fps, model_type=model_type
    )


def resample_indices(n_frames: int, src_fps: float, dst_fps: float) -> np.ndarray:
    """Indices of the source frames nearest to t_k = k / dst_fps, for every t_k inside the sequence."""
    if n_frames <= 0:
        return np.zeros(0, dtype=np.int64)
    duration_s = (n_frames - 1) / src_fps
    n_out = int(np.floor(duration_s * dst_fps + 1e-9)) + 1
    idx = np.rint(np.arange(n_out) * (src_fps / dst_fps)).astype(np.int64)
    return np.clip(idx, 0, n_frames - 1)


def zup_to_canonical(joints: np.ndarray) -> np.ndarray:
    """AMASS z-up positions (..., 3) -> canonical y-up, as HumanML3D: (x, y, z) -> (-x, z, y)."""
    out = np.empty_like(joints)
    out[..., 0] = -joints[..., 0]
    out[..., 1] = joints[..., 2]
    out[..., 2] = joints[..., 1]
    return out


def _import_smplx() -> Any:
    try:
        import smplx
    except ImportError as e:
        raise CorpusError(
            "smplx",
            f"the AMASS importer needs the `smplx` package (pip install smplx) and an SMPL+H body model: {e}",
        ) from e
    return smplx


def body_model_candidates(body_model: Path, model_type: str, gender: str) -> list[Path]:
    """Model files tried for one gender, in order (see the module docstring)."""
    if body_model.is_file():
        return [body_model]
    up = model_type.upper()
    out = []
    for g in dict.fromkeys((gender, "neutral")):
        for base in (body_model / model_type, body_model):
            for ext in ("npz", "pkl"):
                out.append(base / f"{up}_{g.upper()}.{ext}")
            out.append(base / g / "model.npz")
    return out


def _load_model_data(path: Path) -> dict[str, Any]:
    try:
        if path.suffix == ".pkl":
            with open(path, "rb") as f:
                data = pickle.load(f, encoding="latin1")
            return dict(data)
        with np.load(path, allow_pickle=True) as z:
            return {k: z[k] for k in z.files}
    except ModuleNotFoundError as e:
        raise CorpusError(
            str(path),
            f"this body model file needs {e.name!r} to unpickle; use the .npz models "
            "(or smplx's tools/clean_ch.py to remove chumpy)",
        ) from e
    except (OSError, ValueError, EOFError, pickle.UnpicklingError) as e:
        raise CorpusError(str(path), f"unreadable body model: {e}") from e


class BodyModels:
    """Body models loaded on demand, one per (model type, gender)."""

    def __init__(self, body_model: Path | str | None):
        if body_model is None:
            raise CorpusError(
                "body model", "no body model path given (the SMPL+H model folder, see data/README.md)"
            )
        self.path = Path(body_model)
        if not self.path.exists():
            raise CorpusError(str(self.path), "body model path does not exist")
        self.smplx = _import_smplx()
        self._models: dict[tuple[str, str], Any] = {}

    def get(self, model_type: str, gender: str) -> Any:
        key = (model_type, gender)
        if key not in self._models:
            cands = body_model_candidates(self.path, model_type, gender)
            file = next((c for c in cands if c.is_file()), None)
            if file is None:
                raise CorpusError(
                    str(self.path),
                    f"no {model_type.upper()} body model for gender {gender!r} "
                    f"(looked for {', '.join(str(c) for c in cands)})",
                )
            data = _load_model_data(file)
            if model_type == "smplh":
                for side in ("l", "r"):
                    data.setdefault(f"hands_components{side}", np.zeros((45, 45)))
                    data.setdefault(f"hands_mean{side}", np.zeros(45))
            struct = self.smplx.utils.Struct(**data)
            cls = self.smplx.SMPLH if model_type == "smplh" else self.smplx.SMPLX
            try:
                with contextlib.redirect_stdout(io.StringIO()):  # smplx prints shape-space warnings
                    model = cls(
                        model_path=str(file),
                        data_struct=struct,
                        gender=gender,
                        use_pca=False,
                        flat_hand_mean=True,
                        num_betas=16,
                        batch_size=1,
                        ext="npz" if file.suffix == ".npz" else "pkl",
                    )
            except Exception as e:  # noqa: BLE001 - any model construction failure names the file
                raise CorpusError(str(file), f"cannot build the {model_type} body model: {e}") from e
            model.eval()
            log.info("body model %s (%s) from %s", model_type, gender, file)
            self._models[key] = model
        return self._models[key]


def smplh_joints(seq: AmassSequence, model: Any, frames: np.ndarray | None = None) -> np.ndarray:
    """(len(frames), 22, 3) body joints in AMASS's z-up frame, metres, from a smplx SMPL+H/SMPL-X model."""
    import torch

    frames = np.arange(seq.n_frames) if frames is None else frames
    n_betas = int(model.num_betas)
    betas = np.zeros(n_betas)
    betas[: min(n_betas, seq.betas.size)] = seq.betas[:n_betas]
    out = np.empty((len(frames), N_JOINTS, 3), dtype=np.float32)
    with torch.no_grad():
        for b0 in range(0, len(frames), BATCH_FRAMES):
            idx = frames[b0 : b0 + BATCH_FRAMES]
            p = torch.as_tensor(seq.poses[idx], dtype=torch.float32)  # (B, 156 | 165)
            n = p.shape[0]
            kw = dict(
                global_orient=p[:, :3],
                body_pose=p[:, 3:66],
                betas=torch.as_tensor(betas, dtype=torch.float32).expand(n, -1),
                transl=torch.as_tensor(seq.trans[idx], dtype=torch.float32),
            )
            if seq.model_type == "smplh":
                kw.update(left_hand_pose=p[:, 66:111], right_hand_pose=p[:, 111:156])
            else:
                kw.update(
                    jaw_pose=p[:, 66:69],
                    leye_pose=p[:, 69:72],
                    reye_pose=p[:, 72:75],
                    left_hand_pose=p[:, 75:120],
                    right_hand_pose=p[:, 120:165],
                    expression=torch.zeros(n, int(getattr(model, "num_expression_coeffs", 10))),
                )
            res = model(**kw, return_verts=True)
            out[b0 : b0 + n] = res.joints[:, :N_JOINTS].numpy()
    return out


def _walk(paths: Sequence[Path | str]) -> list[tuple[Path, Path]]:
    """(file, root for its name) for each .npz given or found under a folder, sorted."""
    out: list[tuple[Path, Path]] = []
    for p in map(Path, paths):
        if p.is_dir():
            for f in sorted(p.rglob("*.npz")):
                if f.name in SKIP_NAMES or f.stem.endswith("_stagei"):
                    continue
                out.append((f, p))
        else:
            out.append((p, p.parent))
    return out


RESAMPLE_MODES = ("nearest", "humanml3d")


def humanml3d_indices(n_frames: int, src_fps: float, target_fps: float = FPS) -> tuple[np.ndarray, float]:
    """HumanML3D's downsampling: every int(src_fps / target_fps)-th frame, at src_fps / step fps.

    This reproduces the timeline of HumanML3D's pose_data/ (the frames index.csv counts), including its
    quirk that rates which are not multiples of 20 give e.g. 20.83 fps (250 Hz) or 29.97 fps (59.94 Hz).
    """
    step = max(1, int(src_fps / target_fps))
    return np.arange(0, n_frames, step), src_fps / step


def iter_amass_motions(
    paths: Sequence[Path | str],
    body_model: Path | str | None,
    fps: float = FPS,
    resample: str = "nearest",
    source: str = "amass",
    split: str | None = None,
    skip_bad: bool = False,
    errors: list[str] | None = None,
) -> Iterator[Motion]:
    """AMASS `.npz` files (or folders walked for them) as motions named `<source>/<path under the folder>`.

    `resample`: "nearest" (exactly `fps`, the nearest source frame to each k / fps) or "humanml3d"
    (HumanML3D's integer step, see `humanml3d_indices`; the motion's fps is then the true rate).
    Raises CorpusError before reading any motion when the body model path is missing or smplx is
    not installed; a bad file (not AMASS, NaN frames, no model for its gender, ...) raises CorpusError
    naming it, or with `skip_bad` is reported into `errors` and skipped.
    """
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if resample not in RESAMPLE_MODES:
        raise ValueError(f"resample must be one of {', '.join(RESAMPLE_MODES)}, got {resample!r}")
    models = BodyModels(body_model)
    for file, root in _walk(paths):
        try:
            yield _amass_motion(file, root, models, fps, resample, source, split)
        except CorpusError as e:
            if not skip_bad:
                raise
            report_bad(e, errors)


def export_joints(
    amass_dir: Path | str,
    body_model: Path | str | None,
    out_dir: Path | str,
    resample: str = "humanml3d",
    overwrite: bool = False,
    skip_bad: bool = False,
    errors: list[str] | None = None,
) -> list[Path]:
    """Write `<out_dir>/<path under amass_dir>.npy` joints (T, 22, 3) for every AMASS file under `amass_dir`.

    The result is a motions folder for the BABEL and HumanML3D importers (a stand-in for HumanML3D's
    pose_data/, already in the canonical frame; with the default `resample="humanml3d"` its frames are
    the ones index.csv counts). Existing files are kept unless `overwrite`. Returns the files written.
    """
    amass_dir, out = Path(amass_dir), Path(out_dir)
    if not amass_dir.is_dir():
        raise CorpusError(str(amass_dir), "AMASS folder not found")
    todo = [
        (f, r)
        for f, r in _walk([amass_dir])
        if overwrite or not (out / f.relative_to(r)).with_suffix(".npy").is_file()
    ]
    if not todo:
        return []
    written = []
    for m in iter_amass_motions(
        [f for f, _ in todo], body_model, resample=resample, skip_bad=skip_bad, errors=errors
    ):
        dest = (out / Path(m.path).relative_to(amass_dir)).with_suffix(".npy")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_suffix(".tmp.npy")
        np.save(tmp, m.joints)
        tmp.replace(dest)
        written.append(dest)
    return written


def _amass_motion(
    file: Path, root: Path, models: BodyModels, fps: float, resample: str, source: str, split: str | None
) -> Motion:
    seq = read_amass_npz(file)
    model = models.get(seq.model_type, seq.gender)
    if resample == "humanml3d":
        frames, fps = humanml3d_indices(seq.n_frames, seq.mocap_fps, fps)
    else:
        frames = resample_indices(seq.n_frames, seq.mocap_fps, fps)
    joints = zup_to_canonical(smplh_joints(seq, model, frames))
    arr = as_motion_array(joints, file, layout="joints")
    rel = file.relative_to(root) if file.is_relative_to(root) else Path(file.name)
    name = rel.with_suffix("").as_posix()
    meta = {
        "amass_path": rel.as_posix(),
        "mocap_fps": seq.mocap_fps,
        "gender": seq.gender,
        "model_type": seq.model_type,
        "source_frames": seq.n_frames,
        "resample": resample,
    }
    return Motion(
        name=f"{source}/{name}",
        source=source,
        fps=float(fps),
        joints=arr.joints,
        annotations=[],
        split=split,
        path=str(file),
        meta=meta,
    )
