"""Text-motion retrieval model and the FAISS chunk index.

- `indexer.model`: RetrievalModel (dual encoder), drop_triple_loss, load_retrieval(run_dir)
- `indexer.train`: train_retrieval(store, run_dir, config), evaluate_retrieval(model, store, split)
- `indexer.chunks`: plan_chunks(motion_id, n_frames, fps, window_s, stride_s), the chunk SQL table
- `indexer.build`: build_index / rebuild_index / add_to_index / remove_from_index / sync_index
  (each makes one `indexer.stages.BuildRequest`); `indexer.stages`: the build stages and the files they write
- `indexer.index`: open_index(index_dir) -> ChunkIndex (the read path); `indexer.verify`: verify(index_dir)
- `indexer.manifest`: the version layout, Manifest, LocalizerRef, checksums, CURRENT; `indexer.versions`:
  index_info, prune_versions, the build lock
- `indexer.query_models`: the version's exported ONNX query models (sidecar, checks, `OnnxRetrieval`)
- `indexer.config` (IndexConfig), `indexer.arrow_io` (Arrow files), `indexer.faiss_index` (FAISS, exact
  top-k, recall), `indexer.embed` (EmbedBackend), `indexer.inputs` (corpus and model of a build),
  `indexer.ray_backend` (Ray Data embedding)
- `indexer.cli`: make_index_app(motion_feature_factory) (`engine index ...`), and the `engine train retrieval`
  and `engine eval retrieval` command bodies

Nothing is imported here, so `import indexer` stays cheap.
"""
