// Encode texts with Hugging Face's own tokenizers (npm package `tokenizers`, the Rust
// library's Node binding): node hf_tokenize.js TOKENIZER.json TEXTS.json [--json]
// -> one line per text: its ids separated by spaces (BOS added as the tokenizer's
// post-processor says), or with --json {"ids": [...], "decoded": decode(ids)}.
const fs = require("fs");
const { Tokenizer } = require(process.env.HFTOK_DIR + "/node_modules/tokenizers");
const tok = Tokenizer.fromFile(process.argv[2]);
const texts = JSON.parse(fs.readFileSync(process.argv[3], "utf8"));
const json = process.argv[4] === "--json";
(async () => {
  const out = [];
  for (const t of texts) {
    const ids = (await tok.encode(t)).getIds();
    out.push(json ? JSON.stringify({ ids: Array.from(ids), decoded: await tok.decode(Array.from(ids), false) })
                  : ids.join(" "));
  }
  process.stdout.write(out.join("\n") + "\n");
})();
