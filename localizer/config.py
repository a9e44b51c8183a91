"""Localizer configuration: training settings, presets (paper / CPU) and variants (MLP, MLP-S, MLPBase, ablations).

A run's whole configuration is one `LocalizerConfig` (model + training + text encoder), written to
``runs/<name>/config.json`` and embedded in every checkpoint so a checkpoint alone can be loaded.

Presets. Seconds per training step (forward + backward + AdamW) on a batch of full-length motions, one
intra-op thread of this 2-core AMD EPYC (avx512_bf16), measured with `time_steps` while other jobs shared
the machine (so +-30 %); fp32 / bf16 autocast:

- ``paper``: d=256, 4 SGPA, 256 snippets, batch 64, 100 epochs, lr 2e-4 (the paper's setting; for a GPU).
  On this CPU: mlp 75 s, mlp-s 16 s per step (fp32), i.e. unusable here.
- ``cpu-base``: d=128, 2 SGPA, 128 snippets, batch 32, 15 epochs, lr 3e-4; 45 min budget.
  mlp 5.4 / 2.3 s, mlp-s 0.75 / 0.61 s: with S-Enc use ``--bf16``; the budget keeps ~5 (fp32) or ~11 (bf16)
  epochs of the demo corpus (76 steps per epoch).
- ``cpu-small``: d=64, 1 SGPA, 64 snippets, batch 32, 20 epochs, lr 5e-4; 45 min budget.
  mlp 0.68 / 0.53 s, mlp-s 0.20 / 0.18 s. Demo corpus (278 training motions, ~2,400 pairs, 76 steps per
  epoch), 20 epochs fp32 with evaluation: mlp 20 min, mlp-s 5 min, mlpbase 3.4 min.
- ``tiny``: d=32, 1 SGPA, 32 snippets: tests and smoke runs (mlp 0.085 s, mlp-s 0.03 s per step).

With a time budget, training measures its first steps and, when the planned epochs would not fit, lowers
the number of epochs so that they do (the LR decay and the perturbation schedule follow the new length).

Variants (`VARIANTS`), after the paper (Sec. IV-C, Tables IV and VI):

- ``mlp``: full model. ``mlp-s``: without S-Enc (a linear layer over the 22 x 12 input). ``mlpbase``:
  without S-Enc, with the plain sequence matcher (Eq. 4, no label prior, no PE) and without the recovering part.
- Table IV on MLP-S: ``mlp-s-no-lpm`` (no LP-Matcher prior), ``mlp-s-no-lpp`` (= ``mlp-s-no-rec``, no recovering part).
- Table VI on MLP-S: ``mlp-s-no-align``, ``mlp-s-no-perturb`` (alpha = 0), ``mlp-s-pe-none``, ``mlp-s-pe-before``.
- ``mlp-unshared``: separate SGPA blocks for motion and text.
Recipes (`RECIPES`: today, official, fixed) change training settings on top of preset and variant.
Any field can also be overridden (`make_config(..., overrides={"model.flip_rate": 0.2})`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from localizer.decode import MaxSpan
from localizer.model import MLPConfig


@dataclass
class TrainConfig:
    epochs: int = 100
    batch_size: int = 64
    lr: float = 2e-4
    # "step": lr *= lr_decay once lr_decay_at of the planned steps are done (per iteration, like the official
    # StepLR; official gamma 0.5, this project's first recipe 0.1); "cosine": half-cosine from lr to
    # lr * lr_min_factor over the planned steps.
    lr_schedule: str = "step"
    lr_decay_at: float = 0.5  # fraction of the planned steps after which lr *= lr_decay
    lr_decay: float = 0.1
    lr_min_factor: float = 0.0  # cosine: final lr = lr * lr_min_factor
    align_ramp: float = 0.0  # lambda_align rises linearly from 0 over this fraction of the planned steps (0 = off)
    # Learned maximum span, stored in the checkpoint (LocalizerConfig.max_span) and used by default at decoding:
    # this quantile of the training spans ("seconds", "fraction" of the motion, or "auto": the tighter); None = off.
    max_span_quantile: float | None = 0.95
    max_span_unit: str = "auto"
    # In-batch negative motions per pair (0 = off): the span loss uses shared normalisation over the positive's
    # and the negatives' positions (CONQUER), so start / end logits become comparable across motions.
    negatives: int = 0
    text_variants: bool = False  # each step draws the pair's sentence among its wordings (labelled corpora)
    # Pairs of a content weigh n ** -label_balance, n being that content's count in its corpus (0 = off, 1 =
    # every content drawn equally often): rare contents are learned too (engine.corpus.mix.group_weights).
    label_balance: float = 0.0
    weight_decay: float = 0.01  # not on biases, norms or adjacencies
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0
    seed: int = 0
    time_budget_min: float | None = None  # fit the epochs into this many minutes (measured on the first steps)
    ckpt_every_steps: int = 200  # also at every epoch end
    eval_batch_size: int = 64
    val_max_pairs: int | None = 2000  # evaluate on at most this many validation pairs (fixed subset)
    select_metric: str = "miou"  # "miou", "r1_iou0.5", "r1_iou0.7"
    bf16: bool = False  # bf16 autocast (CPU or CUDA)
    text_encoder: str = "minilm"  # token encoder: "minilm", "glove" or a local HF model directory
    max_tokens: int = 32
    train_split: str = "train"
    val_split: str = "val"

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # JSON gives a list
        if self.select_metric not in ("miou", "r1_iou0.5", "r1_iou0.7", "r1_iou0.9"):
            raise ValueError(f"unknown select_metric {self.select_metric!r}")
        if self.lr_schedule not in ("step", "cosine"):
            raise ValueError(f"lr_schedule must be 'step' or 'cosine', got {self.lr_schedule!r}")
        if self.max_span_unit not in ("auto", "seconds", "fraction"):
            raise ValueError(f"max_span_unit must be 'auto', 'seconds' or 'fraction', got {self.max_span_unit!r}")
        if self.max_span_quantile is not None and not 0.0 < self.max_span_quantile <= 1.0:
            raise ValueError(f"max_span_quantile must lie in (0, 1], got {self.max_span_quantile}")
        if not (math.isfinite(self.label_balance) and self.label_balance >= 0):
            raise ValueError(f"label_balance must be a finite number >= 0, got {self.label_balance}")
        if not 0.0 <= self.align_ramp <= 1.0:
            raise ValueError(f"align_ramp must lie in [0, 1], got {self.align_ramp}")


@dataclass
class LocalizerConfig:
    model: MLPConfig = field(default_factory=MLPConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    preset: str = "custom"
    variant: str = "mlp"
    recipe: str = "today"
    max_span: MaxSpan | None = None  # learned from the training spans when training starts

    def to_dict(self) -> dict[str, Any]:
        d = {"preset": self.preset, "variant": self.variant, "recipe": self.recipe, "model": asdict(self.model),
             "train": asdict(self.train)}
        if self.max_span is not None:
            d["max_span"] = self.max_span.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LocalizerConfig:
        train_known = {f.name for f in fields(TrainConfig)}
        unknown = set(d.get("train", {})) - train_known
        if unknown:
            raise ValueError(f"unknown TrainConfig fields: {sorted(unknown)}")
        return cls(model=MLPConfig.from_dict(d.get("model", {})), train=TrainConfig(**d.get("train", {})),
                   preset=d.get("preset", "custom"), variant=d.get("variant", "mlp"),
                   recipe=d.get("recipe", "today"), max_span=MaxSpan.from_dict(d.get("max_span")))

    def save(self, path: str | Path) -> None:
        p = Path(path)
        tmp = p.with_suffix(p.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2))
        tmp.replace(p)

    @classmethod
    def load(cls, path: str | Path) -> LocalizerConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))


@dataclass
class Preset:
    model: dict[str, Any]
    train: dict[str, Any]
    description: str


PRESETS: dict[str, Preset] = {
    "paper": Preset(
        model=dict(d_model=256, n_heads=4, n_sgpa=4, n_snippets=256, dropout=0.1),
        train=dict(epochs=100, batch_size=64, lr=2e-4, time_budget_min=None),
        description="The paper's setting (d=256, 4 SGPA, 256 snippets, batch 64, 100 epochs); for a GPU.",
    ),
    "cpu-base": Preset(
        model=dict(d_model=128, n_heads=4, n_sgpa=2, n_snippets=128, dropout=0.1),
        train=dict(epochs=15, batch_size=32, lr=3e-4, time_budget_min=45.0),
        description="d=128, 2 SGPA, 128 snippets, batch 32, 15 epochs, lr 3e-4; at most 45 min on a 2-core CPU.",
    ),
    "cpu-small": Preset(
        model=dict(d_model=64, n_heads=4, n_sgpa=1, n_snippets=64, dropout=0.1),
        train=dict(epochs=20, batch_size=32, lr=5e-4, time_budget_min=45.0),
        description="d=64, 1 SGPA, 64 snippets, batch 32, 20 epochs, lr 5e-4; at most 45 min on a 2-core CPU.",
    ),
    "tiny": Preset(
        model=dict(d_model=32, n_heads=2, n_sgpa=1, n_snippets=32, dropout=0.0),
        train=dict(epochs=4, batch_size=16, lr=1e-3, time_budget_min=5.0, ckpt_every_steps=50,
                   val_max_pairs=200),
        description="d=32, 1 SGPA, 32 snippets: tests and smoke runs (minutes).",
    ),
}

VARIANTS: dict[str, dict[str, Any]] = {
    "mlp": {},
    "mlp-s": dict(spatial_encoder=False),
    "mlpbase": dict(spatial_encoder=False, label_prior=False, pos_encoding="none", recovering=False,
                    alignment=False),
    "mlp-s-no-lpm": dict(spatial_encoder=False, label_prior=False, pos_encoding="none"),
    "mlp-s-no-lpp": dict(spatial_encoder=False, recovering=False, alignment=False),
    "mlp-s-no-rec": dict(spatial_encoder=False, recovering=False, alignment=False),
    "mlp-s-no-align": dict(spatial_encoder=False, alignment=False),
    "mlp-s-no-perturb": dict(spatial_encoder=False, perturb_start=0.0, perturb_end=0.0),
    "mlp-s-pe-none": dict(spatial_encoder=False, pos_encoding="none"),
    "mlp-s-pe-before": dict(spatial_encoder=False, pos_encoding="before"),
    "mlp-unshared": dict(shared_tenc=False),
}


# Training recipes, applied after preset and variant (before explicit overrides). "today" is the recipe the
# shipped models were trained with; "official" follows the authors' code (eanson023/MLP): StepLR gamma 0.5 at
# half, label noise by `randint(0, 2)` replacement at rate beta, start + end loss sums; "fixed" adds what the
# localizer-train measurements kept (docs/results/localizer-train.md): S = 128 snippets.
RECIPES: dict[str, dict[str, Any]] = {
    "today": {},
    "official": {"train.lr_decay": 0.5, "model.flip_mode": "replace", "model.loss_reduce": "sum"},
    "fixed": {"train.lr_decay": 0.5, "model.flip_mode": "replace", "model.loss_reduce": "sum",
              "model.n_snippets": 128},
}


def _coerce(value: Any, current: Any) -> Any:
    """Parse CLI strings ("0.2", "true", "none") to the type of the current value."""
    if not isinstance(value, str):
        return value
    low = value.strip().lower()
    if low in ("none", "null"):
        return None
    if isinstance(current, bool):
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"not a boolean: {value!r}")
    if isinstance(current, int):
        return int(value)
    if isinstance(current, float) or current is None:
        try:
            return float(value)
        except ValueError:
            return value
    return value


def make_config(preset: str = "cpu-small", variant: str = "mlp",
                overrides: dict[str, Any] | None = None, recipe: str = "today") -> LocalizerConfig:
    """Preset + variant + recipe + overrides ("model.d_model": 96, "train.epochs": 3, or unqualified names)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {sorted(VARIANTS)}")
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; choose from {sorted(RECIPES)}")
    overrides = {**RECIPES[recipe], **(overrides or {})}
    p = PRESETS[preset]
    model = MLPConfig(**{**p.model, **VARIANTS[variant]})
    train = TrainConfig(**p.train)
    model_fields = {f.name for f in fields(MLPConfig)}
    train_fields = {f.name for f in fields(TrainConfig)}
    m_over: dict[str, Any] = {}
    t_over: dict[str, Any] = {}
    for key, value in overrides.items():
        scope, _, name = key.rpartition(".")
        if scope in ("model", "") and name in model_fields:
            m_over[name] = _coerce(value, getattr(model, name))
        elif scope in ("train", "") and name in train_fields:
            t_over[name] = _coerce(value, getattr(train, name))
        else:
            raise ValueError(f"unknown config field {key!r}")
    return LocalizerConfig(model=replace(model, **m_over), train=replace(train, **t_over), preset=preset,
                           variant=variant, recipe=recipe)
