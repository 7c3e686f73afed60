"""Random texts for the Hugging Face cross-checks (tests/t_tokenizer_hf.sh).

usage: hf_texts.py N SEED OUT.json   -> a JSON list of N texts

Each text joins 1-30 pieces drawn from what trips byte-level pre-tokenizers: words in
every case with contractions (also 'S 'LL and the long s), digit runs of 1-14, every kind
of Unicode whitespace and runs of it, \\r\\n, punctuation runs, CJK / Arabic / Devanagari /
Thai / Cyrillic / Greek / titlecase letters, combining marks (NFD), emoji with ZWJ, skin
tones and flags, control characters, literal special tokens, camelCase, code and URLs.
"""
import json
import random
import sys

WORDS = ["the", "The", "THE", "license", "Hello", "world", "iPhone", "XMLHttpRequest", "camelCase", "ABCdef",
         "naïve", "café", "Straße", "résumé", "über", "ﬁne", "Ǆemal", "ǅungla", "İstanbul", "ΣΊΣΥΦΟΣ", "ὈΔΥΣΣΕΎΣ"]
CONTRACTIONS = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'T", "'RE", "'Ve", "'LL", "'D", "’s", "'ſ",
                "'x", "'"]
SPACES = [" ", "  ", "   ", "\t", "\n", "\r\n", "\n\n", " \n ", "\r", "\u00a0", "\u3000", "\u2028", "\u2029",
          "\u0085", "\u180e", "\u200b", "\u000b", "\f", "\u1680", "\u2007", "\u202f", "\u205f", " " * 9,
          "\n   \n", "\t\t", " \t\n"]
PUNCT = list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~") + ["...", "—", "«»", "“”", "¿¡", "•", "→", "€", "±", "©"]
SCRIPTS = ["中文字符测试", "ひらがなカタカナ漢字", "한국어 텍스트", "مرحبا بالعالم", "שלום עולם", "नमस्ते दुनिया",
           "সবাইকে", "สวัสดีชาวโลก", "Привет Мир", "Γειά σου Κόσμε", "ǅ ǈ ǋ", "ქართული", "தமிழ்", "བོད་",
           "Ⅻ ⅷ", "①②", "١٢٣", "߀߁", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "𐍈", "Ꭰ", "ᚠᛇᚻ"]
EMOJI = ["🙂", "👩‍💻", "👍🏽", "❤️", "🏳️‍🌈", "🇺🇸", "🧑🏿‍🚀", "😀😃", "🤖", "👨‍👩‍👧‍👦", "✅", "☕"]
COMBINING = ["e\u0301", "a\u0308\u0304", "\u0301", "n\u0303", "o\u0302\u0323", "\u1100\u1161\u11a8", "e\u20dd"]
SPECIAL = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<think>", "</think>", "<tool_call>", "<|start|>",
           "<|message|>", "<|return|>", "<|im_start", "|>", "<s>", "</s>", "<|endoftext|><|im_end|>"]
CONTROL = ["\x00", "\x01", "\x1b", "\x7f", "\x08"]
CODE = ["https://example.com/a/b?c=d&e=f", "foo_bar(baz)", "x+=1;", "/usr/bin/env", "C:\\path\\to", "a/b/c",
        "#include <stdio.h>", "    return 0;\n", "def f(x):\n    pass", "0x1F", "1e-10", "v1.2.3", "a-b_c.d"]


def piece(rng):
    k = rng.randrange(12)
    if k == 0:
        return rng.choice(WORDS) + (rng.choice(CONTRACTIONS) if rng.random() < 0.5 else "")
    if k == 1:
        return "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 14)))
    if k == 2:
        return rng.choice(SPACES)
    if k == 3:
        return "".join(rng.choice(PUNCT) for _ in range(rng.randint(1, 4)))
    if k == 4:
        return rng.choice(SCRIPTS)
    if k == 5:
        return rng.choice(EMOJI)
    if k == 6:
        return rng.choice(COMBINING)
    if k == 7:
        return rng.choice(SPECIAL)
    if k == 8:
        return rng.choice(CONTROL)
    if k == 9:
        return rng.choice(CODE)
    if k == 10:
        return rng.choice(["a" * 50, " " * 20, "1" * 20, "-" * 30, "ab" * 25, "\n" * 7, "é" * 12])
    w = "".join(rng.choice("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(rng.randint(1, 12)))
    return (" " if rng.random() < 0.6 else "") + w


def main():
    n, seed, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    rng = random.Random(seed)
    texts = ["", " ", "  ", "\n", "a", "Hello world", " leading", "trailing ", "it's", "IT'S", "don't",
             "12345678901234", "<|im_start|>user\nHi<|im_end|>\n", "  \n  \n", "\u0085", "\u180e"]
    while len(texts) < n:
        texts.append("".join(piece(rng) for _ in range(rng.randint(1, 30))))
    json.dump(texts, open(out, "w"))


if __name__ == "__main__":
    main()
