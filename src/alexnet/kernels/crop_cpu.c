/* The paper's training input in one pass: crop, mirror, subtract the mean (image or per channel), add
   the image's PCA colour shift, divide by the std; uint8 (N, H, W, 3) in, float32 (K, S, S, 3) out.

   In PyTorch this is a strided uint8->float copy, a subtraction, a flip and an addition per image, each
   a full pass over 155k values; here each output row is computed once, in source order (so the loop is
   unit-stride and vectorises), and mirrored in place while it is still in L1 (see transforms.crop). */

#include <stdint.h>
#include <stdlib.h>

void crop_normalize(const uint8_t *images, int64_t H, int64_t W, const float *mean, int per_pixel,
                    const float *std, const float *shift, const int64_t *sources, const int64_t *tops,
                    const int64_t *lefts, const uint8_t *flips, int64_t K, int64_t S, float *out,
                    int threads) {
    int64_t R = S * 3;
    #pragma omp parallel num_threads(threads)
    {
        /* One row's worth of the per-channel terms, repeated every 3 values, so the row loop has none. */
        float *add = malloc(sizeof(float) * R * 2), *mul = add + R;
        #pragma omp for schedule(static)
        for (int64_t k = 0; k < K; k++) {
            for (int64_t j = 0; j < R; j++) {
                int c = (int)(j % 3);
                mul[j] = std ? 1.f / std[c] : 1.f;
                add[j] = (shift ? shift[k * 3 + c] : 0.f) - (per_pixel ? 0.f : mean[c]);
            }
            for (int64_t i = 0; i < S; i++) {
                int64_t row = tops[k] + i;
                const uint8_t *src = images + ((sources[k] * H + row) * W + lefts[k]) * 3;
                float *dst = out + (k * S + i) * R;
                if (per_pixel) {
                    const float *m = mean + (row * W + lefts[k]) * 3;
                    for (int64_t j = 0; j < R; j++) dst[j] = ((float)src[j] - m[j] + add[j]) * mul[j];
                } else {
                    for (int64_t j = 0; j < R; j++) dst[j] = ((float)src[j] + add[j]) * mul[j];
                }
                if (flips[k]) {
                    for (int64_t a = 0, b = S - 1; a < b; a++, b--)
                        for (int c = 0; c < 3; c++) {
                            float t = dst[a * 3 + c];
                            dst[a * 3 + c] = dst[b * 3 + c];
                            dst[b * 3 + c] = t;
                        }
                }
            }
        }
        free(add);
    }
}
