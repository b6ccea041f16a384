"""Training: tokenizer and model bootstrap, continued pre-training, LoRA SFT (pure, no Dagster imports)."""
