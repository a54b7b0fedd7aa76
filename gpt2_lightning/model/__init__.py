"""GPT-2 itself: the model and its KV cache, the tokenizer, OpenAI / Hugging Face weights."""
