"""Small fast tokenizers built offline, for tiny test models and the demo zoo.

Each builder returns a ``PreTrainedTokenizerFast`` whose ``backend_tokenizer`` is what a bundle's
``tokenizer.json`` holds.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

__all__ = ["TINY_WORDS", "wordpiece_tokenizer", "byte_bpe_tokenizer", "clip_like_tokenizer"]

TINY_WORDS: tuple[str, ...] = tuple(
    "a an the of and on in with to left right above below next photo picture small large "
    "red green blue yellow orange purple white black gray circle square triangle star cross "
    "hexagon cat dog person car tree sky".split()
)


def wordpiece_tokenizer(words: Iterable[str]) -> PreTrainedTokenizerFast:
    """BERT-style WordPiece (BLIP): [PAD]=0, [UNK], [CLS], [SEP], [MASK], [DEC] (decoder bos)."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
    vocab = {tok: i for i, tok in enumerate(specials + sorted(set(words) - set(specials)))}
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
        sep_token="[SEP]", mask_token="[MASK]", bos_token="[DEC]",
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
