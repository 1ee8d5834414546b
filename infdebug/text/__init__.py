"""Tokenizer loading and fingerprints, HF-compatible chat-template rendering."""
