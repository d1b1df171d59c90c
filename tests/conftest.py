"""Session-wide model fixtures: the packaged MiniLM and tiny random models built offline.

The tiny models share the real architectures (BERT encoder, BERT cross-encoder, T5 as in
castorini's monoT5/duoT5) so every code path runs, in milliseconds instead of seconds.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from pairdistill.runtime import resolve_model
from pairdistill.synthetic import TINY_BERT, tiny_classifier


@pytest.fixture(scope="session")
def minilm_dir() -> str:
    """Path of the packaged all-MiniLM-L6-v2 (a BertModel, uncased vocab of 30522)."""
    return resolve_model("minilm")


def _minilm_tokenizer(minilm_dir: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_dir)


def _tiny_bert_config(tokenizer):
    from transformers import BertConfig

    return BertConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                      **TINY_BERT)


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory, minilm_dir) -> str:
    """A random tiny BertModel (hidden 32, 2 layers) with MiniLM's tokenizer; no task head."""
    from transformers import BertModel

    out = tmp_path_factory.mktemp("tiny_bert")
    tokenizer = _minilm_tokenizer(minilm_dir)
    torch.manual_seed(0)
    BertModel(_tiny_bert_config(tokenizer)).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def tiny_cross_encoder_dir(tmp_path_factory, minilm_dir) -> str:
    """A random tiny BertForSequenceClassification (1 label), like ms-marco-MiniLM-L-6-v2."""
    return tiny_classifier(tmp_path_factory.mktemp("tiny_cross_encoder"), _minilm_tokenizer(minilm_dir))


def _t5_training_lines(n: int = 600, seed: int = 0) -> list[str]:
    """monoT5/duoT5-shaped prompts over random pseudo-words, to train a tiny sentencepiece model."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 7))) for _ in range(400)]
    words += ["true", "false", "query", "document", "relevant"] * 20

    def text(lo, hi):
        return " ".join(rng.choice(words) for _ in range(rng.randint(lo, hi)))

    lines = []
    for _ in range(n):
        label = rng.choice(["true", "false"])
        lines.append(f"Query: {text(2, 5)} Document: {text(5, 15)} Relevant: {label}")
        lines.append(f"Query: {text(2, 5)} Document0: {text(5, 15)} Document1: {text(5, 15)} "
                     f"Relevant: {label}")
    return lines


def _fast_t5_tokenizer(spm_file: Path):
    """A T5TokenizerFast built straight from the sentencepiece vocabulary.

    transformers' slow-to-fast conversion needs protobuf, which this environment lacks; the
    pieces and scores are enough to build the same unigram tokenizer with `tokenizers`.
    """
    import sentencepiece as spm
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    sp = spm.SentencePieceProcessor(model_file=str(spm_file))
    vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    backend = Tokenizer(models.Unigram(vocab, unk_id=sp.unk_id(), byte_fallback=False))
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always"),
    ])
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    backend.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", sp.eos_id())])
    return T5TokenizerFast(vocab_file=str(spm_file), tokenizer_object=backend, extra_ids=0,
                           eos_token="</s>", unk_token="<unk>", pad_token="<pad>")


@pytest.fixture(scope="session")
def tiny_t5_dir(tmp_path_factory) -> str:
    """A random tiny T5ForConditionalGeneration with a locally trained sentencepiece tokenizer.

    Same layout as castorini/monot5-* and duot5-* (pad = decoder start = 0, eos = 1, unk = 2);
    the directory holds both spiece.model (slow) and tokenizer.json (fast).
    """
    import sentencepiece as spm
    from transformers import T5Config, T5ForConditionalGeneration

    out = tmp_path_factory.mktemp("tiny_t5")
    work = tmp_path_factory.mktemp("tiny_t5_spm")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_t5_training_lines()), model_prefix=str(work / "spiece"),
        vocab_size=300, model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        hard_vocab_limit=False, minloglevel=2)
    tokenizer = _fast_t5_tokenizer(work / "spiece.model")
    config = T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=16, d_ff=64, num_layers=2,
                      num_heads=2, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    torch.manual_seed(0)
    T5ForConditionalGeneration(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)
