"""Memory per device: the model of what a step holds, the preflight, the automatic micro-batch."""
