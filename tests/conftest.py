"""Session-wide model fixtures: the packaged MiniLM and tiny random models built offline.

The tiny models share the real architectures (BERT encoder, BERT cross-encoder, T5 as in
castorini's monoT5/duoT5) so every code path runs, in milliseconds instead of seconds.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd
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


def _tiny_t5(out: Path, work: Path, lines: list[str], vocab_size: int) -> str:
    """A random tiny T5ForConditionalGeneration in ``out``, its sentencepiece trained on ``lines``."""
    import sentencepiece as spm
    from transformers import T5Config, T5ForConditionalGeneration

    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_prefix=str(work / "spiece"),
        vocab_size=vocab_size, model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        hard_vocab_limit=False, minloglevel=2)
    tokenizer = _fast_t5_tokenizer(work / "spiece.model")
    config = T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=16, d_ff=64, num_layers=2,
                      num_heads=2, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    torch.manual_seed(0)
    T5ForConditionalGeneration(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def tiny_t5_dir(tmp_path_factory) -> str:
    """A random tiny T5ForConditionalGeneration with a locally trained sentencepiece tokenizer.

    Same layout as castorini/monot5-* and duot5-* (pad = decoder start = 0, eos = 1, unk = 2);
    the directory holds both spiece.model (slow) and tokenizer.json (fast).
    """
    return _tiny_t5(tmp_path_factory.mktemp("tiny_t5"), tmp_path_factory.mktemp("tiny_t5_spm"),
                    _t5_training_lines(), 300)


def _instruct_lines(prompts: dict[str, str], labels: dict[str, tuple[str, str]], n: int = 400,
                    seed: int = 1) -> list[str]:
    """Prompts of the instruction teachers over random pseudo-words, each followed by an answer."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 7))) for _ in range(300)]

    def text(lo, hi):
        return " ".join(rng.choice(words) for _ in range(rng.randint(lo, hi)))

    lines = []
    for _ in range(n):
        lines.append(prompts["pointwise"].format(query=text(2, 5), passage=text(5, 15))
                     + rng.choice(labels["pointwise"]))
        lines.append(prompts["pairwise"].format(query=text(2, 5), passage_a=text(5, 15), passage_b=text(5, 15))
                     + rng.choice(labels["pairwise"]))
    return lines


@pytest.fixture(scope="session")
def tiny_flan_t5_dir(tmp_path_factory) -> str:
    """A random tiny T5 whose sentencepiece was trained on the instruction teachers' default (flan-t5)
    prompts, so their label words "Yes", "No", "A", "B" are single pieces as in google/flan-t5-*."""
    from pairdistill.teachers.instruct import DEFAULT_LABELS, DEFAULT_PROMPT

    prompts = {k: v + " " for k, v in DEFAULT_PROMPT.items()}
    answers = [" ".join(w for pair in DEFAULT_LABELS.values() for w in pair)] * 200  # whole words, as answers
    lines = _instruct_lines(prompts, DEFAULT_LABELS) + answers + _t5_training_lines(200)
    return _tiny_t5(tmp_path_factory.mktemp("tiny_flan_t5"), tmp_path_factory.mktemp("tiny_flan_t5_spm"),
                    lines, 400)


# Prompts for a decoder-only teacher: the question comes last and ends in an answer cue, and the
# byte-level label words carry the space the model writes before them.
CAUSAL_PROMPTS = {
    "pointwise": "Query: {query}\nDocument: {passage}\nIs the document relevant to the query? Answer:",
    "pairwise": ("Query: {query}\nDocument A: {passage_a}\nDocument B: {passage_b}\n"
                 "Which document is more relevant to the query? Answer:"),
}
CAUSAL_LABELS = {"pointwise": (" Yes", " No"), "pairwise": (" A", " B")}


@pytest.fixture(scope="session")
def tiny_causal_lm_dir(tmp_path_factory) -> str:
    """A random tiny GPT2LMHeadModel (learned absolute positions, so a padding mistake shows) with a
    byte-level BPE tokenizer trained on CAUSAL_PROMPTS, saved as a PreTrainedTokenizerFast without a
    pad token (as GPT-2's and Llama's)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("tiny_causal_lm")
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(_instruct_lines(CAUSAL_PROMPTS, CAUSAL_LABELS), trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|endoftext|>",
                                        eos_token="<|endoftext|>", unk_token="<|endoftext|>",
                                        model_input_names=["input_ids", "attention_mask"])
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=512, n_embd=32, n_layer=2, n_head=2,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def scifact_head():
    """The first 80 SciFact passages: (frame doc_id/title/text, texts as the models see them)."""
    from workflow import DATA_DIR

    path = DATA_DIR / "scifact" / "corpus.jsonl"
    if not path.exists():
        pytest.skip("SciFact not found")
    with open(path) as f:
        docs = [json.loads(line) for line, _ in zip(f, range(80))]
    df = pd.DataFrame({"doc_id": [d["_id"] for d in docs], "title": [d["title"] for d in docs],
                       "text": [d["text"] for d in docs]})
    return df, [f"{t} {x}" for t, x in zip(df["title"], df["text"])]


@pytest.fixture(scope="session")
def tiny_colbert_checkpoint(tmp_path_factory, tiny_bert_dir):
    """An iteration-0 ColBERT checkpoint on the tiny BERT (dim 16, 16 query and 32 passage tokens)."""
    from pairdistill.students import colbert

    out = tmp_path_factory.mktemp("student") / "ckpt"
    colbert.init_checkpoint(tiny_bert_dir, out, dim=16, query_maxlen=16, doc_maxlen=32, seed=0)
    return out


@pytest.fixture
def one_thread():
    """Bit-exactness is a single-thread CPU property (as the rules run jobs with --threads)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def fusion_run(tmp_path_factory, tiny_bert_dir) -> dict:
    """One finished round of the DAG with the embedded default's fusion teachers on a SciFact slice
    (a few minutes), shared by tests/test_fusion_pipeline.py and tests/test_report_browser.py.
    Tests may read it and dry-run against it, not change its results."""
    from workflow import DATA_DIR, make_slice, snakemake, tiny_fusion_overlay, write_config

    if not (DATA_DIR / "scifact").is_dir():
        pytest.skip("SciFact not found")
    root = tmp_path_factory.mktemp("fusion-e2e")
    make_slice(root / "data", n_train=32)
    # the default's inference.backend auto (openvino on a CPU where installed): the fast path end to end
    overlay = tiny_fusion_overlay(root / "data", tiny_bert_dir, **{"iteration": 1, "threads": 1,
                                                                    "inference.backend": "auto"})
    configfile = write_config(root / "tiny.yaml", overlay)
    work = root / "work"
    work.mkdir()
    proc = snakemake(work, configfiles=(configfile,))
    return {"workdir": work, "config": configfile, "root": root, "proc": proc}


def pytest_configure(config):
    """Under pytest-xdist, each worker's torch takes its share of the cores (two workers with two
    threads each on two cores would slow every in-process forward pass)."""
    import os

    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def _modules_sharing_the_fusion_run(rootpath: Path) -> frozenset[str]:
    """Test modules (paths as in node ids) with a test or fixture taking the session-wide
    ``fusion_run``, read from their source, so the controller of pytest-xdist (which collects
    nothing) and its workers agree on them."""
    import ast

    shared = set()
    for path in sorted((Path(__file__).parent).glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and any(a.arg == "fusion_run" for a in node.args.args):
                shared.add(path.relative_to(rootpath).as_posix())
                break
    return frozenset(shared)


def _group(nodeid: str, shared: frozenset[str]) -> str:
    """A test's work unit: its module, or ``fusion_run`` for every module that shares that run."""
    module = nodeid.split("::")[0]
    return "fusion_run" if module in shared else module


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """pytest-xdist (pyproject.toml's addopts: ``-n auto``): one work unit per module, so its
    module-scoped fixtures (a tiny finished run, a trained checkpoint) are built once, and one for
    the modules sharing ``fusion_run``, so that run is made once per session. Units go out in
    collection order (see :func:`pytest_collection_modifyitems`).

    Not ``--dist loadgroup`` with ``xdist_group`` marks: under pytest 9.2, pytest-xdist 3.8 writes
    the group into a node-id field pytest no longer reads, and the marks silently group nothing
    (pytest-dev/pytest-xdist#1386)."""
    if config.getvalue("dist") not in ("load", "loadscope", "loadgroup"):
        return None  # --dist each, worksteal, ...: as asked
    from xdist.scheduler import LoadScopeScheduling

    shared = _modules_sharing_the_fusion_run(config.rootpath)

    class ByModule(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _group(nodeid, shared)

    config.option.loadscopereorder = False  # keep the order below, not "most tests first"
    return ByModule(config, log)


def pytest_collection_modifyitems(config, items):
    """The work units in order: those with the most slow tests first (the long end-to-end runs
    start at once and the quick tests fill the other workers around them instead of trailing a
    late one), each unit's tests together in file order (so ``-n 0`` builds each module fixture
    once too)."""
    shared = _modules_sharing_the_fusion_run(config.rootpath)
    groups: dict[str, list] = {}
    for item in items:
        groups.setdefault(_group(item.nodeid, shared), []).append(item)
    ranked = sorted(groups.values(), key=lambda g: -sum(i.get_closest_marker("slow") is not None for i in g))
    items[:] = [item for group in ranked for item in group]
