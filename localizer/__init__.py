"""The MLP localizer (Motion Label Prior): text + one motion -> the moment the text describes.

- `localizer.model`: `MLPConfig`, `MLPLocalizer` (encode_motion / forward / localize), `mlp_loss`.
- `localizer.config`: `LocalizerConfig`, `TrainConfig`, `PRESETS`, `VARIANTS`, `make_config`.
- `localizer.train`: `train_localizer`, `load_localizer`, `evaluate`, `time_steps`.
- `localizer.infer`: `Localizer` (encode_motions, localize, distributions, fingerprint), `EncodedMotion`,
  `LocalizedSpan`.
- `localizer.fingerprint`: `resolve_checkpoint(run_dir)`, `localizer_fingerprint(run_dir)` (checkpoint sha256).
- `localizer.outputs`: `EncodedMotion`, `LocalizedSpan`, `SpanDistributions` and `decode_spans`, the one
  decoding of both backends (no torch).
- `localizer.onnx_infer` / `localizer.onnx_export`: the query-dependent part as an ONNX graph (`OnnxLocalizer`,
  no torch) and its export, checked against torch.
- `localizer.decode`: exact joint decoding, top-m with temporal NMS, snippet <-> seconds.
- `localizer.data`, `localizer.snippets`: pairs, ground truth, text cache, batches; Joint Recover + pooling.

Imports stay lazy here so `import localizer` costs nothing.
"""
