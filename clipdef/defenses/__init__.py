"""Defenses: fine-tuning defenses of CLIP (FT, CleanCLIP, CleanerCLIP) and CGD for supervised classifiers."""
