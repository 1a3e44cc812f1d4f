/* Local response normalisation, forward and backward, in one pass each (see lrn.py for the math).

   Built at first use by kernels/build.py with the system C compiler and called through ctypes; torch's
   own OpenMP runtime (same soname) runs the threads. Plain C on raw pointers rather than a torch C++
   extension: it compiles in about a second instead of a minute, and needs no torch headers.

   A tensor is seen as (N, C, P): N images, C channels, P = H * W pixels, with element strides
   (sn, sc, sp), so one kernel serves channels_last (sc = 1, sp = C) and NCHW (sc = P, sp = 1). Each task
   copies a block of BLOCK pixels of one image into a (C, BLOCK) float buffer, so the window sums over
   channels are unit-stride loops over pixels that the compiler vectorises, whatever the layout.
   Values are float32 or bfloat16 in memory and always float32 in arithmetic. */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define BLOCK 64

enum { F32 = 0, BF16 = 1 };

static inline float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);  /* NaN stays NaN */
    u += 0x7fffu + ((u >> 16) & 1u);                                               /* nearest, ties to even */
    return (uint16_t)(u >> 16);
}

/* Copy pixels [p0, p0 + len) of channel plane `base` into buf (C rows of BLOCK floats). */
static void load(const void *src, int dtype, int64_t base, int64_t sc, int64_t sp, int64_t p0, int len,
                 int64_t C, float *buf) {
    for (int64_t c = 0; c < C; c++) {
        int64_t off = base + c * sc + p0 * sp;
        float *row = buf + c * BLOCK;
        if (dtype == F32) {
            const float *s = (const float *)src + off;
            for (int p = 0; p < len; p++) row[p] = s[p * sp];
        } else {
            const uint16_t *s = (const uint16_t *)src + off;
            for (int p = 0; p < len; p++) row[p] = bf16_to_f32(s[p * sp]);
        }
    }
}

static void store(void *dst, int dtype, int64_t base, int64_t sc, int64_t sp, int64_t p0, int len,
                  int64_t C, const float *buf) {
    for (int64_t c = 0; c < C; c++) {
        int64_t off = base + c * sc + p0 * sp;
        const float *row = buf + c * BLOCK;
        if (dtype == F32) {
            float *d = (float *)dst + off;
            for (int p = 0; p < len; p++) d[p * sp] = row[p];
        } else {
            uint16_t *d = (uint16_t *)dst + off;
            for (int p = 0; p < len; p++) d[p * sp] = f32_to_bf16(row[p]);
        }
    }
}

/* out[c] = sum of v[j] for j in [c - below, c + above], clipped to c's tower. */
static void window_sums(const float *v, float *out, int64_t C, int64_t towers, int below, int above,
                        int len) {
    int64_t per = C / towers;
    float run[BLOCK];
    for (int64_t t = 0; t < towers; t++) {
        int64_t lo = t * per, hi = lo + per;
        for (int p = 0; p < len; p++) run[p] = 0.f;
        for (int64_t j = lo; j < hi && j <= lo + above; j++)
            for (int p = 0; p < len; p++) run[p] += v[j * BLOCK + p];
        for (int64_t c = lo; c < hi; c++) {
            for (int p = 0; p < len; p++) out[c * BLOCK + p] = run[p];
            int64_t add = c + above + 1, drop = c - below;
            if (add < hi)
                for (int p = 0; p < len; p++) run[p] += v[add * BLOCK + p];
            if (drop >= lo)
                for (int p = 0; p < len; p++) run[p] -= v[drop * BLOCK + p];
        }
    }
}

/* d^-beta. For the paper's beta = 0.75 it is r sqrt(r) with r = 1/sqrt(d), which the compiler turns into
   a vector reciprocal square root and a Newton step: no powf and no division, and within a few float
   ulps of powf (the tests hold it to the reference at 1e-5). */
static inline void neg_pow(const float *d, float *out, int n, float beta) {
    if (beta == 0.75f) {
        for (int i = 0; i < n; i++) {
            float r = 1.f / sqrtf(d[i]);
            out[i] = r * sqrtf(r);
        }
    } else {
        for (int i = 0; i < n; i++) out[i] = powf(d[i], -beta);
    }
}

/* Channels contiguous (channels_last): each pixel's C values are one unit-stride run, so work pixel by
   pixel on a zero-padded copy of that run; the window sum is `size` shifted adds that vectorise over
   channels. Each tower gets its own zero halo, which is what stops windows at tower boundaries. */
typedef struct {
    int64_t C, towers, per, row;  /* row: per-tower stride in the padded buffers, per + 2 * HALO */
} Layout;

#define HALO 8  /* >= size / 2; sizes above 17 take the blocked path */

static inline void load_px(const void *src, int dtype, int64_t off, Layout L, float *pad) {
    for (int64_t t = 0; t < L.towers; t++) {
        float *row = pad + t * L.row + HALO;
        if (dtype == F32) {
            const float *s = (const float *)src + off + t * L.per;
            for (int64_t i = 0; i < L.per; i++) row[i] = s[i];
        } else {
            const uint16_t *s = (const uint16_t *)src + off + t * L.per;
            for (int64_t i = 0; i < L.per; i++) row[i] = bf16_to_f32(s[i]);
        }
    }
}

static inline void store_px(void *dst, int dtype, int64_t off, Layout L, const float *pad) {
    for (int64_t t = 0; t < L.towers; t++) {
        const float *row = pad + t * L.row + HALO;
        if (dtype == F32) {
            float *d = (float *)dst + off + t * L.per;
            for (int64_t i = 0; i < L.per; i++) d[i] = row[i];
        } else {
            uint16_t *d = (uint16_t *)dst + off + t * L.per;
            for (int64_t i = 0; i < L.per; i++) d[i] = f32_to_bf16(row[i]);
        }
    }
}

/* out[i] = sum of v[i + o] for o in [-below, above], all towers at once (v is padded, out is not). */
static inline void shifted_sums(const float *v, float *out, Layout L, int below, int above) {
    for (int64_t t = 0; t < L.towers; t++) {
        const float *row = v + t * L.row + HALO;
        float *o = out + t * L.per;
        for (int64_t i = 0; i < L.per; i++) o[i] = 0.f;
        for (int s = -below; s <= above; s++)
            for (int64_t i = 0; i < L.per; i++) o[i] += row[i + s];
    }
}

static void forward_cl(const void *x, void *y, int dtype, int64_t N, int64_t P, int64_t sn, int64_t sp,
                       Layout L, int size, float alpha, float beta, float k, int threads) {
    int below = size / 2, above = (size - 1) / 2;
    int64_t padded = L.towers * L.row;
    #pragma omp parallel num_threads(threads)
    {
        float *a = calloc(2 * padded + L.C, sizeof(float));   /* halos stay zero */
        float *sq = a + padded, *d = sq + padded;
        #pragma omp for schedule(static)
        for (int64_t task = 0; task < N * P; task++) {
            int64_t off = (task / P) * sn + (task % P) * sp;
            load_px(x, dtype, off, L, a);
            for (int64_t j = 0; j < padded; j++) sq[j] = a[j] * a[j];
            shifted_sums(sq, d, L, below, above);
            for (int64_t i = 0; i < L.C; i++) d[i] = k + alpha * d[i];
            neg_pow(d, d, (int)L.C, beta);
            for (int64_t t = 0; t < L.towers; t++)
                for (int64_t i = 0; i < L.per; i++) a[t * L.row + HALO + i] *= d[t * L.per + i];
            store_px(y, dtype, off, L, a);
        }
        free(a);
    }
}

static void backward_cl(const void *x, const void *g, void *dx, int dtype, int64_t N, int64_t P,
                        int64_t sn, int64_t sp, int64_t gsn, int64_t gsp, Layout L, int size, float alpha,
                        float beta, float k, int threads) {
    int below = size / 2, above = (size - 1) / 2;
    int64_t padded = L.towers * L.row;
    float coef = -2.f * alpha * beta;
    #pragma omp parallel num_threads(threads)
    {
        float *a = calloc(3 * padded + 2 * L.C, sizeof(float));
        float *gr = a + padded, *t = gr + padded, *d = t + padded, *sc = d + L.C;
        #pragma omp for schedule(static)
        for (int64_t task = 0; task < N * P; task++) {
            int64_t n = task / P, p = task % P;
            load_px(x, dtype, n * sn + p * sp, L, a);
            load_px(g, dtype, n * gsn + p * gsp, L, gr);
            for (int64_t j = 0; j < padded; j++) t[j] = a[j] * a[j];
            shifted_sums(t, d, L, below, above);
            for (int64_t i = 0; i < L.C; i++) d[i] = k + alpha * d[i];
            neg_pow(d, sc, (int)L.C, beta);
            for (int64_t tw = 0; tw < L.towers; tw++)
                for (int64_t i = 0; i < L.per; i++) {
                    int64_t j = tw * L.row + HALO + i, c = tw * L.per + i;
                    t[j] = gr[j] * a[j] * sc[c] / d[c];                       /* g a d^(-beta-1) */
                    gr[j] *= sc[c];                                           /* g d^-beta */
                }
            shifted_sums(t, d, L, above, below);                              /* transposed window */
            for (int64_t tw = 0; tw < L.towers; tw++)
                for (int64_t i = 0; i < L.per; i++) {
                    int64_t j = tw * L.row + HALO + i;
                    gr[j] += coef * a[j] * d[tw * L.per + i];
                }
            store_px(dx, dtype, n * sn + p * sp, L, gr);
        }
        free(a);
    }
}

static int channels_inner(int64_t sc, int size) { return sc == 1 && size / 2 <= HALO; }

void lrn_forward(const void *x, void *y, int dtype, int64_t N, int64_t C, int64_t P, int64_t sn,
                 int64_t sc, int64_t sp, int64_t towers, int size, float alpha, float beta, float k,
                 int threads) {
    if (channels_inner(sc, size)) {
        Layout L = {C, towers, C / towers, C / towers + 2 * HALO};
        forward_cl(x, y, dtype, N, P, sn, sp, L, size, alpha, beta, k, threads);
        return;
    }
    int64_t blocks = (P + BLOCK - 1) / BLOCK;
    int below = size / 2, above = (size - 1) / 2;
    #pragma omp parallel num_threads(threads)
    {
        float *a = malloc(sizeof(float) * C * BLOCK * 3);
        float *sq = a + C * BLOCK, *d = sq + C * BLOCK;
        #pragma omp for schedule(static)
        for (int64_t task = 0; task < N * blocks; task++) {
            int64_t n = task / blocks, p0 = (task % blocks) * BLOCK;
            int len = (int)(P - p0 < BLOCK ? P - p0 : BLOCK);
            load(x, dtype, n * sn, sc, sp, p0, len, C, a);
            for (int64_t c = 0; c < C; c++)
                for (int p = 0; p < len; p++) sq[c * BLOCK + p] = a[c * BLOCK + p] * a[c * BLOCK + p];
            window_sums(sq, d, C, towers, below, above, len);
            for (int64_t c = 0; c < C; c++) {
                float *dc = d + c * BLOCK, *ac = a + c * BLOCK;
                for (int p = 0; p < len; p++) dc[p] = k + alpha * dc[p];
                neg_pow(dc, dc, len, beta);
                for (int p = 0; p < len; p++) ac[p] *= dc[p];
            }
            store(y, dtype, n * sn, sc, sp, p0, len, C, a);
        }
        free(a);
    }
}

/* dL/da[j] = g[j] d[j]^-beta - 2 alpha beta a[j] sum_{c: j in window(c)} g[c] a[c] d[c]^(-beta-1).
   The scales are recomputed from x rather than saved by the forward: cheaper than a round trip through
   memory, and the forward keeps nothing but its input alive. `x`, `g` and `dx` share a dtype; `g` may
   have its own strides (autograd hands over whatever layout the next layer produced). */
void lrn_backward(const void *x, const void *g, void *dx, int dtype, int64_t N, int64_t C, int64_t P,
                  int64_t sn, int64_t sc, int64_t sp, int64_t gsn, int64_t gsc, int64_t gsp,
                  int64_t towers, int size, float alpha, float beta, float k, int threads) {
    if (channels_inner(sc, size) && gsc == 1) {
        Layout L = {C, towers, C / towers, C / towers + 2 * HALO};
        backward_cl(x, g, dx, dtype, N, P, sn, sp, gsn, gsp, L, size, alpha, beta, k, threads);
        return;
    }
    int64_t blocks = (P + BLOCK - 1) / BLOCK;
    int below = size / 2, above = (size - 1) / 2;
    #pragma omp parallel num_threads(threads)
    {
        float *a = malloc(sizeof(float) * C * BLOCK * 4);
        float *gr = a + C * BLOCK, *d = gr + C * BLOCK, *t = d + C * BLOCK;
        #pragma omp for schedule(static)
        for (int64_t task = 0; task < N * blocks; task++) {
            int64_t n = task / blocks, p0 = (task % blocks) * BLOCK;
            int len = (int)(P - p0 < BLOCK ? P - p0 : BLOCK);
            load(x, dtype, n * sn, sc, sp, p0, len, C, a);
            load(g, dtype, n * gsn, gsc, gsp, p0, len, C, gr);
            for (int64_t c = 0; c < C; c++)
                for (int p = 0; p < len; p++) t[c * BLOCK + p] = a[c * BLOCK + p] * a[c * BLOCK + p];
            window_sums(t, d, C, towers, below, above, len);
            for (int64_t c = 0; c < C; c++) {
                float *dc = d + c * BLOCK, *tc = t + c * BLOCK, *ac = a + c * BLOCK, *gc = gr + c * BLOCK;
                for (int p = 0; p < len; p++) tc[p] = k + alpha * dc[p];          /* t = d */
                neg_pow(tc, dc, len, beta);                                       /* d = d^-beta */
                for (int p = 0; p < len; p++) {
                    tc[p] = gc[p] * ac[p] * dc[p] / tc[p];                        /* t = g a d^(-beta-1) */
                    gc[p] *= dc[p];                                               /* g = g d^-beta */
                }
            }
            /* The window is transposed: j is in c's window when c is in [j - above, j + below]. */
            window_sums(t, d, C, towers, above, below, len);
            float coef = -2.f * alpha * beta;
            for (int64_t c = 0; c < C; c++)
                for (int p = 0; p < len; p++)
                    gr[c * BLOCK + p] += coef * a[c * BLOCK + p] * d[c * BLOCK + p];
            store(dx, dtype, n * sn, sc, sp, p0, len, C, gr);
        }
        free(a);
    }
}
