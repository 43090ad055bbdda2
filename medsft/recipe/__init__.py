"""The recipe: its sections, their SFTConfig fields, the files and `--set` values it is read from."""
