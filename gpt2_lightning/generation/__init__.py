"""Generation: sampling with a KV cache, streamed text, answering records into JSON."""
