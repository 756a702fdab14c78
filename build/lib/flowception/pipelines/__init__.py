"""Data path: WebDataset video shards on disk or S3, read by Ray Data, batched by frame budget."""
