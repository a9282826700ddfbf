"""Export a model as a Hugging Face folder.

    python -m cocohanere_jax.export --model=PATH --out=DIR [--pooling=cls|mean|pooler]

PATH is a Hugging Face folder or one of our exports. The written folder holds config.json,
model.safetensors, the tokenizer files (and for CodeT5+ the remote-code files), and loads with the original
model class (`AutoModel.from_pretrained(DIR)`, `trust_remote_code=True` for CodeT5+) as well as with
`cocohanere_jax.load_encoder(DIR)`.
"""

from absl import app, flags

from cocohanere_jax.models.encoder import load_encoder

FLAGS = flags.DEFINE_string("model", None, "Source model folder (Hugging Face layout).", required=True)
_OUT = flags.DEFINE_string("out", None, "Output folder.", required=True)
_POOLING = flags.DEFINE_enum("pooling", None, ["cls", "mean", "pooler", "first"], "Override the pooling.")


def main(argv):
    del argv
    enc = load_encoder(FLAGS.value, pooling=_POOLING.value)
    print(enc.export(_OUT.value))


if __name__ == "__main__":
    app.run(main)
