"""The `gpt2` command and its verbs: the training job, chat, respond, eval, plot, serve."""
