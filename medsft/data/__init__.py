"""Training data: sources, formats, mixtures, splits, tokenized rows and their cache."""
