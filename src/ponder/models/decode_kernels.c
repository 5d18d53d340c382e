/* Fused elementwise steps of DecodeStep (decode.py) for fp32 on the CPU.
 *
 * At decode time each op touches one token per row, so a step's cost is mostly the number of
 * ops: these two functions replace about ten torch ops per layer. They compute exactly what the
 * torch fallback in decode.py computes (tests compare both with Decoder.forward). Compiled at
 * first use by cpu_kernels.py; plain C (no torch headers), single-threaded, vectorised by the
 * compiler through the `omp simd` pragmas (-fopenmp-simd: no OpenMP runtime is linked).
 */
#include <math.h>
#include <stddef.h>

/* Per row of x [rows, cols]: x += delta (when delta is not NULL), then
 * h = x / sqrt(mean(x^2) + eps): the residual add and the weightless RMSNorm that follows it
 * (the norm's weight is folded into the next matmul). */
void add_rms(float *x, const float *delta, float *h, int rows, int cols, float eps) {
    for (int r = 0; r < rows; r++) {
        float *xr = x + (size_t)r * cols, *hr = h + (size_t)r * cols;
        float sum_sq = 0.f;
        if (delta) {
            const float *dr = delta + (size_t)r * cols;
#pragma omp simd reduction(+ : sum_sq)
            for (int c = 0; c < cols; c++) {
                xr[c] += dr[c];
                sum_sq += xr[c] * xr[c];
            }
        } else {
#pragma omp simd reduction(+ : sum_sq)
            for (int c = 0; c < cols; c++) sum_sq += xr[c] * xr[c];
        }
        float scale = 1.f / sqrtf(sum_sq / cols + eps);
#pragma omp simd
        for (int c = 0; c < cols; c++) hr[c] = xr[c] * scale;
    }
}

/* For each row of qkv [rows, (Hq + 2 Hkv) * D] (contiguous): on the Hq query and Hkv key heads,
 * in place, QK-norm (RMSNorm with weight w [Hq + Hkv, D]; skipped when w is NULL), then RoPE in
 * the half-split layout with cos/sin [rows, D] (sin already carries rotate_half's sign, as
 * RotaryTable builds it): out[i] = v[i] cos[i] + v[i + D/2] sin[i] for i < D/2, and
 * v[i] cos[i] + v[i - D/2] sin[i] after. Then the row's key and value heads are written into the
 * KV cache k_cache / v_cache [rows, Hkv, max_len, D] (contiguous) at position positions[row]. */
void qk_norm_rope_write(float *qkv, int rows, int Hq, int Hkv, int D, const float *w, float eps,
                        const float *cos, const float *sin, float *k_cache, float *v_cache,
                        const long long *positions, int max_len) {
    int half = D / 2, heads = Hq + Hkv, stride = (Hq + 2 * Hkv) * D;
    float v[D];
    for (int r = 0; r < rows; r++) {
        const float *cr = cos + (size_t)r * D, *sr = sin + (size_t)r * D;
        for (int head = 0; head < heads; head++) {
            float *x = qkv + (size_t)r * stride + (size_t)head * D;
            if (w) {
                float sum_sq = 0.f;
#pragma omp simd reduction(+ : sum_sq)
                for (int i = 0; i < D; i++) sum_sq += x[i] * x[i];
                float scale = 1.f / sqrtf(sum_sq / D + eps);
                const float *wh = w + (size_t)head * D;
#pragma omp simd
                for (int i = 0; i < D; i++) v[i] = x[i] * scale * wh[i];
            } else {
                for (int i = 0; i < D; i++) v[i] = x[i];
            }
#pragma omp simd
            for (int i = 0; i < half; i++) x[i] = v[i] * cr[i] + v[i + half] * sr[i];
#pragma omp simd
            for (int i = half; i < D; i++) x[i] = v[i] * cr[i] + v[i - half] * sr[i];
        }
        for (int j = 0; j < Hkv; j++) {
            size_t slot = (((size_t)r * Hkv + j) * max_len + (size_t)positions[r]) * D;
            const float *k = qkv + (size_t)r * stride + (size_t)(Hq + j) * D;
            const float *val = qkv + (size_t)r * stride + (size_t)(Hq + Hkv + j) * D;
            for (int i = 0; i < D; i++) {
                k_cache[slot + i] = k[i];
                v_cache[slot + i] = val[i];
            }
        }
    }
}
