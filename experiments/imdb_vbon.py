"""Amini et al.'s setting: vBoN on IMDB review prefixes (2-8 words, 40 new tokens), reward vs KL sweep.

Needs a local IMDB copy (raw aclImdb/ or a TFDS data dir with imdb_reviews in array_record) and a reference
LM checkpoint (the paper fine-tunes GPT-2 on IMDB; here any bon_jax/Gemma-format checkpoint).
    make train EXP=imdb_vbon CKPT=/path/to/policy DATA=/path/to/aclImdb TOKENIZER=/path/to/tokenizer.model
"""

from experiments import sentiment_vbon

IMDB = "The IMDB reviews: the aclImdb/ folder (aclImdb_v1.tar.gz, Maas et al. 2011) or a TFDS data dir; pass DATA=<dir>."
CKPT = (
    "A reference policy fine-tuned on IMDB reviews (bon_jax params or a Gemma checkpoint); pass CKPT=<path>."
)
TOKENIZER = "The reference policy's sentencepiece tokenizer.model; pass TOKENIZER=<file>."


def get_config():
    c = sentiment_vbon.get_config()
    c.name = "imdb_vbon"
    c.requires = (("model.checkpoint", CKPT), ("tokenizer.path", TOKENIZER), ("task.data_dir", IMDB))
    c.task.name = "imdb"
    c.task.kwargs = {}
    c.rl.max_new_tokens = 40
    c.eval.max_new_tokens = 40
    c.model.max_len = 96
    c.sft.steps = 0
    return c


get_sweep = sentiment_vbon.get_sweep
