"""cocohanere_jax: CoCoHaNeRe hard-negative contrastive training for code search, in JAX."""

from cocohanere_jax.models.encoder import Encoder, load_encoder

__all__ = ["Encoder", "load_encoder"]
