/* distkg's compiled CPU kernels: loops over [B, E] float32 rows that torch would run as many
 * separate passes over main memory. No torch headers: plain C, built by distkg/kernels/build.py with
 * the system C compiler; ops.cpp registers them as torch operators (torch.ops.distkg.*).
 *
 * distkg_fused_rows: the softmax-based distillation terms of one stage (kd, ce, llm_huber,
 * llm_supervised; see distkg/distill/fused.py for the formulas), one row at a time: the row max,
 * the exponentials at every temperature into per-thread row buffers (L1/L2), every term's
 * per-row value and the gradient of the weighted sum. Main memory sees one read of the scores,
 * of the teacher's and P_LLM's rows (read by index: no gather) and one write of the gradient.
 *
 * distkg_neg_sqrt / distkg_negl2_weights: TTransE's distance (distkg/models/ttranse.py),
 * s = -sqrt(max(x, eps)) in place, and its backward factor w = g / s (0 where the clamp held).
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>

#include "fused.h"

static inline const float *row_of(const float *m, const int64_t *idx, int64_t i, int64_t E) {
    return m + (idx ? idx[i] : i) * E;
}

/* dL/dq of the llm terms at one temperature into u; returns rho = <q, u>; values into v */
static float u_terms(const fused_args *a, int64_t i, int64_t k, const float *e, float iz, float *u, double *v) {
    const int64_t E = a->E;
    const int hub = a->hub == k, sup = a->sup == k;
    const float d = (float)a->h_delta, hs = (float)a->h_scale, keep = (float)(1 - a->s_mix), ss = (float)a->s_scale;
    const float *hy = hub ? row_of(a->hy, a->hy_idx, i, E) : 0, *sy = sup ? row_of(a->sy, a->sy_idx, i, E) : 0;
    float rho = 0, hv = 0, sv = 0;
    if (hub && sup) {
        for (int64_t j = 0; j < E; j++) {
            float q = e[j] * iz, x = q - hy[j], ax = fabsf(x), y = q - keep * sy[j];
            hv += ax < d ? 0.5f * x * x : d * (ax - 0.5f * d);
            sv += y * y;
            float uj = hs * fminf(fmaxf(x, -d), d) + ss * y;
            u[j] = uj;
            rho += q * uj;
        }
    } else if (hub) {
        for (int64_t j = 0; j < E; j++) {
            float q = e[j] * iz, x = q - hy[j], ax = fabsf(x);
            hv += ax < d ? 0.5f * x * x : d * (ax - 0.5f * d);
            float uj = hs * fminf(fmaxf(x, -d), d);
            u[j] = uj;
            rho += q * uj;
        }
    } else {
        for (int64_t j = 0; j < E; j++) {
            float q = e[j] * iz, y = q - keep * sy[j];
            sv += y * y;
            float uj = ss * y;
            u[j] = uj;
            rho += q * uj;
        }
    }
    if (sup) { /* the answer's one-hot part of the target */
        int64_t t = a->answers[i];
        float mix = (float)a->s_mix, q = e[t] * iz, y = q - keep * sy[t];
        sv += (y - mix) * (y - mix) - y * y;
        u[t] -= ss * mix;
        rho -= q * ss * mix;
    }
    v[2] += hv;
    v[3] += sv;
    return rho;
}

static void fused_row(const fused_args *a, int64_t i, float *const *e, float *const *u) {
    const int64_t E = a->E;
    const float *s = a->s + i * E;
    float *g = a->grad + i * E;
    double *v = a->vals + i * NVALS;
    float m = s[0];
    for (int64_t j = 1; j < E; j++) m = fmaxf(m, s[j]);
    float iz[MAXT];
    double lse[MAXT];
    for (int64_t k = 0; k < a->ntemps; k++) {
        const float it = (float)a->inv_t[k];
        float *ek = e[k], z = 0;
        for (int64_t j = 0; j < E; j++) {
            float x = expf((s[j] - m) * it);
            ek[j] = x;
            z += x;
        }
        iz[k] = 1.0f / z;
        lse[k] = (double)m * a->inv_t[k] + log((double)z);
    }
    v[0] = v[1] = v[2] = v[3] = 0;
    for (int64_t k = 0; k < a->ntemps; k++) {
        const float *ek = e[k];
        float c0 = (float)a->coef[k] * iz[k], c1 = 0;
        const float *uk = 0;
        if (a->hub == k || a->sup == k) { /* g += q (coef + (u - rho) / T) */
            float rho = u_terms(a, i, k, ek, iz[k], u[k], v);
            c0 = iz[k] * (float)(a->coef[k] - rho * a->inv_t[k]);
            c1 = iz[k] * (float)a->inv_t[k];
            uk = u[k];
        }
        if (k == 0 && uk) for (int64_t j = 0; j < E; j++) g[j] = ek[j] * (c0 + c1 * uk[j]);
        else if (k == 0) for (int64_t j = 0; j < E; j++) g[j] = ek[j] * c0;
        else if (uk) for (int64_t j = 0; j < E; j++) g[j] += ek[j] * (c0 + c1 * uk[j]);
        else for (int64_t j = 0; j < E; j++) g[j] += ek[j] * c0;
    }
    if (a->kd >= 0) {
        const float *p = row_of(a->p, a->p_idx, i, E), c = (float)a->kd_coef;
        float ps = 0;
        for (int64_t j = 0; j < E; j++) {
            ps += p[j] * s[j];
            g[j] -= c * p[j];
        }
        v[0] = lse[a->kd] - (double)ps * a->inv_t[a->kd];
    }
    if (a->ce >= 0) {
        int64_t t = a->answers[i];
        v[1] = lse[a->ce] - (double)s[t];
        g[t] -= (float)a->ce_coef;
    }
}

typedef struct { const fused_args *a; int64_t lo, hi; int rc; } fused_part;

static void *fused_part_run(void *arg) {
    fused_part *w = arg;
    const fused_args *a = w->a;
    int64_t n = 2 * a->ntemps, stride = (a->E + 15) & ~(int64_t)15; /* 64-byte aligned rows */
    float *mem = aligned_alloc(64, (size_t)(n * stride) * sizeof(float));
    if (!mem) { w->rc = 1; return 0; }
    float *e[MAXT], *u[MAXT];
    for (int64_t k = 0; k < a->ntemps; k++) {
        e[k] = mem + k * stride;
        u[k] = mem + (a->ntemps + k) * stride;
    }
    for (int64_t i = w->lo; i < w->hi; i++) fused_row(a, i, e, u);
    free(mem);
    w->rc = 0;
    return 0;
}

/* split [0, n) into a->threads parts, the calling thread running the first; 0 on success */
typedef void *(*part_fn)(void *);

static void run_parts(int64_t n, int64_t threads, void *parts, size_t size, part_fn fn,
                      void (*set)(void *, int64_t, int64_t)) {
    if (threads < 1) threads = 1;
    if (threads > n) threads = n > 0 ? n : 1;
    pthread_t tid[64];
    if (threads > 64) threads = 64;
    int started[64] = {0};
    for (int64_t t = 0; t < threads; t++) set((char *)parts + t * size, n * t / threads, n * (t + 1) / threads);
    for (int64_t t = 1; t < threads; t++)
        started[t] = pthread_create(&tid[t], 0, fn, (char *)parts + t * size) == 0;
    fn(parts);
    for (int64_t t = 1; t < threads; t++) {
        if (started[t]) pthread_join(tid[t], 0);
        else fn((char *)parts + t * size); /* no thread: run that part here */
    }
}

static void fused_set(void *p, int64_t lo, int64_t hi) { ((fused_part *)p)->lo = lo; ((fused_part *)p)->hi = hi; }

int distkg_fused_rows(const fused_args *a) {
    if (a->ntemps < 1 || a->ntemps > MAXT) return 2;
    fused_part parts[64];
    for (int t = 0; t < 64; t++) { parts[t].a = a; parts[t].rc = 0; }
    run_parts(a->B, a->threads, parts, sizeof(fused_part), fused_part_run, fused_set);
    for (int t = 0; t < 64; t++) if (parts[t].rc) return parts[t].rc;
    return 0;
}

typedef struct { float *x; const float *g, *s; float eps; int64_t n, lo, hi; } ew_part;

/* parts on 16-float boundaries (lo, hi count cache lines), so no two threads share a line */
static void ew_set(void *p, int64_t lo, int64_t hi) {
    ew_part *w = p;
    w->lo = lo * 16;
    w->hi = hi * 16 < w->n ? hi * 16 : w->n;
}

static void *neg_sqrt_run(void *arg) {
    ew_part *w = arg;
    float *x = w->x;
    const float eps = w->eps;
    for (int64_t j = w->lo; j < w->hi; j++) x[j] = -sqrtf(fmaxf(x[j], eps));
    return 0;
}

static void *weights_run(void *arg) {
    ew_part *w = arg;
    const float floor = -sqrtf(w->eps), *g = w->g, *s = w->s;
    float *x = w->x;
    for (int64_t j = w->lo; j < w->hi; j++) x[j] = s[j] >= floor ? 0.0f : g[j] / s[j];
    return 0;
}

static void ew_run(float *x, const float *g, const float *s, float eps, int64_t n, int64_t threads, part_fn fn) {
    ew_part parts[64];
    for (int t = 0; t < 64; t++) { parts[t].x = x; parts[t].g = g; parts[t].s = s; parts[t].eps = eps; parts[t].n = n; }
    run_parts((n + 15) / 16, threads, parts, sizeof(ew_part), fn, ew_set);
}

/* x = -sqrt(max(x, eps)), in place */
void distkg_neg_sqrt(float *x, int64_t n, float eps, int64_t threads) {
    ew_run(x, 0, 0, eps, n, threads, neg_sqrt_run);
}

/* w = g / s, 0 where s >= -sqrt(eps) (the forward's clamp held) */
void distkg_negl2_weights(const float *g, const float *s, float *w, int64_t n, float eps, int64_t threads) {
    ew_run(w, g, s, eps, n, threads, weights_run);
}
