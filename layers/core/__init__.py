"""Backend-agnostic core: the rules every backend gets for free."""
