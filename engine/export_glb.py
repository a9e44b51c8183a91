"""GLB export (glTF 2.0 binary, through `pygltflib`): a clip as an animated joint hierarchy.

The file holds the canonical SMPL 22-joint skeleton in metres, y up (glTF's own units and axes):

- one node per joint, named as in `engine.corpus.skeleton`, children as `PARENTS`; each node's
  `translation` is its rest offset from its parent (the BVH export's offsets, `engine.export.bvh_pose`),
  its rest `rotation` the identity (the T-pose of the BVH export); the root node's rest translation is the
  clip's first pelvis position;
- a skin over the 22 joint nodes (inverse bind matrices of that rest pose), so that importers that build
  armatures from skins (Blender) make 22 bones; there is no mesh;
- one animation, named after the clip, sampled at the clip's fps (sample k at k / fps s, LINEAR): per
  joint the local rotation (unit quaternion x, y, z, w; the BVH export's rotations, signs kept continuous
  from frame to frame) and the root's translation;
- the clip's identity in ``scenes[0].extras`` (motion id, name, source, fps, start/end seconds and frames).

Forward kinematics over the nodes and the samples reproduces the clip's joints up to the BVH encoding's
error (`BvhPose.max_error_m`, ~1e-6 m for canonical motions) plus float32 rounding.
"""

from __future__ import annotations

import logging

import numpy as np
import pygltflib
from scipy.spatial.transform import Rotation

from engine.corpus.skeleton import JOINT_NAMES, N_JOINTS, PARENTS
from engine.export import CHILDREN, WARN_ERROR_M, Clip, _euler_zyx_to_mat, bvh_pose

MEDIA_TYPE = "model/gltf-binary"
GENERATOR = "motion-search-engine (engine/export_glb.py)"
ROOT = PARENTS.index(-1)

log = logging.getLogger(__name__)


def _continuous(quat: np.ndarray) -> np.ndarray:
    """(F, J, 4) quaternions with each frame's sign chosen closest to the previous frame's."""
    q = quat.copy()
    for f in range(1, q.shape[0]):
        flip = np.sum(q[f] * q[f - 1], axis=-1) < 0  # (J,)
        q[f, flip] *= -1
    return q


def glb_arrays(clip: Clip) -> dict[str, np.ndarray]:
    """What the GLB stores, as float32 arrays: ``times_s`` (F,), ``rotations`` (F, 22, 4) local xyzw,
    ``root_m`` (F, 3), ``offsets_m`` (22, 3) rest offsets, and the encoding's ``max_error_m`` (0-d)."""
    pose = bvh_pose(clip.joints)
    local = _euler_zyx_to_mat(pose.euler_deg)  # (F, 22, 3, 3)
    n_f = local.shape[0]
    quat = Rotation.from_matrix(local.reshape(-1, 3, 3)).as_quat().reshape(n_f, N_JOINTS, 4)  # x, y, z, w
    return {
        "times_s": (np.arange(n_f, dtype=np.float64) / clip.fps).astype(np.float32),
        "rotations": _continuous(quat).astype(np.float32),
        "root_m": pose.root_m.astype(np.float32),
        "offsets_m": pose.offsets_m.astype(np.float32),
        "max_error_m": np.asarray(pose.max_error_m),
    }


class _Blob:
    """The one binary buffer: appends float32 arrays as buffer views + accessors of a GLTF2."""

    def __init__(self, gltf: pygltflib.GLTF2):
        self.gltf = gltf
        self.parts: list[bytes] = []
        self.size = 0

    def add(self, arr: np.ndarray, kind: str, minmax: bool = False) -> int:
        data = np.ascontiguousarray(arr, dtype="<f4")
        raw = data.tobytes()
        self.gltf.bufferViews.append(pygltflib.BufferView(buffer=0, byteOffset=self.size, byteLength=len(raw)))
        width = {pygltflib.SCALAR: 1, pygltflib.VEC3: 3, pygltflib.VEC4: 4, pygltflib.MAT4: 16}[kind]
        flat = data.reshape(-1, width)
        acc = pygltflib.Accessor(bufferView=len(self.gltf.bufferViews) - 1, byteOffset=0,
                                 componentType=pygltflib.FLOAT, count=int(flat.shape[0]), type=kind)
        if minmax:
            acc.min = [float(v) for v in flat.min(axis=0)]
            acc.max = [float(v) for v in flat.max(axis=0)]
        self.gltf.accessors.append(acc)
        self.parts.append(raw)
        self.size += len(raw)  # float32 data: every view stays 4-byte aligned
        return len(self.gltf.accessors) - 1

    def finish(self) -> None:
        blob = b"".join(self.parts)
        self.gltf.buffers = [pygltflib.Buffer(byteLength=len(blob))]
        self.gltf.set_binary_blob(blob)


def to_glb(clip: Clip) -> bytes:
    """The clip as a GLB file (see the module docstring)."""
    arrays = glb_arrays(clip)
    err = float(arrays["max_error_m"])
    if err > WARN_ERROR_M:
        log.warning(
            "motion %s (%r): GLB pose differs from the joints by up to %.4f m (bone lengths or the "
            "pelvis/spine3 bone groups vary across frames)", clip.motion_id, clip.name, err)
    offsets = arrays["offsets_m"].astype(np.float64)
    root0 = arrays["root_m"][0].astype(np.float64)

    gltf = pygltflib.GLTF2(asset=pygltflib.Asset(version="2.0", generator=GENERATOR))
    for j in range(N_JOINTS):
        translation = root0 if PARENTS[j] < 0 else offsets[j]
        gltf.nodes.append(pygltflib.Node(name=JOINT_NAMES[j], children=list(CHILDREN[j]),
                                         translation=[float(v) for v in translation],
                                         rotation=[0.0, 0.0, 0.0, 1.0]))
    gltf.scenes = [pygltflib.Scene(name=clip.name, nodes=[ROOT], extras={
        "motion_id": clip.motion_id, "name": clip.name, "source": clip.source, "fps": clip.fps,
        "start_s": round(clip.start_s, 6), "end_s": round(clip.end_s, 6), "start_frame": clip.start_frame,
        "end_frame": clip.end_frame, "n_frames": clip.n_frames, "units": "m", "up_axis": "y",
        "skeleton": "smpl22"})]
    gltf.scene = 0

    blob = _Blob(gltf)
    # Rest pose: identity rotations, so joint j's bind transform is a translation to its rest position.
    rest = np.zeros((N_JOINTS, 3))
    for j, p in enumerate(PARENTS):
        rest[j] = root0 if p < 0 else rest[p] + offsets[j]
    inverse_bind = np.tile(np.eye(4), (N_JOINTS, 1, 1))
    inverse_bind[:, :3, 3] = -rest
    ibm = blob.add(np.swapaxes(inverse_bind, -1, -2), pygltflib.MAT4)  # glTF matrices are column-major
    gltf.skins = [pygltflib.Skin(name="smpl22", joints=list(range(N_JOINTS)), skeleton=ROOT,
                                 inverseBindMatrices=ibm)]

    times = blob.add(arrays["times_s"], pygltflib.SCALAR, minmax=True)  # the spec requires min/max here
    anim = pygltflib.Animation(name=f"{clip.name} {clip.start_s:.2f}-{clip.end_s:.2f}s")
    for j in range(N_JOINTS):
        out = blob.add(arrays["rotations"][:, j], pygltflib.VEC4)
        anim.samplers.append(pygltflib.AnimationSampler(input=times, output=out, interpolation=pygltflib.ANIM_LINEAR))
        anim.channels.append(pygltflib.AnimationChannel(
            sampler=len(anim.samplers) - 1, target=pygltflib.AnimationChannelTarget(node=j, path="rotation")))
    out = blob.add(arrays["root_m"], pygltflib.VEC3)
    anim.samplers.append(pygltflib.AnimationSampler(input=times, output=out, interpolation=pygltflib.ANIM_LINEAR))
    anim.channels.append(pygltflib.AnimationChannel(
        sampler=len(anim.samplers) - 1, target=pygltflib.AnimationChannelTarget(node=ROOT, path="translation")))
    gltf.animations = [anim]
    blob.finish()
    return b"".join(gltf.save_to_bytes())
