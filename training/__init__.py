"""LoRA / QLoRA training: datasets, the trainer, and background jobs shared by the UI and the command line."""
