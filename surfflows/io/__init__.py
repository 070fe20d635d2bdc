"""Reference data in and out: reference-set reader and ingest, OC22 download and LMDB frames,
the model registry."""
