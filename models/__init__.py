"""Models: loading Hugging Face VLM checkpoints, the embedded tiny model, FSDP2 sharding, attention backends, export."""
