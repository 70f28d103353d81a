"""The experiment pipeline: tokenizer -> base policy -> verifier -> fine-tuning -> evaluation -> report."""
