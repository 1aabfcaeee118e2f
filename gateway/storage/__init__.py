"""Where files are kept: the blob store (local folder or S3)."""
