"""A deterministic WordPiece vocabulary learner: the `tokenizers` WordPiece trainer's algorithm
(greedy merges of the most frequent adjacent pair, as in BPE) with every tie broken by a fixed
order, so one corpus gives one vocabulary in every process. The `tokenizers` trainer numbers its
"##" pieces in hash-map order, which changes from process to process, and its ties between
equally frequent merges follow those numbers."""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from itertools import pairwise


def count_words(texts: Iterable[str], normalizer, pre_tokenizer) -> Counter:
    """{word: occurrences} of `texts` after `normalizer` and `pre_tokenizer` (the objects the
    trained Tokenizer will apply), as the `tokenizers` trainers count them."""
    counts: Counter = Counter()
    for text in texts:
        if normalizer is not None:
            text = normalizer.normalize_str(text)
        counts.update(word for word, _ in pre_tokenizer.pre_tokenize_str(text))
    return counts


def _merge(symbols: list[int], a: int, b: int, new: int) -> list[int]:
    """`symbols` with each non-overlapping (a, b), left to right, replaced by `new`."""
    out, i = [], 0
    while i < len(symbols):
        if i + 1 < len(symbols) and symbols[i] == a and symbols[i + 1] == b:
            out.append(new)
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return out


def learn_vocab(
    word_counts: dict[str, int], specials: Sequence[str], vocab_size: int, prefix: str = "##"
) -> list[str]:
    """The vocabulary, in id order: `specials`, every character of the words (by code point),
    each character seen inside a word with `prefix` (by code point), then one token per merge
    until `vocab_size` tokens (fewer when no pair is left). A merge joins the most frequent
    adjacent pair (counts weighted by word frequency); ties go to the smallest (left id, right
    id), the `tokenizers` rule, over ids that no longer depend on hashing."""
    vocab: list[str] = []
    ids: dict[str, int] = {}

    def add(token: str) -> int:
        if token not in ids:
            ids[token] = len(vocab)
            vocab.append(token)
        return ids[token]

    for s in specials:
        add(s)
    words = sorted(w for w, c in word_counts.items() if w and c > 0)
    for ch in sorted({ch for w in words for ch in w}):
        add(ch)
    for ch in sorted({ch for w in words for ch in w[1:]}):
        add(prefix + ch)
    symbols = [[ids[w[0]]] + [ids[prefix + ch] for ch in w[1:]] for w in words]
    counts = [int(word_counts[w]) for w in words]
    pair_counts: Counter = Counter()
    where: dict[tuple[int, int], set[int]] = defaultdict(set)
    for i, s in enumerate(symbols):
        for pair in pairwise(s):
            pair_counts[pair] += counts[i]
            where[pair].add(i)
    heap = [(-c, pair) for pair, c in pair_counts.items() if c > 0]
    heapq.heapify(heap)
    while len(vocab) < vocab_size and heap:
        negative, pair = heapq.heappop(heap)
        count = pair_counts.get(pair, 0)
        if count != -negative:  # a stale entry: requeue at the current count
            if count > 0:
                heapq.heappush(heap, (-count, pair))
            continue
        a, b = pair
        new = add(vocab[a] + vocab[b].removeprefix(prefix))
        touched = set()
        for i in sorted(where.pop(pair, ())):
            old = symbols[i]
            merged = _merge(old, a, b, new)
            if merged == old:
                continue
            for p in pairwise(old):
                pair_counts[p] -= counts[i]
                touched.add(p)
            for p in pairwise(merged):
                pair_counts[p] += counts[i]
                where[p].add(i)
                touched.add(p)
            symbols[i] = merged
        for p in sorted(touched):
            if pair_counts[p] > 0:
                heapq.heappush(heap, (-pair_counts[p], p))
    return vocab
