/* Local response normalisation, forward and backward, in one pass each (see lrn.py for the math).

   Built at first use by kernels/build.py with the system C compiler and called through ctypes; torch's
   own OpenMP runtime (same soname) runs the threads. Plain C on raw pointers rather than a torch C++
   extension: it compiles in about a second instead of a minute, and needs no torch headers.

   A tensor is seen as (N, C, P): N images, C channels, P = H * W pixels, with element strides
   (sn, sc, sp), so one kernel serves channels_last (sc = 1, sp = C) and NCHW (sc = P, sp = 1). In
   general each task copies a block of BLOCK pixels of one image into a (C, BLOCK) float buffer, so the
   window sums over channels are unit-stride loops over pixels that the compiler vectorises, whatever the
   layout; channels_last has a faster path of its own (forward_cl, backward_cl).
   Values are float32 or bfloat16 in memory and always float32 in arithmetic. */

/* GCC 12 turns 1/sqrtf on 512-bit vectors into a square root then a reciprocal (two estimates, two Newton
   steps) but on 256-bit ones into one reciprocal-square-root estimate and a Newton step; and Zen 4 splits
   512-bit operations in two anyway. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__AVX512F__)
#pragma GCC target("prefer-vector-width=256")
#endif

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

/* A select rather than an early return, so that loops of it vectorise. */
static inline uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    uint32_t nearest = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;                   /* ties to even */
    return (uint16_t)((u & 0x7fffffffu) > 0x7f800000u ? (u >> 16) | 0x40u : nearest);  /* NaN stays NaN */
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

/* out[c] = sum of v[j] for j in [c - below, c + above], clipped to c's tower. Summed afresh for each c,
   not kept as a running sum (add the entering channel, subtract the leaving one): there one inf made
   inf - inf = NaN in every later channel of its tower, and a large value left its rounding residue in every
   later sum (1e-4 relative after a spike of 1e8, even in double). For the paper's window the five rows
   are added at once, which is faster than the running sum was (conv1's NCHW forward, one thread: 21.6
   against 23.6 ms); a wider window costs more as it widens (size 21: 1.5 times the running sum). */
static void window_sums(const float *v, float *out, int64_t C, int64_t towers, int below, int above,
                        int len) {
    int64_t per = C / towers;
    int paper = below == 2 && above == 2;    /* the window of all three conventions */
    for (int64_t c = 0; c < C; c++) {
        int64_t lo = c / per * per, hi = lo + per;
        int64_t first = c - below > lo ? c - below : lo, last = c + above < hi ? c + above : hi - 1;
        const float *w = v + first * BLOCK;
        float *o = out + c * BLOCK;
        if (paper && last - first == 4) {    /* five rows at once: one store, not five */
            for (int p = 0; p < len; p++)
                o[p] = w[p] + w[BLOCK + p] + w[2 * BLOCK + p] + w[3 * BLOCK + p] + w[4 * BLOCK + p];
        } else {
            memcpy(o, w, sizeof(float) * len);
            for (int64_t j = 1; j <= last - first; j++)
                for (int p = 0; p < len; p++) o[p] += w[j * BLOCK + p];
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

/* Channels contiguous (channels_last). A task is Q consecutive pixels of one image, copied into a buffer
   laid out pixel by pixel and tower by tower, each run of a tower's channels followed by h zeros, and h
   zeros in front of the first: [h 0][px 0, tower 0][h 0][px 0, tower 1][h 0][px 1, tower 0]...
   With h = max(below, above), a window reaches the zeros and never the next run, which is what clips it at
   the tower's edges. So every arithmetic step is one long unit-stride loop over the whole buffer, rather
   than dozens of loops as short as a tower per pixel (each with its own prologue and epilogue); values it
   computes on the zero slots are never stored. Only the copies in and out go run by run. */
#define Q 16
#define MAX_HALF 8  /* larger windows take the blocked path, whose buffers need no padding */

typedef struct {
    int64_t towers, per, run;  /* run: stride of one tower's channels in the buffer, per + h */
    int h, below, above;
} Layout;

/* The buffer for npx pixels; outputs are computed for slots [h, span - h). */
static inline int64_t span(Layout L, int npx) { return L.h + npx * L.towers * L.run; }

/* One run of n values in, converted, with its squares alongside; and one out. In vectors of V, the last
   one overlapping the one before, rather than a loop of n or memcpy: a tower is a few dozen channels,
   and a call, or a loop's prologue and epilogue, per run cost about as much as the arithmetic. GCC's
   vector types (also in Clang) make each step one vector load, store or conversion whatever the target;
   plain loops of V became memmove calls (-march=znver3) or scalar code. */
#define V 8
typedef float vf __attribute__((vector_size(4 * V)));
typedef uint32_t vu __attribute__((vector_size(4 * V)));
typedef int32_t vi __attribute__((vector_size(4 * V)));
typedef uint16_t vh __attribute__((vector_size(2 * V)));

static inline vf vload_in(const void *src, int dtype, int64_t i) {
    vf v;
    if (dtype == F32) {
        memcpy(&v, (const float *)src + i, sizeof v);
    } else {
        vh h;
        memcpy(&h, (const uint16_t *)src + i, sizeof h);
        vu u = __builtin_convertvector(h, vu) << 16;
        memcpy(&v, &u, sizeof v);
    }
    return v;
}

static inline void vstore_out(void *dst, int dtype, int64_t i, vf v) {
    if (dtype == F32) {
        memcpy((float *)dst + i, &v, sizeof v);
    } else {
        vu u;
        memcpy(&u, &v, sizeof u);
        vu nearest = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16, nan = (u >> 16) | 0x40u;
        vu is_nan = (vu)((u & 0x7fffffffu) > 0x7f800000u);                     /* all ones or zero */
        vh h = __builtin_convertvector((nan & is_nan) | (nearest & ~is_nan), vh);
        memcpy((uint16_t *)dst + i, &h, sizeof h);
    }
}

static inline void run_in(const void *src, int dtype, int64_t n, float *restrict a, float *restrict sq) {
    if (n < V) {
        for (int64_t i = 0; i < n; i++) {
            a[i] = dtype == F32 ? ((const float *)src)[i] : bf16_to_f32(((const uint16_t *)src)[i]);
            if (sq) sq[i] = a[i] * a[i];
        }
        return;
    }
    for (int64_t i0 = 0; i0 < n; i0 += V) {
        int64_t i = i0 + V <= n ? i0 : n - V;
        vf v = vload_in(src, dtype, i), v2 = v * v;
        memcpy(a + i, &v, sizeof v);
        if (sq) memcpy(sq + i, &v2, sizeof v2);
    }
}

static inline void run_out(void *dst, int dtype, int64_t n, const float *restrict b) {
    if (n < V) {
        for (int64_t i = 0; i < n; i++) {
            if (dtype == F32) ((float *)dst)[i] = b[i];
            else ((uint16_t *)dst)[i] = f32_to_bf16(b[i]);
        }
        return;
    }
    for (int64_t i0 = 0; i0 < n; i0 += V) {
        int64_t i = i0 + V <= n ? i0 : n - V;
        vf v;
        memcpy(&v, b + i, sizeof v);
        vstore_out(dst, dtype, i, v);
    }
}

/* a, and sq = a^2 when sq is given. */
static void load_runs(const void *src, int dtype, int64_t off, int64_t sp, int npx, Layout L, float *a,
                      float *sq) {
    size_t bytes = dtype == F32 ? sizeof(float) : sizeof(uint16_t);
    for (int q = 0; q < npx; q++)
        for (int64_t t = 0; t < L.towers; t++) {
            int64_t at = L.h + (q * L.towers + t) * L.run;
            run_in((const char *)src + bytes * (off + q * sp + t * L.per), dtype, L.per, a + at,
                   sq ? sq + at : NULL);
        }
}

static void store_runs(void *dst, int dtype, int64_t off, int64_t sp, int npx, Layout L, const float *b) {
    size_t bytes = dtype == F32 ? sizeof(float) : sizeof(uint16_t);
    for (int q = 0; q < npx; q++)
        for (int64_t t = 0; t < L.towers; t++)
            run_out((char *)dst + bytes * (off + q * sp + t * L.per), dtype, L.per,
                    b + L.h + (q * L.towers + t) * L.run);
}

/* d^-beta and d^(-beta-1). For beta = 0.75 both come from r = 1/sqrt(d): d^-0.75 = r^2 / sqrt(r) and
   d^-1.75 = d^-0.75 r^2, two reciprocal square roots (a hardware estimate and a Newton step each, under
   -ffast-math), no powf and no division. */
static inline float scale_of(float d, float beta, float *ratio) {
    if (beta == 0.75f) {
        float r = 1.f / sqrtf(d), r2 = r * r, sc = r2 * (1.f / sqrtf(r));
        *ratio = sc * r2;
        return sc;
    }
    float sc = powf(d, -beta);
    *ratio = sc / d;
    return sc;
}

/* The loops below are written once for any window and beta; forward_cl and backward_cl call them with
   the paper's constants (size 5, beta 0.75: all three conventions) so that the window sum unrolls and
   the power takes the reciprocal square roots, and with the runtime values otherwise. The window sums
   run over the squares (or t) in memory: adds, which leave the multiply units to the power. */
static inline void forward_body(const float *restrict a, const float *restrict sq, float *restrict y,
                                int64_t n, int h, int below, int above, float alpha, float beta, float k) {
    for (int64_t i = h; i < n - h; i++) {
        float s = 0.f, ratio;
        for (int o = -below; o <= above; o++) s += sq[i + o];
        y[i] = a[i] * scale_of(k + alpha * s, beta, &ratio);
    }
}

/* The first half of the backward: t = g a d^(-beta-1), and g becomes g d^-beta. */
static inline void backward_body1(const float *restrict a, const float *restrict sq, float *restrict g,
                                  float *restrict t, int64_t n, int h, int below, int above, float alpha,
                                  float beta, float k) {
    for (int64_t i = h; i < n - h; i++) {
        float s = 0.f, ratio;
        for (int o = -below; o <= above; o++) s += sq[i + o];
        float sc = scale_of(k + alpha * s, beta, &ratio);
        t[i] = g[i] * a[i] * ratio;
        g[i] *= sc;
    }
}

/* The second half: the window is transposed (j is in c's window when c is in [j - above, j + below]). */
static inline void backward_body2(const float *restrict a, float *restrict g, const float *restrict t,
                                  int64_t n, int h, int below, int above, float coef) {
    for (int64_t i = h; i < n - h; i++) {
        float s = 0.f;
        for (int o = -above; o <= below; o++) s += t[i + o];
        g[i] += coef * a[i] * s;
    }
}

static int paper_window(Layout L, float beta) { return L.below == 2 && L.above == 2 && beta == 0.75f; }

static void forward_cl(const void *x, void *y, int dtype, int64_t N, int64_t P, int64_t sn, int64_t sp,
                       Layout L, float alpha, float beta, float k, int threads) {
    int64_t chunks = (P + Q - 1) / Q, full = span(L, Q);
    int paper = paper_window(L, beta);
    #pragma omp parallel num_threads(threads)
    {
        float *a = calloc(3 * full, sizeof(float));   /* zero slots are never written */
        float *sq = a + full, *b = sq + full;
        #pragma omp for schedule(static)
        for (int64_t task = 0; task < N * chunks; task++) {
            int64_t n = task / chunks, p0 = (task % chunks) * Q;
            int npx = (int)(P - p0 < Q ? P - p0 : Q);
            int64_t off = n * sn + p0 * sp, len = span(L, npx);
            load_runs(x, dtype, off, sp, npx, L, a, sq);
            if (paper)
                forward_body(a, sq, b, len, L.h, 2, 2, alpha, 0.75f, k);
            else
                forward_body(a, sq, b, len, L.h, L.below, L.above, alpha, beta, k);
            store_runs(y, dtype, off, sp, npx, L, b);
        }
        free(a);
    }
}

static void backward_cl(const void *x, const void *g, void *dx, int dtype, int64_t N, int64_t P,
                        int64_t sn, int64_t sp, int64_t gsn, int64_t gsp, Layout L, float alpha,
                        float beta, float k, int threads) {
    int64_t chunks = (P + Q - 1) / Q, full = span(L, Q);
    int paper = paper_window(L, beta);
    float coef = -2.f * alpha * beta;
    #pragma omp parallel num_threads(threads)
    {
        float *a = calloc(4 * full, sizeof(float));
        float *sq = a + full, *gr = sq + full, *t = gr + full;
        #pragma omp for schedule(static)
        for (int64_t task = 0; task < N * chunks; task++) {
            int64_t n = task / chunks, p0 = (task % chunks) * Q;
            int npx = (int)(P - p0 < Q ? P - p0 : Q);
            int64_t len = span(L, npx);
            load_runs(x, dtype, n * sn + p0 * sp, sp, npx, L, a, sq);
            load_runs(g, dtype, n * gsn + p0 * gsp, gsp, npx, L, gr, NULL);
            if (paper)
                backward_body1(a, sq, gr, t, len, L.h, 2, 2, alpha, 0.75f, k);
            else
                backward_body1(a, sq, gr, t, len, L.h, L.below, L.above, alpha, beta, k);
            /* t is a times something on the zero slots, so zero there, unless d was 0 (k = 0 and an
               all-zero window) and made it NaN; the transposed sums must not carry that into real
               channels next to it. */
            for (int64_t r = 0; r < (int64_t)npx * L.towers; r++)
                for (int j = 0; j < L.h; j++) t[L.h + r * L.run + L.per + j] = 0.f;
            if (paper)
                backward_body2(a, gr, t, len, L.h, 2, 2, coef);
            else
                backward_body2(a, gr, t, len, L.h, L.below, L.above, coef);
            store_runs(dx, dtype, n * sn + p0 * sp, sp, npx, L, gr);
        }
        free(a);
    }
}

static int channels_inner(int64_t sc, int size) { return sc == 1 && size / 2 <= MAX_HALF; }

static Layout layout(int64_t C, int64_t towers, int size) {
    int below = size / 2, above = (size - 1) / 2;
    int h = below > above ? below : above;
    Layout L = {towers, C / towers, C / towers + h, h, below, above};
    return L;
}

void lrn_forward(const void *x, void *y, int dtype, int64_t N, int64_t C, int64_t P, int64_t sn,
                 int64_t sc, int64_t sp, int64_t towers, int size, float alpha, float beta, float k,
                 int threads) {
    if (channels_inner(sc, size)) {
        forward_cl(x, y, dtype, N, P, sn, sp, layout(C, towers, size), alpha, beta, k, threads);
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
        backward_cl(x, g, dx, dtype, N, P, sn, sp, gsn, gsp, layout(C, towers, size), alpha, beta, k,
                    threads);
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
