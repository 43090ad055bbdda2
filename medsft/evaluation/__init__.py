"""Generation, answer extraction, benchmarks and their reports."""
