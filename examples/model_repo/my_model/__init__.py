"""The model repository's own code (here: only its attention kernel)."""
