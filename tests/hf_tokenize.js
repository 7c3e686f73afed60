// Encode texts with Hugging Face's own tokenizers (npm package `tokenizers`, the Rust
// library's Node binding): node hf_tokenize.js TOKENIZER.json TEXTS.json -> one line of
// space-separated ids per text (BOS added as the tokenizer's post-processor says).
const fs = require("fs");
const { Tokenizer } = require(process.env.HFTOK_DIR + "/node_modules/tokenizers");
const tok = Tokenizer.fromFile(process.argv[2]);
const texts = JSON.parse(fs.readFileSync(process.argv[3], "utf8"));
(async () => {
  for (const t of texts) {
    const e = await tok.encode(t);
    console.log(e.getIds().join(" "));
  }
})();
