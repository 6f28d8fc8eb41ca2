#!/usr/bin/env python3
# Writes tests/fixtures/tokenizer/cases.txt: inputs and the ids the official RWKV World tokenizer
# (TRIE_TOKENIZER from the `rwkv` pip package, 0.8.32) gives them.
#
# Run from the repository root:
#
#     /work/venv/bin/python tools/tokenizer/make_fixture.py
#
# Output format (one case per line, tab-separated, `#` lines are comments):
#
#     <label>\t<input bytes as lowercase hex, empty for empty input>\t<ids, comma-separated>
#
# The input is fed to `encodeBytes` as raw bytes, so invalid UTF-8 is covered too.
import importlib.metadata
import os
import random

import rwkv
from rwkv.rwkv_tokenizer import TRIE_TOKENIZER

VOCAB = os.path.join(os.path.dirname(rwkv.__file__), "rwkv_vocab_v20230424.txt")
OUT = os.path.join("tests", "fixtures", "tokenizer", "cases.txt")

tok = TRIE_TOKENIZER(VOCAB)
rng = random.Random(20230424)

PROSE = (
    "The quick brown fox jumps over the lazy dog. It was the best of times, it was the worst "
    "of times, it was the age of wisdom, it was the age of foolishness.\n\nCall me Ishmael. "
    "Some years ago - never mind how long precisely - having little or no money in my purse, "
    "I thought I would sail about a little and see the watery part of the world."
)
CODE = (
    "fn main() {\n    let xs: Vec<u32> = (0..10).map(|i| i * i).collect();\n"
    "    println!(\"{:?}\", xs);\n}\n\n"
    "def f(x):\n\treturn {'a': [1, 2, 3], \"b\": x ** 2}  # comment\n\n"
    "#include <stdio.h>\nint main(void) { printf(\"%d\\n\", 42); return 0; }\r\n"
)
CASES = [
    ("empty", b""),
    ("ascii-prose", PROSE.encode()),
    ("code", CODE.encode()),
    ("hello", "Hello world\n\n".encode()),
    ("leading-space", " Hello".encode()),
    ("trailing-space", "Hello ".encode()),
    ("both-spaces", "  Hello  ".encode()),
    ("only-space", b" "),
    ("newline-newline", b"\n\n"),
    ("newlines-3", b"\n\n\n"),
    ("crlf", b"line one\r\nline two\r\n\r\n"),
    ("tabs", b"\tindented\t\ttext\t"),
    ("chat", "User: hi\n\nAssistant: Hello! How can I help?\n\nUser:".encode()),
    ("chinese", "我们今天去公园散步，天气非常好。人工智能正在改变世界。".encode()),
    ("japanese", "日本語のテキストです。ひらがな、カタカナ、漢字を含みます。".encode()),
    ("korean", "안녕하세요, 세계! 한국어 문장입니다.".encode()),
    ("cyrillic", "Съешь же ещё этих мягких французских булок, да выпей чаю.".encode()),
    ("accented-latin", "Ça été très agréable: naïve façade, Straße, São Paulo, Ångström, ñandú.".encode()),
    ("greek-arabic-hebrew", "Καλημέρα κόσμε · مرحبا بالعالم · שלום עולם".encode()),
    ("devanagari-thai", "नमस्ते दुनिया สวัสดีชาวโลก".encode()),
    ("emoji", "I love 🦀 and 🐍! 😀😃😄".encode()),
    ("emoji-zwj", "👨‍👩‍👧‍👦 family, 🏳️‍🌈 flag, 👩🏽‍💻 coder, ❤️‍🔥".encode()),
    ("emoji-flags-skin", "🇫🇷🇯🇵🇺🇸 👍🏻👍🏿".encode()),
    ("math-symbols", "∀x∈ℝ: x² ≥ 0 ⇒ √(x²) = |x| ∑∫∂ ≈ ≠ ∞".encode()),
    ("cjk-ext-b", "𠀀𠀁𪚥".encode()),
    ("nul-and-controls", b"\x00\x01\x02\x7f\x1b[0m\x00"),
    ("invalid-lone-continuation", b"\x80\x81\xbf"),
    ("invalid-lead-bytes", b"\xc0\xc1\xf5\xf8\xfc\xfe\xff"),
    ("invalid-truncated-3", b"abc\xe6\x97"),
    ("invalid-truncated-4", b"\xf0\x9f\x98 x"),
    ("invalid-surrogate", b"\xed\xa0\x80\xed\xbf\xbf"),
    ("invalid-overlong", b"\xc0\xaf\xe0\x80\xaf\xf0\x80\x80\xaf"),
    ("invalid-mixed", b"ok \xff\xfe text \xe6\x97\xa5\xe6 end"),
    ("latin1-text", "café naïve".encode("latin-1")),
    ("utf16le-text", "hello 世界".encode("utf-16-le")),
    ("repeat-a-1000", b"a" * 1000),
    ("repeat-space-300", b" " * 300),
    ("repeat-space-129", b" " * 129),
    ("repeat-newline-100", b"\n" * 100),
    ("repeat-equals-500", b"=" * 500),
    ("repeat-dash-161", b"-" * 161),
    ("repeat-hash-80", b"#" * 80),
    ("repeat-cjk-100", ("你" * 100).encode()),
    ("repeat-emoji-50", ("😀" * 50).encode()),
    ("repeat-ab-200", b"ab" * 200),
    ("numbers", b"3.14159265358979 1,000,000 2023-04-24 0x7fffffff 1e-10"),
    ("url-json", b'{"url": "https://example.com/a?b=c&d=e", "list": [1, 2.5, null, true]}'),
    ("markdown", "# Title\n\n- item **bold** _it_\n- `code`\n\n> quote\n\n| a | b |\n|---|---|\n".encode()),
]


def random_bytes(n):
    return bytes(rng.randrange(256) for _ in range(n))


def random_utf8(n):
    pools = [
        "abcdefghijklmnopqrstuvwxyz ",
        "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
        " \t\n\r.,;:!?'\"()[]{}<>-_=+*/\\|@#$%^&~`",
        "éèêëàâäôöûüçñßøåæœ",
        "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年",
        "あいうえおかきくけこアイウエオカキクケコ",
        "абвгдеёжзийклмнопрстуфхцчшщъыьэюя",
        "😀🦀🐍👍🏻❤️🇫🇷",
    ]
    return "".join(rng.choice(rng.choice(pools)) for _ in range(n)).encode()


tokens = [tok.idx2token[i] for i in sorted(tok.idx2token)]


def random_token_mix(n):
    parts = []
    for _ in range(n):
        r = rng.random()
        if r < 0.8:
            parts.append(rng.choice(tokens))
        elif r < 0.9:
            t = rng.choice(tokens)
            parts.append(t[: rng.randrange(len(t) + 1)])  # a token prefix
        else:
            parts.append(random_bytes(rng.randrange(1, 4)))
    return b"".join(parts)


for k in range(200):
    CASES.append((f"random-bytes-{k}", random_bytes(rng.randrange(0, 65))))
for k in range(100):
    CASES.append((f"random-utf8-{k}", random_utf8(rng.randrange(1, 80))))
for k in range(200):
    CASES.append((f"random-token-mix-{k}", random_token_mix(rng.randrange(1, 25))))
# Long tokens glued together, and their prefixes: exercises the longest-match rule.
long_tokens = [t for t in tokens if len(t) >= 12]
for k in range(50):
    glued = b"".join(rng.choice(long_tokens) for _ in range(rng.randrange(2, 6)))
    cut = rng.randrange(1, len(glued) + 1)
    CASES.append((f"long-token-glue-{k}", glued[:cut]))

labels = set()
with open(OUT, "w", encoding="utf-8", newline="\n") as f:
    f.write("# Generated by tools/tokenizer/make_fixture.py with the official rwkv "
            f"{importlib.metadata.version('rwkv')} TRIE_TOKENIZER; do not edit.\n")
    f.write("# label<TAB>input bytes (hex)<TAB>ids (comma-separated)\n")
    for label, data in CASES:
        assert label not in labels and "\t" not in label, label
        labels.add(label)
        ids = tok.encodeBytes(data)
        assert tok.decodeBytes(ids) == data, label
        f.write(f"{label}\t{data.hex()}\t{','.join(map(str, ids))}\n")
print(f"wrote {len(CASES)} cases to {OUT}")
