"""Remote-code files that export writes into CodeT5+ folders (loaded by transformers, not by us)."""
