/* sample: logits -> next token. The kept set is built most likely first (ties: lower id
 * first), so top-k, top-p and the draw all walk the same order and a seed fixes the result. */
#include "model/sample.h"

#include "common/err.h"
#include "common/rng.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct sampler {
    int V;
    sample_params p;
    rng_state rng;
    float *z;       /* (V) logits after the repetition penalty */
    int *idx;       /* (V) kept ids, most likely first */
    double *w;      /* (V) their probabilities, renormalised over the kept set */
    uint8_t *seen;  /* (V) marks of the penalty, cleared after use */
};

int sample_check(const sample_params *p, char *err)
{
    if (!(p->temperature >= 0) || isinf(p->temperature))
        return err_set(err, "temperature must be >= 0 (0 = greedy), got %g", p->temperature);
    if (p->top_k < 0) return err_set(err, "top-k must be >= 0 (0 = off), got %d", p->top_k);
    if (!(p->top_p > 0 && p->top_p <= 1)) return err_set(err, "top-p must be in (0, 1] (1 = off), got %g", p->top_p);
    if (!(p->repetition_penalty > 0) || isinf(p->repetition_penalty))
        return err_set(err, "repetition penalty must be > 0 (1 = off), got %g", p->repetition_penalty);
    return 0;
}

int sample_create(sampler **out, int vocab, const sample_params *p, uint64_t seed, char *err)
{
    *out = NULL;
    if (sample_check(p, err)) return -1;
    if (vocab < 1) return err_set(err, "vocabulary of %d tokens", vocab);
    sampler *s = calloc(1, sizeof *s);
    if (!s) return err_set(err, "out of memory");
    s->V = vocab;
    s->p = *p;
    rng_seed(&s->rng, seed, 0x73616d706c65ULL); /* "sample" stream */
    s->z = malloc((size_t)vocab * sizeof *s->z);
    s->idx = malloc((size_t)vocab * sizeof *s->idx);
    s->w = malloc((size_t)vocab * sizeof *s->w);
    s->seen = calloc((size_t)vocab, 1);
    if (!s->z || !s->idx || !s->w || !s->seen) {
        sample_free(s);
        return err_set(err, "out of memory");
    }
    *out = s;
    return 0;
}

void sample_free(sampler *s)
{
    if (!s) return;
    free(s->z);
    free(s->idx);
    free(s->w);
    free(s->seen);
    free(s);
}

int32_t sample_argmax(const float *z, int V)
{
    int best = 0;
    for (int v = 1; v < V; v++)
        if (z[v] > z[best]) best = v;
    return best;
}

/* a ranks before b: higher logit, then lower id. */
static inline int before(const float *z, int a, int b) { return z[a] > z[b] || (z[a] == z[b] && a < b); }

static const float *sort_z; /* qsort has no context argument; samplers are used one thread at a time */
static int cmp_rank(const void *pa, const void *pb)
{
    int a = *(const int *)pa, b = *(const int *)pb;
    return before(sort_z, a, b) ? -1 : before(sort_z, b, a) ? 1 : 0;
}

static void sort_ranked(const float *z, int *idx, int n)
{
    sort_z = z;
    qsort(idx, (size_t)n, sizeof *idx, cmp_rank);
}

/* The k best ids of z (V) into idx, best first: a size-k heap whose root is the worst kept. */
static void top_k_ids(const float *z, int V, int k, int *idx)
{
    int n = 0;
    for (int v = 0; v < V; v++) {
        if (n == k && !before(z, v, idx[0])) continue;
        int i;
        if (n < k) { /* sift up */
            i = n++;
            while (i > 0 && before(z, idx[(i - 1) / 2], v)) {
                idx[i] = idx[(i - 1) / 2];
                i = (i - 1) / 2;
            }
        } else { /* replace the root, sift down */
            i = 0;
            for (;;) {
                int c = 2 * i + 1;
                if (c >= n) break;
                if (c + 1 < n && before(z, idx[c], idx[c + 1])) c++; /* the worse child */
                if (before(z, idx[c], v)) break; /* v is worse than both: it stays here */
                idx[i] = idx[c];
                i = c;
            }
        }
        idx[i] = v;
    }
    sort_ranked(z, idx, n);
}

/* Fill s->idx / s->w with the kept set (returns its size) for logits z (penalised). */
static int kept_set(sampler *s, const float *z)
{
    int V = s->V, k = s->p.top_k > 0 && s->p.top_k < V ? s->p.top_k : V;
    double T = s->p.temperature, top_p = s->p.top_p;
    if (T <= 0 || k == 1) {
        s->idx[0] = sample_argmax(z, V);
        s->w[0] = 1;
        return 1;
    }
    int n = k;
    if (k < V) top_k_ids(z, V, k, s->idx);
    else
        for (int v = 0; v < V; v++) s->idx[v] = v;
    /* softmax over the candidates at temperature T, in double */
    float mx = -INFINITY;
    for (int i = 0; i < n; i++) mx = z[s->idx[i]] > mx ? z[s->idx[i]] : mx;
    double sum = 0;
    for (int i = 0; i < n; i++) sum += s->w[i] = exp((z[s->idx[i]] - (double)mx) / T);
    if (top_p < 1) {
        if (k == V) { /* unsorted: only the most likely matter. Candidates with weight >= 1e-4 of
                         the best are a prefix of the ranked order; if they already hold top_p of
                         the mass, the nucleus lies inside them, so only they need sorting. */
            int m = 0;
            double big = 0;
            for (int i = 0; i < n; i++)
                if (s->w[i] >= 1e-4) big += s->w[i], s->idx[m++] = s->idx[i];
            if (big < top_p * sum) {
                m = n;
                for (int v = 0; v < V; v++) s->idx[v] = v;
            }
            n = m;
            sort_ranked(z, s->idx, n);
            for (int i = 0; i < n; i++) s->w[i] = exp((z[s->idx[i]] - (double)mx) / T);
        }
        double cum = 0, target = top_p * sum;
        int m = 0;
        while (m < n && cum < target) cum += s->w[m++]; /* keep while the mass before < top_p */
        n = m;
        sum = cum;
    }
    for (int i = 0; i < n; i++) s->w[i] /= sum;
    return n;
}

/* z = logits with the repetition penalty applied once per distinct seen id. */
static const float *penalised(sampler *s, const float *logits, const int32_t *hist, int n_hist)
{
    float r = s->p.repetition_penalty;
    if (r == 1 || !hist || n_hist <= 0) return logits;
    memcpy(s->z, logits, (size_t)s->V * sizeof *s->z);
    for (int i = 0; i < n_hist; i++) {
        int v = hist[i];
        if (v < 0 || v >= s->V || s->seen[v]) continue;
        s->seen[v] = 1;
        s->z[v] = s->z[v] > 0 ? s->z[v] / r : s->z[v] * r;
    }
    for (int i = 0; i < n_hist; i++)
        if (hist[i] >= 0 && hist[i] < s->V) s->seen[hist[i]] = 0;
    return s->z;
}

int sample_probs(sampler *s, const float *logits, const int32_t *history, int n_hist, float *probs)
{
    int n = kept_set(s, penalised(s, logits, history, n_hist));
    memset(probs, 0, (size_t)s->V * sizeof *probs);
    for (int i = 0; i < n; i++) probs[s->idx[i]] = (float)s->w[i];
    return n;
}

int32_t sample_next(sampler *s, const float *logits, const int32_t *history, int n_hist)
{
    int n = kept_set(s, penalised(s, logits, history, n_hist));
    if (n == 1) return s->idx[0];
    double u = rng_uniform(&s->rng), cum = 0;
    for (int i = 0; i < n - 1; i++) {
        cum += s->w[i];
        if (u < cum) return s->idx[i];
    }
    return s->idx[n - 1];
}
