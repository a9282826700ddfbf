"""CodeT5+ embedding model for `AutoModel.from_pretrained(folder, trust_remote_code=True)`.

Written by cocohanere_jax's export for folders that did not come with Salesforce's own file. Same weights
layout and output as Salesforce/codet5p-110m-embedding: T5 encoder, hidden state of token 0, Linear
d_model -> embed_dim with bias, L2 normalisation.
"""

import torch.nn.functional as F
from torch import nn
from transformers import T5EncoderModel

from .configuration_codet5p_embedding import CodeT5pEmbeddingConfig


class CodeT5pEmbeddingModel(T5EncoderModel):
    config_class = CodeT5pEmbeddingConfig

    def __init__(self, config):
        super().__init__(config)
        self.proj = nn.Linear(config.d_model, config.embed_dim)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return F.normalize(self.proj(hidden[:, 0, :]), dim=-1)
