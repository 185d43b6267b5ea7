"""Datasets as Parquet shards and the Ray Data stream of augmented views."""
