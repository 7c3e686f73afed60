/* test_config: the YAML run config as a spec — defaults, every type/range error with its
 * message, unknown keys with suggestions, overrides, print -> parse round trips. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "common/err.h"
#include "train/config.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* The smallest valid config: the required keys and nothing else. */
static const char *minimal =
    "model:\n"                           /* line 1 */
    "  arch: {hidden_size: 64}\n"
    "data:\n"
    "  train: [shard.h5]\n"
    "  seq_len: 128\n"                   /* line 5 */
    "train:\n"
    "  batch_size: 4\n"
    "  max_steps: 100\n"
    "optim:\n"
    "  lr: 1.0e-3\n";                    /* line 10 */

/* Parse `yaml` with the NULL-terminated overrides that follow; returns cfg_parse_string's rc. */
static int parse(cfg *c, char *err, const char *yaml, ...)
{
    char *ov[16];
    int n = 0;
    va_list ap;
    va_start(ap, yaml);
    for (char *s; n < 16 && (s = va_arg(ap, char *));) ov[n++] = s;
    va_end(ap);
    err[0] = 0;
    return cfg_parse_string(c, yaml, ov, n, err);
}

/* The minimal config plus one override must fail with exactly this message. */
static void expect_error(const char *override, const char *want)
{
    cfg c;
    char err[ERR_MAX];
    if (parse(&c, err, minimal, override, NULL) == 0) fail_msg("%s: accepted, wanted: %s", override, want);
    if (strcmp(err, want)) fail_msg("%s:\n   got: %s\n  want: %s", override, err, want);
    cfg_free(&c);
}

static void test_minimal_config_fills_every_default(void **state)
{
    cfg c;
    char err[ERR_MAX];
    assert_int_equal(parse(&c, err, minimal, NULL), 0);
    assert_string_equal(c.run.name, "run");
    assert_string_equal(c.run.dir, "runs/run");
    assert_int_equal(c.run.seed, 0);
    assert_null(c.model.init_from);
    assert_string_equal(c.model.arch_json, "{\"hidden_size\":64}");
    assert_int_equal(c.model.aux_coef_set, 0);
    assert_float_equal(c.model.aux_coef, 0.02, 0);
    assert_float_equal(c.model.z_coef, 0, 0);
    assert_null(c.tokenizer);
    assert_int_equal(c.data.n_train, 1);
    assert_string_equal(c.data.train[0], "shard.h5");
    assert_int_equal(c.data.n_val, 0);
    assert_int_equal(c.data.seq_len, 128);
    assert_int_equal(c.data.shuffle, 1);
    assert_int_equal(c.data.document_mask, 0);
    assert_int_equal(c.train.batch_size, 4);
    assert_int_equal(c.train.grad_accum, 1);
    assert_int_equal(c.train.max_steps, 100);
    assert_int_equal(c.train.log_every, 1);
    assert_int_equal(c.train.eval_every, 0);
    assert_int_equal(c.train.eval_at_start, 0); /* no data.val */
    assert_int_equal(c.train.eval_batches, 0);
    assert_int_equal(c.train.save_every, 0);
    assert_int_equal(c.train.keep_checkpoints, 3);
    assert_int_equal(c.train.resume, CFG_RESUME_AUTO);
    assert_null(c.train.resume_path);
    assert_float_equal(c.optim.lr, 1e-3, 0);
    assert_float_equal(c.optim.beta1, 0.9, 0);
    assert_float_equal(c.optim.beta2, 0.95, 0);
    assert_float_equal(c.optim.eps, 1e-8, 0);
    assert_float_equal(c.optim.weight_decay, 0, 0);
    assert_float_equal(c.optim.grad_clip, 1.0, 0);
    assert_int_equal(c.optim.schedule, SCHED_CONSTANT);
    assert_int_equal(c.optim.warmup_steps, 0);
    assert_float_equal(c.optim.min_lr_ratio, 0.1, 0);
    assert_int_equal(c.optim.decay_steps, 20); /* the last 20% of max_steps */
    assert_int_equal(c.lora.enabled, 0);
    assert_int_equal(c.lora.r, 0);
    assert_float_equal(c.lora.alpha, 0, 0);
    assert_float_equal(c.lora.dropout, 0, 0);
    assert_int_equal(c.lora.rslora, 0);
    assert_int_equal(c.lora.n_targets, 4);
    const char *want[] = {"q_proj", "k_proj", "v_proj", "o_proj"};
    for (int i = 0; i < 4; i++) assert_string_equal(c.lora.targets[i], want[i]);
    assert_null(c.lora.init_from);
    assert_int_equal(c.lora.train_router, 0);
    cfg_free(&c);
}

static void test_full_file_reads_every_key(void **state)
{
    cfg c;
    char err[ERR_MAX];
    if (cfg_load(&c, "tests/data/cfg_full.yaml", NULL, 0, err)) fail_msg("%s", err);
    assert_string_equal(c.run.name, "full");
    assert_string_equal(c.run.dir, "/tmp/moet-runs/full");
    assert_int_equal(c.run.seed, 1234);
    assert_string_equal(c.model.init_from, "../shared/golden/tiny-mixtral/model");
    assert_string_equal(c.model.arch_json, "{\"rope_theta\":1000000,\"sliding_window\":null}");
    assert_int_equal(c.model.aux_coef_set, 1);
    assert_float_equal(c.model.aux_coef, 0.001, 0);
    assert_float_equal(c.model.z_coef, 0.0001, 0);
    assert_string_equal(c.tokenizer, "../shared/golden/tiny-mixtral/model/tokenizer.json");
    assert_int_equal(c.data.n_train, 2);
    assert_string_equal(c.data.train[1], "data/extra shard.h5");
    assert_int_equal(c.data.n_val, 1);
    assert_string_equal(c.data.val[0], "data/val.h5");
    assert_int_equal(c.data.seq_len, 4096);
    assert_int_equal(c.data.shuffle, 0);
    assert_int_equal(c.data.document_mask, 1);
    assert_int_equal(c.train.grad_accum, 8);
    assert_int_equal(c.train.log_every, 10);
    assert_int_equal(c.train.eval_every, 100);
    assert_int_equal(c.train.eval_at_start, 1); /* data.val lists files */
    assert_int_equal(c.train.eval_batches, 20);
    assert_int_equal(c.train.save_every, 250);
    assert_int_equal(c.train.keep_checkpoints, 0);
    assert_int_equal(c.train.resume, CFG_RESUME_NEVER);
    assert_float_equal(c.optim.lr, 2e-5, 0);
    assert_float_equal(c.optim.beta1, 0.8, 0);
    assert_float_equal(c.optim.beta2, 0.999, 0);
    assert_float_equal(c.optim.eps, 1e-6, 0);
    assert_float_equal(c.optim.weight_decay, 0.1, 0);
    assert_float_equal(c.optim.grad_clip, 0.5, 0);
    assert_int_equal(c.optim.schedule, SCHED_WSD);
    assert_int_equal(c.optim.warmup_steps, 50);
    assert_float_equal(c.optim.min_lr_ratio, 0, 0);
    assert_int_equal(c.optim.decay_steps, 300);
    assert_int_equal(c.lora.enabled, 1);
    assert_int_equal(c.lora.r, 16);
    assert_float_equal(c.lora.alpha, 32, 0);
    assert_float_equal(c.lora.dropout, 0.05, 0);
    assert_int_equal(c.lora.rslora, 1);
    assert_int_equal(c.lora.n_targets, 5);
    assert_string_equal(c.lora.targets[4], "w3");
    assert_string_equal(c.lora.init_from, "adapters/previous");
    assert_int_equal(c.lora.train_router, 1);

    adamw_cfg a;
    sched_cfg s;
    cfg_adamw(&c, &a);
    cfg_sched(&c, &s);
    assert_true(a.beta1 == 0.8 && a.beta2 == 0.999 && a.eps == 1e-6 && a.weight_decay == 0.1);
    assert_true(s.kind == SCHED_WSD && s.lr == 2e-5 && s.warmup_steps == 50 &&
                s.max_steps == 1000 && s.min_lr_ratio == 0 && s.decay_steps == 300);
    cfg_free(&c);
}

static void test_type_and_range_errors_name_the_key_and_the_value(void **state)
{
    static const char *cases[][2] = {
        {"optim.lr=fast", "command line: optim.lr: expected a positive number, got \"fast\""},
        {"optim.lr=0", "command line: optim.lr: expected a positive number, got \"0\""},
        {"optim.lr=-1e-3", "command line: optim.lr: expected a positive number, got \"-1e-3\""},
        {"optim.lr=[1]", "command line: optim.lr: expected a positive number, got a list"},
        {"optim.lr=.nan", "command line: optim.lr: expected a positive number, got \".nan\""},
        {"optim.betas=[0.9, 1.0]", "command line: optim.betas[1]: expected a number in [0, 1), got \"1.0\""},
        {"optim.betas=[0.9]", "command line: optim.betas: expected a list of two numbers [beta1, beta2], got a list"},
        {"optim.betas=0.9", "command line: optim.betas: expected a list of two numbers [beta1, beta2], got \"0.9\""},
        {"optim.eps=0", "command line: optim.eps: expected a positive number, got \"0\""},
        {"optim.weight_decay=-0.1", "command line: optim.weight_decay: expected a number >= 0, got \"-0.1\""},
        {"optim.grad_clip=high", "command line: optim.grad_clip: expected a number >= 0, got \"high\""},
        {"optim.schedule=cosin", "command line: optim.schedule: expected one of constant, cosine, linear, wsd, got \"cosin\""},
        {"optim.min_lr_ratio=1.5", "command line: optim.min_lr_ratio: expected a number in [0, 1], got \"1.5\""},
        {"optim.warmup_steps=-1", "command line: optim.warmup_steps: expected an integer >= 0, got \"-1\""},
        {"optim.warmup_steps=2.5", "command line: optim.warmup_steps: expected an integer >= 0, got \"2.5\""},
        {"optim.warmup_steps=200", "command line: optim.warmup_steps: 200 is more than train.max_steps (100)"},
        {"lora.r=0", "command line: lora.r: expected an integer in [1, 65536], got \"0\""},
        {"lora.r=2000000000", "command line: lora.r: expected an integer in [1, 65536], got \"2000000000\""},
        {"lora.alpha=0", "command line: lora.alpha: expected a positive number, got \"0\""},
        {"lora.dropout=1", "command line: lora.dropout: expected a number in [0, 1), got \"1\""},
        {"lora.enabled=maybe", "command line: lora.enabled: expected true or false, got \"maybe\""},
        {"lora.enabled=true", "command line: lora.r: required when lora.enabled is true"},
        {"lora.targets=[q_proj, fc1]", "command line: lora.targets[1]: expected one of q_proj, k_proj, v_proj, o_proj and the MLP's w1, w2, w3 (Mixtral) or gate_proj, down_proj, up_proj, got \"fc1\""},
        {"lora.targets=[w1, gate_proj]", "command line: lora.targets: 'gate_proj' is listed twice"},
        {"lora.targets=[gate]", "command line: lora.targets: 'gate' is not a LoRA target (lora.train_router: true trains the router weights fully)"},
        {"lora.targets=[w1, w1]", "command line: lora.targets: 'w1' is listed twice"},
        {"train.batch_size=0", "command line: train.batch_size: expected an integer >= 1, got \"0\""},
        {"train.grad_accum=0", "command line: train.grad_accum: expected an integer >= 1, got \"0\""},
        {"train.max_steps=ten", "command line: train.max_steps: expected an integer >= 1, got \"ten\""},
        {"train.eval_every=10", "command line: train.eval_every: 10 but data.val lists no files"},
        {"train.eval_at_start=true", "command line: train.eval_at_start: true but data.val lists no files"},
        {"train.eval_at_start=maybe", "command line: train.eval_at_start: expected true or false, got \"maybe\""},
        {"lora.init_from=adapters/a", "command line: lora.init_from: an adapter is given but lora.enabled is false"},
        {"train.keep_checkpoints=-3", "command line: train.keep_checkpoints: expected an integer >= 0, got \"-3\""},
        {"train.resume=\"\"", "command line: train.resume: expected auto, never or a checkpoint directory, got \"\""},
        {"data.seq_len=1", "command line: data.seq_len: expected an integer >= 2, got \"1\""},
        {"data.shuffle=yes", "command line: data.shuffle: expected true or false, got \"yes\""},
        {"data.train=[]", "command line: data.train: expected at least one file, got a list"},
        {"data.train={a: 1}", "command line: data.train: expected a list of strings, got a mapping"},
        {"data.val=[a.h5, [b.h5]]", "command line: data.val[1]: expected a non-empty string, got a list"},
        {"run.seed=-1", "command line: run.seed: expected an integer in [0, 2^53], got \"-1\""},
        {"run.seed=9007199254740993", "command line: run.seed: expected an integer in [0, 2^53], got \"9007199254740993\""},
        {"run.name=\"\"", "command line: run.name: expected a non-empty string, got \"\""},
        {"run=5", "command line: run: expected a mapping of keys, got \"5\""},
        {"tokenizer=[a.json]", "command line: tokenizer: expected a non-empty string, got a list"},
        {"model.arch=5", "command line: model.arch: expected a mapping of config.json keys, got \"5\""},
        {"model.router_aux_loss_coef=-1", "command line: model.router_aux_loss_coef: expected a number >= 0, got \"-1\""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) expect_error(cases[i][0], cases[i][1]);
    cfg c;
    char err[ERR_MAX];
    assert_int_equal(parse(&c, err, minimal, "optim.schedule=wsd", "optim.warmup_steps=90", "optim.decay_steps=20", NULL),
                     -1);
    assert_string_equal(err, "command line: optim.decay_steps: warmup_steps + decay_steps (90 + 20) is more than "
                             "train.max_steps (100)");
    /* not given, wsd's decay is the last fifth, or what the warmup leaves */
    assert_int_equal(parse(&c, err, minimal, "optim.schedule=wsd", "optim.warmup_steps=90", NULL), 0);
    assert_int_equal(c.optim.decay_steps, 10);
    cfg_free(&c);
    /* other schedules have no decay phase to set */
    assert_int_equal(parse(&c, err, minimal, "optim.schedule=cosine", "optim.decay_steps=20", NULL), -1);
    assert_string_equal(err, "command line: optim.decay_steps: only the wsd schedule has a decay phase (schedule is "
                             "cosine)");
}

static void test_errors_in_the_file_carry_its_line_number(void **state)
{
    cfg c;
    char err[ERR_MAX], text[1024];
    snprintf(text, sizeof text, "%s  betas: [0.9, 1.5]\n", minimal); /* line 11 */
    assert_int_equal(parse(&c, err, text, NULL), -1);
    assert_string_equal(err, "line 11: optim.betas[1]: expected a number in [0, 1), got \"1.5\"");
    assert_int_equal(parse(&c, err, "data:\n  train: x.h5\n  seq_len: 1\n", NULL), -1);
    assert_string_equal(err, "line 3: data.seq_len: expected an integer >= 2, got \"1\"");
}

static void test_unknown_keys_are_errors_with_the_nearest_key_suggested(void **state)
{
    cfg c;
    char err[ERR_MAX], text[1024];
    snprintf(text, sizeof text, "%s  learning_rate: 3e-4\n", minimal);
    assert_int_equal(parse(&c, err, text, NULL), -1);
    assert_string_equal(err, "line 11: unknown key 'optim.learning_rate' (did you mean 'optim.lr'?)");
    snprintf(text, sizeof text, "%soptimizer:\n  lr: 1\n", minimal);
    assert_int_equal(parse(&c, err, text, NULL), -1);
    assert_string_equal(err, "line 11: unknown section 'optimizer' (did you mean 'optim'?)");

    static const char *cases[][2] = {
        {"optim.learning_rate=3e-4", "command line: unknown key 'optim.learning_rate' (did you mean 'optim.lr'?)"},
        {"train.lr=1", "command line: unknown key 'train.lr' (did you mean 'optim.lr'?)"},
        {"optim.warmup=10", "command line: unknown key 'optim.warmup' (did you mean 'optim.warmup_steps'?)"},
        {"optim.weight_decy=0.1", "command line: unknown key 'optim.weight_decy' (did you mean 'optim.weight_decay'?)"},
        {"optim.Betas=[0.9,0.9]", "command line: unknown key 'optim.Betas' (did you mean 'optim.betas'?)"},
        {"lora.rank=8", "command line: unknown key 'lora.rank' (did you mean 'lora.r'?)"},
        {"data.tokenizer=t.json", "command line: unknown key 'data.tokenizer' (did you mean 'tokenizer'?)"},
        {"seed=1", "command line: unknown section 'seed' (did you mean 'run.seed'?)"},
        {"trian.max_steps=1", "command line: unknown section 'trian' (did you mean 'train'?)"},
        {"data.gradient_accumulation_steps=4", "command line: unknown key 'data.gradient_accumulation_steps' (did you mean 'train.grad_accum'?)"},
        {"run.zzz=1", "command line: unknown key 'run.zzz' (known: name, dir, seed)"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) expect_error(cases[i][0], cases[i][1]);
}

static void test_overrides_set_scalars_lists_and_nested_arch_keys(void **state)
{
    cfg c;
    char err[ERR_MAX];
    int rc = parse(&c, err, minimal, "optim.lr=1e-4", "data.train=[a.h5, 'b c.h5']",
                   "model.arch.hidden_size=128", "model.arch.rope_parameters.rope_theta=1e6",
                   "lora.enabled=true", "lora.r=8", "lora.alpha=16", "run.name=my run",
                   "train.resume=runs/x/checkpoints/step_00000010", NULL);
    if (rc) fail_msg("%s", err);
    assert_float_equal(c.optim.lr, 1e-4, 0);
    assert_int_equal(c.data.n_train, 2);
    assert_string_equal(c.data.train[0], "a.h5");
    assert_string_equal(c.data.train[1], "b c.h5");
    assert_string_equal(c.model.arch_json, "{\"hidden_size\":128,\"rope_parameters\":{\"rope_theta\":1000000}}");
    assert_true(c.lora.enabled && c.lora.r == 8 && c.lora.alpha == 16);
    assert_string_equal(c.run.name, "my run");
    assert_string_equal(c.run.dir, "runs/my run");
    assert_int_equal(c.train.resume, CFG_RESUME_PATH);
    assert_string_equal(c.train.resume_path, "runs/x/checkpoints/step_00000010");
    cfg_free(&c);

    /* Later overrides win; an empty value resets a key to its default. */
    assert_int_equal(parse(&c, err, minimal, "optim.lr=1", "optim.lr=2", "data.shuffle=false",
                           "data.shuffle=", "train.resume=false", NULL), 0);
    assert_float_equal(c.optim.lr, 2, 0);
    assert_int_equal(c.data.shuffle, 1);
    assert_int_equal(c.train.resume, CFG_RESUME_NEVER);
    cfg_free(&c);

    /* A whole config can come from overrides. */
    assert_int_equal(parse(&c, err, "", "model.init_from=m", "data.train=t.h5", "data.seq_len=8",
                           "train.batch_size=1", "train.max_steps=1", "optim.lr=1", NULL), 0);
    assert_string_equal(c.model.init_from, "m");
    cfg_free(&c);

    static const char *bad[][2] = {
        {"optim.lr", "command line: 'optim.lr': expected key.path=value"},
        {"=3", "command line: '=3': expected key.path=value"},
        {"optim..lr=3", "command line: 'optim..lr=3': bad key path 'optim..lr'"},
        {"optim.lr.x=3", "command line: cannot set 'optim.lr.x': 'optim.lr' is not a mapping"},
        {"data.train=[a.h5,", "command line: 'data.train=[a.h5,': YAML syntax error: did not find expected node content"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) expect_error(bad[i][0], bad[i][1]);
}

static void test_arch_keeps_yaml_types_as_json(void **state)
{
    cfg c;
    char err[ERR_MAX];
    const char *yaml =
        "model:\n"
        "  arch:\n"
        "    model_type: mixtral\n"
        "    vocab_size: 32000\n"
        "    rms_norm_eps: 1e-5\n"
        "    sliding_window: null\n"
        "    tie_word_embeddings: false\n"
        "    bos_token_id: \"1\"\n"
        "    architectures: [MixtralForCausalLM]\n"
        "    rope_parameters: {rope_theta: 1000000.0, rope_type: default}\n"
        "data: {train: a.h5, seq_len: 8}\n"
        "train: {batch_size: 1, max_steps: 1}\n"
        "optim: {lr: 1}\n";
    if (parse(&c, err, yaml, NULL)) fail_msg("%s", err);
    cJSON *j = cJSON_Parse(c.model.arch_json);
    assert_non_null(j);
    assert_string_equal(cJSON_GetObjectItem(j, "model_type")->valuestring, "mixtral");
    assert_float_equal(cJSON_GetObjectItem(j, "vocab_size")->valuedouble, 32000, 0);
    assert_float_equal(cJSON_GetObjectItem(j, "rms_norm_eps")->valuedouble, 1e-5, 0);
    assert_true(cJSON_IsNull(cJSON_GetObjectItem(j, "sliding_window")));
    assert_true(cJSON_IsFalse(cJSON_GetObjectItem(j, "tie_word_embeddings")));
    assert_true(cJSON_IsString(cJSON_GetObjectItem(j, "bos_token_id"))); /* quoted stays a string */
    assert_string_equal(cJSON_GetArrayItem(cJSON_GetObjectItem(j, "architectures"), 0)->valuestring,
                        "MixtralForCausalLM");
    cJSON *rope = cJSON_GetObjectItem(j, "rope_parameters");
    assert_float_equal(cJSON_GetObjectItem(rope, "rope_theta")->valuedouble, 1e6, 0);
    cJSON_Delete(j);
    cfg_free(&c);
}

static void test_missing_required_keys_are_named(void **state)
{
    /* null is the same as absent, so an override to null removes a key. */
    static const char *cases[][2] = {
        {"train.batch_size=null", "missing required key 'train.batch_size'"},
        {"train.max_steps=~", "missing required key 'train.max_steps'"},
        {"optim.lr=", "missing required key 'optim.lr'"},
        {"data.seq_len=null", "missing required key 'data.seq_len'"},
        {"data.train=null", "missing required key 'data.train'"},
        {"optim=null", "missing required key 'optim.lr'"},
        {"model.arch=null", "model: give model.init_from (an HF model dir) or model.arch (config.json "
                            "keys for a random init)"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) expect_error(cases[i][0], cases[i][1]);
    cfg c;
    char err[ERR_MAX];
    assert_int_equal(parse(&c, err, "# nothing\n", NULL), -1);
    assert_string_equal(err, "the config is empty");
    assert_int_equal(parse(&c, err, "- a\n- b\n", NULL), -1);
    assert_string_equal(err, "line 1: config: expected a mapping of sections (run, model, data, ...), got a list");
}

static void test_bad_yaml_syntax_reports_the_line(void **state)
{
    cfg c;
    char err[ERR_MAX];
    assert_int_equal(parse(&c, err, "run:\n  name: x\n   seed: 1\n", NULL), -1);
    assert_string_equal(err, "line 3: YAML syntax error: mapping values are not allowed in this context");
    assert_int_equal(cfg_load(&c, "tests/data/cfg_bad_syntax.yaml", NULL, 0, err), -1);
    assert_string_equal(err, "tests/data/cfg_bad_syntax.yaml:6: YAML syntax error: did not find "
                             "expected ',' or ']' (while parsing a flow sequence on line 5)");
    assert_int_equal(parse(&c, err, "optim:\n  lr: 1\n  lr: 2\n", NULL), -1);
    assert_string_equal(err, "line 3: duplicate key 'optim.lr'");
    assert_int_equal(parse(&c, err, "optim: {lr: 1}\n---\noptim: {lr: 2}\n", NULL), -1);
    assert_string_equal(err, "line 3: a second YAML document ('---'): a config is one document");
    /* Aliases that loop or explode are refused, not followed. */
    assert_int_equal(parse(&c, err, "a: &a [*a]\n", NULL), -1);
    assert_non_null(strstr(err, "too deep or too large"));
    assert_int_equal(parse(&c, err,
                           "a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                           "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
                           "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\n",
                           NULL), -1);
    assert_non_null(strstr(err, "too deep or too large"));
    assert_int_equal(cfg_load(&c, "tests/data/cfg_no_such_file.yaml", NULL, 0, err), -1);
    assert_string_equal(err, "tests/data/cfg_no_such_file.yaml: No such file or directory");
    assert_int_equal(cfg_load(&c, "tests/data", NULL, 0, err), -1);
    assert_string_equal(err, "tests/data: Is a directory");
    cfg_free(&c); /* a failed load leaves c empty: freeing is safe */
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

/* Issue 14: 100,000 nested levels took libyaml 68 s to refuse; depth and size are now bounded
 * before libyaml builds anything (each case well under a second here; allowed: 5 s). 64 levels
 * is the limit, 4096 keys per mapping, 1 MB of text; a long list is fine. */
static void test_deep_wide_or_huge_yaml_is_refused_at_once(void **state)
{
    cfg c;
    char err[ERR_MAX];
    size_t n = 2 * 100000 + 16;
    char *deep = malloc(n), *t;
    t = deep + sprintf(deep, "a: ");
    for (int i = 0; i < 100000; i++) *t++ = '[';
    for (int i = 0; i < 100000; i++) *t++ = ']';
    *t = 0;
    char *dashes = malloc(n);
    for (int i = 0; i < 100000; i++) memcpy(dashes + 2 * i, "- ", 2);
    strcpy(dashes + 200000, "x");
    char *d65 = malloc(300), *d64 = malloc(300);
    t = d65 + sprintf(d65, "run: ");
    for (int i = 0; i < 64; i++) *t++ = '[';
    for (int i = 0; i < 64; i++) *t++ = ']';
    *t = 0;
    strcpy(d64, d65);
    d64[strlen(d64) - 1] = 0, memmove(d64 + 5, d64 + 6, strlen(d64 + 6) + 1); /* one level less */
    char *keys = malloc(5000 * 16), *big = malloc((1 << 20) + 16);
    t = keys;
    for (int i = 0; i < 4097; i++) t += sprintf(t, "k%d: 1\n", i);
    memset(big, '#', (1 << 20) + 1);
    big[(1 << 20) + 1] = 0;
    const struct { const char *what; char *text; const char *want; } cases[] = {
        {"100,000 flow levels", deep, "line 1: document nested deeper than 64 levels"},
        {"100,000 block levels", dashes, "line 1: document nested deeper than 64 levels"},
        {"65 levels (the mapping is the first)", d65, "line 1: document nested deeper"},
        {"64 levels: parsed, then checked", d64, "line 1: run: expected a mapping of keys"},
        {"4097 keys", keys, "line 4097: a mapping with more than 4096 keys"},
        {"1 MB + 1 byte", big, "line 1: more than 1 MB of YAML"},
    };
    for (int i = 0; i < 6; i++) {
        double t0 = now_s();
        assert_int_equal(parse(&c, err, cases[i].text, NULL), -1);
        double dt = now_s() - t0;
        printf("    %-38s %.3f s: %s\n", cases[i].what, dt, err);
        assert_non_null(strstr(err, cases[i].want));
        assert_true(dt < 5.0);
    }
    /* the override values go through the same parser */
    char *ov = malloc(n);
    t = ov + sprintf(ov, "data.train=");
    for (int i = 0; i < 70; i++) *t++ = '[';
    *t = 0;
    assert_int_equal(parse(&c, err, minimal, ov, NULL), -1);
    assert_non_null(strstr(err, "document nested deeper than 64 levels"));
    /* 20,000 list items: fine, and linear (the arrays grow by doubling) */
    char *list = malloc(20000 * 12 + 200);
    t = list + sprintf(list, "data.val=[");
    for (int i = 0; i < 20000; i++) t += sprintf(t, "%sv%d.h5", i ? ", " : "", i);
    sprintf(t, "]");
    if (parse(&c, err, minimal, list, NULL)) fail_msg("%s", err);
    assert_int_equal(c.data.n_val, 20000);
    assert_string_equal(c.data.val[19999], "v19999.h5");
    cfg_free(&c);
    free(deep), free(dashes), free(d65), free(d64), free(keys), free(big), free(ov), free(list);
}

/* Keys and values echoed in messages come quoted: control bytes, ESC and invalid UTF-8 as
 * \xHH, never raw (issue 14). */
static void test_messages_quote_what_the_config_says(void **state)
{
    cfg c;
    char err[ERR_MAX];
    assert_int_equal(parse(&c, err, "\"r\\eun\": 1\n", NULL), -1);
    assert_string_equal(err, "line 1: unknown section 'r\\x1Bun' (did you mean 'run'?)");
    assert_int_equal(parse(&c, err, minimal, "optim.l\x1br=1", NULL), -1);
    assert_string_equal(err, "command line: unknown key 'optim.l\\x1Br' (did you mean 'optim.lr'?)");
    assert_int_equal(parse(&c, err, minimal, "optim.lr=\"\\e[31m\\u0085\\\"\"", NULL), -1);
    assert_string_equal(err, "command line: optim.lr: expected a positive number, got \"\\x1B[31m\\xC2\\x85\\\"\"");
    assert_int_equal(parse(&c, err, minimal, "lora.targets=[\"q\\tproj\"]", "lora.enabled=true", "lora.r=2",
                           "lora.alpha=2", NULL), -1);
    assert_non_null(strstr(err, "got \"q\\x09proj\""));
    assert_int_equal(parse(&c, err, minimal, "model.arch.hidden\x7fsize=2", NULL), -1);
    assert_non_null(strstr(err, "unknown key 'model.arch.hidden\\x7Fsize'"));
    assert_int_equal(parse(&c, err, minimal, "optim\x01=2", NULL), -1);
    assert_non_null(strstr(err, "unknown section 'optim\\x01'"));
    for (const char *p = err; *p; p++) assert_true(*p >= 0x20 && *p < 0x7f);
}

/* Field-by-field equality, so a key that print or JSON drops shows up by name. */
static void assert_cfg_equal(const cfg *a, const cfg *b)
{
#define SAME_STR(f) do { if ((a->f == NULL) != (b->f == NULL) || (a->f && strcmp(a->f, b->f))) \
        fail_msg(#f ": %s vs %s", a->f ? a->f : "NULL", b->f ? b->f : "NULL"); } while (0)
#define SAME(f) do { if (a->f != b->f) fail_msg(#f " differs"); } while (0)
#define SAME_LIST(f, n) do { SAME(n); for (int i_ = 0; i_ < a->n; i_++) SAME_STR(f[i_]); } while (0)
    SAME_STR(run.name); SAME_STR(run.dir); SAME(run.seed);
    SAME_STR(model.init_from); SAME_STR(model.arch_json); SAME(model.aux_coef);
    SAME(model.aux_coef_set); SAME(model.z_coef); SAME_STR(tokenizer);
    SAME_LIST(data.train, data.n_train); SAME_LIST(data.val, data.n_val);
    SAME(data.seq_len); SAME(data.shuffle); SAME(data.document_mask);
    SAME(train.batch_size); SAME(train.grad_accum); SAME(train.max_steps); SAME(train.log_every);
    SAME(train.eval_every); SAME(train.eval_batches); SAME(train.save_every);
    SAME(train.keep_checkpoints); SAME(train.resume); SAME_STR(train.resume_path);
    SAME(optim.lr); SAME(optim.beta1); SAME(optim.beta2); SAME(optim.eps); SAME(optim.weight_decay);
    SAME(optim.grad_clip); SAME(optim.schedule); SAME(optim.warmup_steps);
    SAME(optim.min_lr_ratio); SAME(optim.decay_steps);
    SAME(lora.enabled); SAME(lora.r); SAME(lora.alpha); SAME(lora.dropout); SAME(lora.rslora);
    SAME_LIST(lora.targets, lora.n_targets); SAME_STR(lora.init_from); SAME(lora.train_router);
#undef SAME_STR
#undef SAME
#undef SAME_LIST
}

static void round_trip(const cfg *c)
{
    char *text = NULL, err[ERR_MAX];
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    cfg_print_yaml(c, f);
    fclose(f);
    cfg back;
    if (cfg_parse_string(&back, text, NULL, 0, err)) fail_msg("%s in:\n%s", err, text);
    assert_cfg_equal(c, &back);
    cfg_free(&back);
    free(text);

    char *json = cfg_to_json(c), *json2;
    assert_non_null(json);
    if (cfg_from_json(&back, json, err)) fail_msg("%s in:\n%s", err, json);
    assert_cfg_equal(c, &back);
    json2 = cfg_to_json(&back);
    assert_string_equal(json, json2);
    cfg_free(&back);
    free(json);
    free(json2);
}

static void test_print_and_json_round_trip_to_an_equal_config(void **state)
{
    cfg c;
    char err[ERR_MAX];
    if (cfg_load(&c, "tests/data/cfg_full.yaml", NULL, 0, err)) fail_msg("%s", err);
    round_trip(&c); /* every key differs from its default, so a dropped key is caught */
    cfg_free(&c);
    assert_int_equal(parse(&c, err, minimal, NULL), 0);
    round_trip(&c);
    cfg_free(&c);
    /* Values that need care when printed: strings that look typed, quotes, escapes. */
    if (parse(&c, err, minimal, "run.name=\"yes\"", "tokenizer=\"1e5\"", "train.resume=\"true\"",
              "data.val=[\"a \\\"b\\\"\\n\", 'x: y', '#z', null.h5]", "optim.lr=0.1",
              "model.arch={architectures: [\"odd: value\", 1, {a: b}], pad_token_id: ~}", NULL))
        fail_msg("%s", err);
    assert_int_equal(c.train.resume, CFG_RESUME_PATH); /* quoted "true" is a path, not a bool */
    assert_string_equal(c.data.val[0], "a \"b\"\n");
    round_trip(&c);
    cfg_free(&c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_minimal_config_fills_every_default),
        cmocka_unit_test(test_full_file_reads_every_key),
        cmocka_unit_test(test_type_and_range_errors_name_the_key_and_the_value),
        cmocka_unit_test(test_errors_in_the_file_carry_its_line_number),
        cmocka_unit_test(test_unknown_keys_are_errors_with_the_nearest_key_suggested),
        cmocka_unit_test(test_overrides_set_scalars_lists_and_nested_arch_keys),
        cmocka_unit_test(test_arch_keeps_yaml_types_as_json),
        cmocka_unit_test(test_missing_required_keys_are_named),
        cmocka_unit_test(test_bad_yaml_syntax_reports_the_line),
        cmocka_unit_test(test_deep_wide_or_huge_yaml_is_refused_at_once),
        cmocka_unit_test(test_messages_quote_what_the_config_says),
        cmocka_unit_test(test_print_and_json_round_trip_to_an_equal_config),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
