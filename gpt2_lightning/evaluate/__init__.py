"""Scores of answers (exact match, ROUGE-L, an LLM judge) and the loss plot."""
