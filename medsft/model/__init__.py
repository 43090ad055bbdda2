"""The base model: loading in 4 bits, chat templates, attention, kernels."""
