/* The C kernels' interface (fused.c), shared by the torch operators that call them (ops.cpp). */
#ifndef DISTKG_FUSED_H
#define DISTKG_FUSED_H
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MAXT 3
#define NVALS 4 /* per row: kd (lse_T - sum p s / T), ce (lse_1 - s_a), huber, supervised */

typedef struct {
    int64_t B, E, threads, ntemps;
    const float *s;
    float *grad;
    const int64_t *answers;     /* [B], or NULL when no term needs them */
    double inv_t[MAXT];         /* 1 / T_k, the distinct temperatures */
    double coef[MAXT];          /* dL/ds += coef_k q_k (kd: w T / B, ce: w / B) */
    int64_t kd;                 /* temperature index of kd, -1: no kd */
    double kd_coef;             /* dL/ds -= kd_coef p */
    const float *p;             /* teacher's soft targets [N, E] */
    const int64_t *p_idx;       /* row of p for each row of s; NULL: row i */
    int64_t ce;                 /* temperature index of T = 1 when ce is a term, -1: no ce */
    double ce_coef;             /* dL/ds_a -= ce_coef */
    int64_t hub;                /* temperature index of llm_huber, -1: none */
    double h_delta, h_scale;    /* delta; dL/dq += h_scale clamp(q - y, -delta, delta) */
    const float *hy;
    const int64_t *hy_idx;
    int64_t sup;                /* temperature index of llm_supervised, -1: none */
    double s_mix, s_scale;      /* dL/dq += s_scale (q - (1 - mix) y - mix onehot) */
    const float *sy;
    const int64_t *sy_idx;
    double *vals;               /* [B, NVALS] out */
} fused_args;

int distkg_fused_rows(const fused_args *a);
void distkg_neg_sqrt(float *x, int64_t n, float eps, int64_t threads);
void distkg_negl2_weights(const float *g, const float *s, float *w, int64_t n, float eps, int64_t threads);

#ifdef __cplusplus
}
#endif
#endif
