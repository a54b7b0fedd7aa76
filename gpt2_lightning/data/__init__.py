"""Instruction data: records and their formats, prompt styles, the dataset, sampler, collator and data module."""
