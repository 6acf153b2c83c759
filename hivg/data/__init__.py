"""Grounding data: split files -> validated Parquet manifests -> canvas tensors.

  splits      our dataset names, published folders, splits and row formats
  records     read and validate published split files (torch.load weights_only)
  manifest    Parquet manifests: manifest_path, read_manifest, list_splits
  shards      packed image bytes in Parquet row groups (local or S3)
  synthetic   the generated shapes benchmark; baselines: its trivial baselines
  prepare     prepare / prepare_dataset / prepare_synthetic / ensure_synthetic
  transforms  letterbox, augmentation, canvas_to_image_boxes
  tokens      open_clip tokenisation
  dataset     GroundingDataset and build_dataset (what the trainer uses)
Nothing is imported here, so `import hivg.data.manifest` stays light.
"""
