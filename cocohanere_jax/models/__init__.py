"""Flax encoders (T5 / CodeT5+, BERT / RoBERTa) and their Hugging Face conversion."""
