"""Cluster assignments from auxiliary information or faiss k-means, and their statistics."""
