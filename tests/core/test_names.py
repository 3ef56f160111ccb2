"""Random names: reply channel suffixes and client ids are unguessable and well formed."""

from __future__ import annotations

import string
from collections import Counter

from layers.core.names import make_client_id, random_suffix, valid_channel_name

ALPHABET = set(string.ascii_letters + string.digits)


def test_random_suffix_has_the_length_and_alphabet_asked() -> None:
    for length in (1, 8, 12, 40):
        suffix = random_suffix(length)
        assert len(suffix) == length
        assert set(suffix) <= ALPHABET


def test_random_suffix_uses_every_letter_evenly_and_never_repeats() -> None:
    draws = [random_suffix(12) for _ in range(5000)]
    assert len(set(draws)) == len(draws)
    counts = Counter("".join(draws))
    assert set(counts) == ALPHABET
    expected = 12 * 5000 / 62  # about 968 per letter
    # Every position is uniform too: a short or biased conversion shows here.
    for position in (0, 6, 11):
        at = Counter(draw[position] for draw in draws)
        assert len(at) == 62, position
    assert min(counts.values()) > expected * 0.8
    assert max(counts.values()) < expected * 1.2


def test_client_ids_make_valid_reply_channel_names() -> None:
    ids = {make_client_id() for _ in range(100)}
    assert len(ids) == 100
    for client_id in ids:
        assert valid_channel_name(f"specific.{client_id}!{random_suffix()}")
