"""One run: the rule book (runspec), the assembly, the trainer, resume and preemption, the commands."""
