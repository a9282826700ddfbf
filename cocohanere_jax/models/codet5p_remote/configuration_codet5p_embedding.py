"""CodeT5+ embedding config for `AutoConfig.from_pretrained(folder, trust_remote_code=True)`.

Written by cocohanere_jax's export for folders that did not come with Salesforce's own file. It accepts the
same config.json as Salesforce/codet5p-110m-embedding: a T5 config plus `embed_dim`.
"""

from transformers import T5Config


class CodeT5pEmbeddingConfig(T5Config):
    model_type = "codet5p_embedding"

    def __init__(self, embed_dim=256, **kwargs):
        self.embed_dim = embed_dim
        super().__init__(**kwargs)
