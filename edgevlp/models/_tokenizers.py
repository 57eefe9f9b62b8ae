"""Small fast tokenizers built offline, for tiny test models and the demo zoo.

Each builder returns a ``PreTrainedTokenizerFast`` whose ``backend_tokenizer`` is what a bundle's
``tokenizer.json`` holds.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

__all__ = ["TINY_WORDS", "wordpiece_tokenizer", "byte_bpe_tokenizer", "clip_like_tokenizer", "bert_tokenizer",
           "gpt2_tokenizer", "clip_tokenizer", "smolvlm_tokenizer", "SMOLVLM_IMAGE_TOKENS"]

TINY_WORDS: tuple[str, ...] = tuple(
    "a an the of and on in with to left right above below next photo picture small large "
    "red green blue yellow orange purple white black gray circle square triangle star cross "
    "hexagon cat dog person car tree sky".split()
)


def wordpiece_tokenizer(words: Iterable[str]) -> PreTrainedTokenizerFast:
    """BERT-style WordPiece (BLIP): [PAD]=0, [UNK], [CLS], [SEP], [MASK], [DEC] (decoder bos)."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
    return _bert_wordpiece(specials + sorted(set(words) - set(specials)))


def _bert_wordpiece(tokens: list[str], **extra: object) -> PreTrainedTokenizerFast:
    """A BERT WordPiece tokenizer over ``tokens`` (ids = positions): lower-casing, [CLS] .. [SEP]
    template, [DEC] as bos (BLIP's decoder start)."""
    vocab = {tok: i for i, tok in enumerate(tokens)}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tok.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]", bos_token="[DEC]", **extra,
    )


def byte_bpe_tokenizer(corpus: Sequence[str], vocab_size: int = 320) -> PreTrainedTokenizerFast:
    """GPT-2-style byte-level BPE trained on ``corpus``; ``<|endoftext|>`` is bos and eos, ``<pad>`` pads."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
        pad_token="<pad>", unk_token="<|endoftext|>",
    )


def clip_like_tokenizer(words: Iterable[str]) -> PreTrainedTokenizerFast:
    """CLIP-like word-level tokenizer (OWL-ViT): pad ``!`` = 0 and eos the highest id.

    OWL-ViT's text model pools at ``argmax(input_ids)`` and finds padded queries by
    ``input_ids[..., 0] > 0``, so both placements matter.
    """
    body = sorted(set(words))
    tokens = ["!", "<|startoftext|>", "<unk>", *body, "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>",
        special_tokens=[("<|startoftext|>", 1), ("<|endoftext|>", len(tokens) - 1)],
    )
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|startoftext|>", eos_token="<|endoftext|>", pad_token="!",
        unk_token="<unk>",
    )


# ------------------------------------------------------------------ real-size layouts (arch: presets)
# The vocabularies of real checkpoints rebuilt offline: the real size and every special token at its real
# id. The ids in between hold printable ascii characters (and, for WordPiece, their ``##`` continuations,
# so any ascii text encodes without an unknown token), TINY_WORDS, and numbered fillers.

_ASCII = tuple(chr(c) for c in range(33, 127))


def _body(words: Iterable[str], continuations: bool, exclude: Iterable[str] = ()) -> list[str]:
    """ascii characters, optionally their ``##`` continuations, then lower-cased ``words``; no duplicates."""
    skip = set(exclude)
    seen: dict[str, None] = {}
    conts = (f"##{c.lower()}" for c in _ASCII) if continuations else ()
    for tok in (*(c.lower() for c in _ASCII), *conts, *(w.lower() for w in words)):
        if tok not in skip:
            seen.setdefault(tok, None)
    return list(seen)


def _fill(tokens: list[str], size: int, pattern: str, start: int = 0) -> list[str]:
    """``tokens`` padded with ``pattern.format(i)`` fillers (i counting from ``start``) to ``size``."""
    if len(tokens) > size:
        raise ValueError(f"vocab_size {size} is too small for the {len(tokens)} tokens it must hold")
    taken = set(tokens)
    out, i = list(tokens), start
    while len(out) < size:
        filler = pattern.format(i)
        i += 1
        if filler not in taken:
            out.append(filler)
    return out


def bert_tokenizer(vocab_size: int = 30524, words: Iterable[str] = TINY_WORDS) -> PreTrainedTokenizerFast:
    """bert-base-uncased's layout as BLIP extends it: [PAD]=0, [unused0..98]=1..99, [UNK]=100, [CLS]=101,
    [SEP]=102 (BLIP's eos), [MASK]=103, [DEC]=vocab-2 (BLIP's decoder start, 30522), [ENC]=vocab-1.

    Example:
        >>> tok = bert_tokenizer()
        >>> len(tok), tok.convert_tokens_to_ids(["[PAD]", "[SEP]", "[DEC]"])
        (30524, [0, 102, 30522])
    """
    head = ["[PAD]", *(f"[unused{i}]" for i in range(99)), "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tail = ["[DEC]", "[ENC]"]
    body = _body(words, continuations=True, exclude=head + tail)
    tokens = _fill(head + body, vocab_size - len(tail), "[unused{}]", start=99) + tail
    return _bert_wordpiece(tokens, additional_special_tokens=["[ENC]"])


def gpt2_tokenizer(vocab_size: int = 50257, words: Iterable[str] = TINY_WORDS) -> PreTrainedTokenizerFast:
    """GPT-2's byte-level BPE layout: the 256 byte symbols, merges learnt from ``words``, fillers, and
    ``<|endoftext|>`` = vocab-1 (50256), which is bos, eos, pad and decoder start of ViT-GPT2.

    Example:
        >>> tok = gpt2_tokenizer()
        >>> len(tok), tok.eos_token_id, tok.pad_token_id
        (50257, 50256, 50256)
    """
    eot = "<|endoftext|>"
    words = [w.lower() for w in words]
    trained = Tokenizer(models.BPE())
    trained.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=min(vocab_size - 1, 4096), special_tokens=[],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    trained.train_from_iterator([" ".join(words), *(f"a photo of a {w}" for w in words)], trainer=trainer)
    state = json.loads(trained.to_str())["model"]
    learnt = sorted(state["vocab"], key=state["vocab"].get)
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    # fillers are ascii, so the byte-level decoder maps them back to themselves
    tokens = _fill(learnt, vocab_size - 1, "[unused{}]") + [eot]
    tok = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([eot])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=eot, eos_token=eot, pad_token=eot,
                                   unk_token=eot)


def clip_tokenizer(vocab_size: int = 49408, words: Iterable[str] = TINY_WORDS) -> PreTrainedTokenizerFast:
    """CLIP's layout as OWL-ViT and OWLv2 use it: ``!`` = 0 (the pad), ``<|startoftext|>`` = vocab-2
    (49406) and ``<|endoftext|>`` = vocab-1 (49407, also the unknown token, as in CLIP). OWL's text model
    pools at ``argmax(input_ids)`` and finds padded queries by ``input_ids[..., 0] > 0``, so both ends of
    the layout matter; the body is WordPiece, so any lower-case ascii prompt encodes.

    Example:
        >>> tok = clip_tokenizer()
        >>> ids = tok("a photo of a cat")["input_ids"]
        >>> ids[0], ids[-1], max(ids), len(tok)
        (49406, 49407, 49407, 49408)
    """
    sot, eot = "<|startoftext|>", "<|endoftext|>"
    body = _body(words, continuations=True, exclude=("!", sot, eot))
    tokens = _fill(["!", *body], vocab_size - 2, "[unused{}]") + [sot, eot]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    tok = Tokenizer(models.WordPiece(vocab, unk_token=eot))
    tok.normalizer = normalizers.Sequence([normalizers.NFD(), normalizers.StripAccents(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{sot} $A {eot}", special_tokens=[(sot, vocab[sot]), (eot, vocab[eot])],
    )
    tok.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=sot, eos_token=eot, pad_token="!",
                                   unk_token=eot)


#: SmolVLM / Idefics3 image tokens, in the order they follow the text vocabulary (SmolVLM-256M/500M:
#: <global-img> 49152, <row_1_col_1>..<row_6_col_6> 49153-49188, <fake_token_around_image> 49189,
#: <image> 49190; <end_of_utterance> is the last id, 49279).
SMOLVLM_IMAGE_TOKENS: tuple[str, ...] = ("<global-img>", *(f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)),
                                         "<fake_token_around_image>", "<image>")


def smolvlm_tokenizer(vocab_size: int = 49280, text_vocab: int = 49152,
                      words: Iterable[str] = TINY_WORDS, texts: Iterable[str] = ()) -> PreTrainedTokenizerFast:
    """SmolLM2's byte-level BPE layout as SmolVLM extends it: ``<|endoftext|>`` 0, ``<|im_start|>`` 1 (bos),
    ``<|im_end|>`` 2 (pad), merges learnt from ``words`` (and whole ``texts``: the questions a demo model
    is trained on) and fillers up to ``text_vocab``, then :data:`SMOLVLM_IMAGE_TOKENS`, fillers, and ``<end_of_utterance>`` = vocab-1 (the end of a turn).

    Example:
        >>> tok = smolvlm_tokenizer()
        >>> tok.convert_tokens_to_ids(["<image>", "<end_of_utterance>", "<|im_start|>"])
        [49190, 49279, 1]
    """
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    if text_vocab + len(SMOLVLM_IMAGE_TOKENS) + 1 > vocab_size:
        raise ValueError(f"vocab_size {vocab_size} cannot hold {text_vocab} text tokens and the image tokens")
    words = [w.lower() for w in words]
    trained = Tokenizer(models.BPE())
    trained.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=min(text_vocab, 4096), special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    trained.train_from_iterator([" ".join(words), *(f"User: is there a {w}? Assistant: a {w}" for w in words),
                                 *texts], trainer=trainer)
    state = json.loads(trained.to_str())["model"]
    learnt = sorted(state["vocab"], key=state["vocab"].get)
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    text = _fill(learnt, text_vocab, "[unused{}]")
    added = [*SMOLVLM_IMAGE_TOKENS]
    tokens = _fill(text + added, vocab_size - 1, "<extra_{}>") + ["<end_of_utterance>"]
    tok = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([*specials, *added, "<end_of_utterance>"])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<end_of_utterance>",
                                   pad_token="<|im_end|>", unk_token="<|endoftext|>",
                                   additional_special_tokens=["<fake_token_around_image>", "<image>",
                                                              "<end_of_utterance>"])
