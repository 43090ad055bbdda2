"""The embedded default: a tiny random-init model and generated rows, for runs with no hub."""
