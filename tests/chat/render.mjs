// render.mjs: Hugging Face's own Jinja (npm @huggingface/jinja, the renderer transformers.js
// and node-llama-cpp use) applied to moet's chat templates.
//   node render.mjs JOBS.json  ->  one JSON line per job: {"text": "..."} or {"error": "..."}
// JOBS.json: [{"template": "...", "messages": [...], "add_generation_prompt": bool,
//              "bos_token": "<s>" | null, "eos_token": "</s>"}, ...]
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";

const require = createRequire(process.env.CHAT_JINJA_DIR + "/");
const { Template } = require("@huggingface/jinja");
const jobs = JSON.parse(readFileSync(process.argv[2], "utf8"));
const compiled = new Map();
for (const j of jobs) {
    try {
        if (!compiled.has(j.template)) compiled.set(j.template, new Template(j.template));
        const text = compiled.get(j.template).render({
            messages: j.messages, add_generation_prompt: j.add_generation_prompt,
            bos_token: j.bos_token, eos_token: j.eos_token,
        });
        console.log(JSON.stringify({ text }));
    } catch (e) {
        console.log(JSON.stringify({ error: String(e.message || e) }));
    }
}
