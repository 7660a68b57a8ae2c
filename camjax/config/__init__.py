"""Configs: the schema and its validation, reusable presets, variant words, the
saved config of a trained run as the source of truth, and the checks run
before anything is written."""
