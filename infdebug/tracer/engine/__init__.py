"""The reference engine: a Llama-family model in torch, checkpoints, and the serving loop."""
