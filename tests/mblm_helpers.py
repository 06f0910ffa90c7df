"""Small real pieces for MBLM tests: fast WordPiece tokenizers built here (vocabularies unlike the
student's), tiny BERT classifiers, a few parallel NLI-like rows in two languages."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

from xdist.tasks.classification.examples import ClassificationExample

CLASSES = ["entailment", "neutral", "contradiction"]
TEXTS = {
    "en": [("A man is playing a guitar on stage.", "Someone makes music.", 0),
           ("The children are sleeping.", "The kids are awake and running.", 2),
           ("A woman reads a long book in the park.", "A person is outdoors.", 0),
           ("Two dogs chase a ball.", "The dogs are hungry.", 1),
           ("It rained all day in the city.", "The streets were dry.", 2),
           ("A chef cooks pasta.", "The chef is famous.", 1)],
    "de": [("Ein Mann spielt Gitarre auf der Bühne.", "Jemand macht Musik.", 0),
           ("Die Kinder schlafen.", "Die Kinder sind wach und rennen.", 2),
           ("Eine Frau liest ein langes Buch im Park.", "Eine Person ist draußen.", 0),
           ("Zwei Hunde jagen einen Ball.", "Die Hunde sind hungrig.", 1),
           ("Es regnete den ganzen Tag in der Stadt.", "Die Straßen waren trocken.", 2),
           ("Ein Koch kocht Nudeln.", "Der Koch ist berühmt.", 1)],
}


def wordpiece(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A tiny fast WordPiece tokenizer with a vocabulary built from ``texts``: the special tokens, every
    character seen (word-initial and ``##`` forms, so nothing is unknown), then whole words by frequency
    (ties by the word itself) up to ``vocab_size`` entries.

    Built by hand rather than with ``tokenizers``' WordPieceTrainer: the trainer breaks frequency ties in hash
    order, which differs from process to process, so the same texts gave different vocabularies (and the
    tests built on them different losses) in different runs."""
    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    chars = sorted({c for word in counts for c in word})
    vocab = [*specials, *chars, *(f"##{c}" for c in chars)]
    words = sorted((w for w in counts if len(w) > 1), key=lambda w: (-counts[w], w))
    vocab += words[: max(0, vocab_size - len(vocab))]
    tok = Tokenizer(models.WordPiece({token: i for i, token in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")


def texts_of(*languages: str) -> list[str]:
    return [t for lang in languages for a, b, _ in TEXTS[lang] for t in (a, b)] * 3


def tiny_classifier(vocab_size: int, seed: int, layers: int = 2, init: float = 0.02) -> BertForSequenceClassification:
    """A tiny random BERT classifier; ``init`` (the weights' std) 0.5 gives confident, input-dependent logits
    (a useful stand-in teacher), the default 0.02 near-uniform ones (a fresh student)."""
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=vocab_size, hidden_size=24, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=48, max_position_embeddings=64, pad_token_id=0, num_labels=3,
                        initializer_range=init,
                        id2label=dict(enumerate(CLASSES)), label2id={c: i for i, c in enumerate(CLASSES)})
    return BertForSequenceClassification(config).eval()


def save_teacher(directory: Path, language: str, seed: int) -> Path:
    """A teacher checkpoint with a tokenizer of its own (trained on its language only) saved beside it."""
    tokenizer = wordpiece(texts_of(language), vocab_size=70 + 30 * seed)
    tiny_classifier(len(tokenizer), seed, init=0.5).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def examples(*languages: str) -> list[ClassificationExample]:
    """Parallel rows: the same instance id in every language."""
    return [ClassificationExample(instance=f"toy:{i}", language=lang, text_a=a, text_b=b, label=y, group=str(i))
            for lang in languages for i, (a, b, y) in enumerate(TEXTS[lang])]
