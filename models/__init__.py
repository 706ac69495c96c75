"""Models: loading Hugging Face VLM checkpoints (+LoRA), the embedded tiny model, FSDP2 sharding, attention backends."""
