"""Dataset sources: each lists its images (paths or bytes), labels, tags and split."""
