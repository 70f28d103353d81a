"""Command-line entry points (`make train`, `make sweep`, `make eval`)."""
