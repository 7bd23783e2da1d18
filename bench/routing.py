"""
What QRP-style routing would save (a measurement, not the search the
network runs): each link keeps a summary of the names behind it, and a
search skips a branch that cannot match.  Matching is by substrings (``live
ogg`` finds ``music/Live/set.ogg``), so the only summary without false
negatives is of character trigrams; this takes the best case of it, exact
sets (no Bloom filter's false positives), fresh at every moment.

For trees shaped as the overlay grows them (--max-neighbours 2: two
chains; 8: breadth first), each peer shares F synthetic names (words from a
Zipf-distributed vocabulary, in folders), and searches for the words of one
peer's file ask only the branches whose summary holds every trigram of
every word.  It prints the peers a search reaches against all N (the
baseline: what the convergecast asks), and what keeping the summaries
costs: for one file added at a random peer, how many links' summaries
change (each a message, to keep them without false negatives).

    python bench/routing.py [--peers 10000] [--files 50] [--queries 200]
"""

from __future__ import annotations

import argparse
import random
import statistics
from array import array
from collections.abc import Iterator


def tree(n: int, limit: int) -> list[list[int]]:
    """
    Neighbours by peer: peers joining breadth first, the root with C{limit}
    children and every other peer with C{limit - 1}.
    """
    adj: list[list[int]] = [[] for _ in range(n)]
    free = [0]
    head = 0
    for peer in range(1, n):
        while len(adj[free[head]]) >= limit:
            head += 1
        parent = free[head]
        adj[parent].append(peer)
        adj[peer].append(parent)
        free.append(peer)
    return adj


def names(rng: random.Random, vocabulary: list[str], weights: list[float], count: int) -> Iterator[str]:
    for _ in range(count):
        words = rng.choices(vocabulary, weights, k=rng.randint(2, 4))
        folder = rng.choices(vocabulary, weights)[0]
        yield f"{folder}/{' '.join(words)}.{rng.choice(('ogg', 'pdf', 'txt', 'mkv'))}"


def trigrams(text: str) -> set[str]:
    text = text.lower()
    return {text[i:i + 3] for i in range(len(text) - 2)}


def reached(adj: list[list[int]], origin: int, has: list[int], full: int) -> int:
    """
    The peers a search from C{origin} reaches when it enters a branch only
    if the trigrams behind it (C{has}: per peer, a bit per query trigram)
    are all there.
    """
    # Behind each directed link: OR over the subtree, by one pass per root side.
    order, parent = [origin], {origin: -1}
    for u in order:
        for v in adj[u]:
            if v != parent[u]:
                parent[v] = u
                order.append(v)
    below = has[:]
    for u in reversed(order):
        if parent[u] >= 0:
            below[parent[u]] |= below[u]
    count, todo = 1, [origin]
    while todo:
        u = todo.pop()
        for v in adj[u]:
            if v != parent[u] and below[v] == full:
                count += 1
                todo.append(v)
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", type=int, default=10_000)
    parser.add_argument("--files", type=int, default=20)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--words", type=int, default=20_000)
    args = parser.parse_args()
    n = args.peers
    rng = random.Random(5)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocabulary = ["".join(rng.choices(letters, k=rng.randint(3, 9))) for _ in range(args.words)]
    weights = [1 / (i + 1) for i in range(args.words)]  # Zipf
    shares = [list(names(rng, vocabulary, weights, args.files)) for _ in range(n)]
    # Who holds each trigram (an inverted index: far smaller than a set per peer).
    index: dict[str, array[int]] = {}
    for peer, files in enumerate(shares):
        for gram in set().union(*map(trigrams, files)):
            index.setdefault(gram, array("I")).append(peer)
    print(f"{n:,} peers, {args.files} names each, {args.queries} searches for one peer's "
          f"file by its words (baseline: the convergecast reaches all {n:,})")
    for limit in (2, 8):
        adj = tree(n, limit)
        fractions = []
        for _ in range(args.queries):
            holder = rng.randrange(n)
            name = rng.choice(shares[holder])
            words = name.rsplit("/", 1)[-1].rsplit(".", 1)[0].split()
            wanted = sorted(set().union(*map(trigrams, words)))
            has = [0] * n
            for bit, gram in enumerate(wanted):
                for peer in index.get(gram, ()):
                    has[peer] |= 1 << bit
            origin = rng.randrange(n)
            fractions.append(reached(adj, origin, has, (1 << len(wanted)) - 1) / n)
        changes = [
            links_changed(adj, rng.randrange(n), next(names(rng, vocabulary, weights, 1)), index)
            for _ in range(20)
        ]
        print(f"limit {limit}: a search reaches {statistics.median(fractions):.1%} of the peers "
              f"(median; mean {statistics.mean(fractions):.1%}, max {max(fractions):.1%}); "
              f"one file added changes {statistics.mean(changes):,.0f} of the {2 * (n - 1):,} "
              f"link summaries (mean; median {statistics.median(changes):,.0f}, max "
              f"{max(changes):,}), each an update to send", flush=True)


def links_changed(adj: list[list[int]], at: int, name: str, index: dict[str, array[int]]) -> int:
    """
    How many links' summaries change when peer C{at} adds a file called
    C{name}: the summary a peer keeps for its link towards C{at} changes
    when some trigram of the name was held, apart from C{at}, only inside
    that peer's own side (or nowhere).
    """
    order, parent = [at], [-1] * len(adj)
    for u in order:
        for v in adj[u]:
            if v != parent[u] and v != at:
                parent[v] = u
                order.append(v)
    changed = [False] * len(adj)
    for gram in trigrams(name):
        inside = [0] * len(adj)
        for peer in index.get(gram, ()):
            if peer != at:
                inside[peer] = 1
        total = sum(inside)
        for u in reversed(order):
            if parent[u] >= 0:
                inside[parent[u]] += inside[u]
        for v in order[1:]:
            if inside[v] == total:  # nobody outside v's side held it
                changed[v] = True
    return sum(changed)


if __name__ == "__main__":
    main()
