"""A trained LoRA adapter: loading it onto its base model, merging it."""
