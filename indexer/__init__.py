"""Text-motion retrieval model and the FAISS chunk index.

- `indexer.model`: RetrievalModel (dual encoder), drop_triple_loss, load_retrieval(run_dir)
- `indexer.train`: train_retrieval(store, run_dir, config), evaluate_retrieval(model, store, split)
- `indexer.chunks`: plan_chunks(motion_id, n_frames, fps, window_s, stride_s), the chunk SQL table
- `indexer.build`: build_index / add_to_index / remove_from_index / sync_index / rebuild_index,
  verify(index_dir), open_index(index_dir) -> ChunkIndex
- `indexer.cli`: the `engine index ...`, `engine train retrieval`, `engine eval retrieval` command bodies

Nothing is imported here, so `import indexer` stays cheap.
"""
