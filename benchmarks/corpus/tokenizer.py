"""Tokenise a code base and count identifiers and token bigrams.

Shape: small-object churn.  A linting/statistics tool runs a hand-written
lexer (a regular expression with named groups, as most small lexers are)
over generated Python-like source files and produces a ``Token`` named
tuple per token, plus sliced strings and line/column ints; the tokens are
consumed at once by counters (identifier frequency, kind bigrams, line
lengths) and die.  Millions of short-lived tuples and strings, few
survivors: the young generation fills and empties constantly.  At scale 1:
1,500 files.

    python benchmarks/corpus/tokenizer.py [--scale 1.0]
"""

import argparse
import random
import re
from collections import Counter, namedtuple

Token = namedtuple("Token", "kind text line col")

TOKEN_RE = re.compile(r"""
    (?P<NUMBER>\d+(?:\.\d+)?)
  | (?P<NAME>[A-Za-z_][A-Za-z_0-9]*)
  | (?P<STRING>"[^"\n]*"|'[^'\n]*')
  | (?P<OP>==|!=|<=|>=|->|[-+*/%=<>()\[\]{}:,.])
  | (?P<NEWLINE>\n)
  | (?P<SKIP>[ \t]+)
  | (?P<COMMENT>\#[^\n]*)
""", re.VERBOSE)

KEYWORDS = {"def", "return", "if", "else", "for", "in", "while", "import", "class", "not"}


def tokenize(source):
    line = 1
    line_start = 0
    for m in TOKEN_RE.finditer(source):
        kind = m.lastgroup
        if kind == "NEWLINE":
            line += 1
            line_start = m.end()
            continue
        if kind in ("SKIP", "COMMENT"):
            continue
        text = m.group()
        if kind == "NAME" and text in KEYWORDS:
            kind = "KEYWORD"
        yield Token(kind, text, line, m.start() - line_start)


def make_file(rng, names):
    lines = []
    for f in range(rng.randrange(3, 9)):
        fn = rng.choice(names)
        args = ", ".join(rng.sample(names, 3))
        lines.append(f"def {fn}_{f}({args}):")
        for _ in range(rng.randrange(4, 12)):
            a, b, c = rng.sample(names, 3)
            lines.append(f"    {a} = {b} * {rng.randrange(100)} + {c}.get('{a}', {rng.random():.3f})"
                         f"  # update {a}")
            if rng.random() < 0.3:
                lines.append(f"    if {a} >= {b}: return [{a}, {c}, \"{b}\"]")
        lines.append(f"    return {rng.choice(names)}")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args(argv)
    n_files = max(5, int(1_500 * args.scale))
    rng = random.Random(31)
    names = [f"{p}{s}" for p in ("user", "item", "total", "cfg", "row", "acc", "tmp", "node")
             for s in ("", "_id", "s", "_map", "_count", "2")]
    idents = Counter()
    bigrams = Counter()
    n_tokens = 0
    for _ in range(n_files):
        prev = None
        for tok in tokenize(make_file(rng, names)):
            n_tokens += 1
            if tok.kind == "NAME":
                idents[tok.text] += 1
            bigrams[(prev, tok.kind)] += 1
            prev = tok.kind
    common = idents.most_common(1)[0]
    print(f"tokenizer: {n_files} files, {n_tokens} tokens, {len(idents)} identifiers, "
          f"most common {common[0]} x{common[1]}, {len(bigrams)} kind bigrams")


if __name__ == "__main__":
    main()
