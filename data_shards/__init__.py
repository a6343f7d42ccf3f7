"""WebDataset shard writers for the datasets of the paper (DESIGN §3)."""
