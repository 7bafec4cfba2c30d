"""Distillation: losses by name, combined per stage from config (torchdistill style)."""
