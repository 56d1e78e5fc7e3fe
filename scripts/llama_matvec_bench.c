// llama.cpp's own decode matvec kernels from the peer's libggml-cpu.so, timed over ROWS x COLS,
// best of many passes: the reference for `cargo run --release -p smelt-core --example qbench`
// (QBENCH_ROWS, QBENCH_COLS, same sizes). One row per call for the vec_dot kernels (Q8_0, Q4_1,
// Q5_0: COLS/32 blocks; Q6_K: COLS/256), as llama.cpp's mul_mat runs them for one token; Q4_K
// through the repacked 8-row GEMV (ggml_gemv_q4_K_8x8_q8_K); F16 by ggml_vec_dot_f16 (f16 activations). Random bytes with every f16 scale
// 2^-7 and small activations, so no NaN or denormal slow paths.
//   L=/work/llama/peer/py/llama_cpp/lib; gcc -O2 scripts/llama_matvec_bench.c -o /tmp/llmv -L$L -lggml-cpu -lggml-base -Wl,-rpath,$L
//   /tmp/llmv 1536 576; /tmp/llmv 49152 576; /tmp/llmv 576 1536; /tmp/llmv 18432 1536
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
typedef void vec_dot_t(int n, float *s, size_t bs, const void *vx, size_t bx, const void *vy, size_t by, int nrc);
vec_dot_t ggml_vec_dot_f16, ggml_vec_dot_q8_0_q8_0, ggml_vec_dot_q4_1_q8_1, ggml_vec_dot_q5_0_q8_0, ggml_vec_dot_q6_K_q8_K;
void ggml_gemv_q4_K_8x8_q8_K(int n, float *s, size_t bs, const void *vx, const void *vy, int nr, int nc);
void ggml_cpu_init(void);

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
static const uint16_t SCALE = 0x2000; // f16 2^-7

// One weight type: block size in values and bytes, where its f16 scales sit in a block (-1: none),
// the activation block's bytes and scale kind (f16 at 0 and 2 for Q8_1's d and s, f32 for Q8_K).
struct kind { const char *name; vec_dot_t *dot; int qk, wbytes, wscale[2], abytes, ascale_f16[2], ascale_f32; };
static const struct kind KINDS[] = {
    {"q8_0 vec_dot", ggml_vec_dot_q8_0_q8_0, 32, 34, {0, -1}, 34, {0, -1}, -1},
    {"q4_1 vec_dot", ggml_vec_dot_q4_1_q8_1, 32, 20, {0, 2}, 36, {0, 2}, -1},
    {"q5_0 vec_dot", ggml_vec_dot_q5_0_q8_0, 32, 22, {0, -1}, 34, {0, -1}, -1},
    {"q6_K vec_dot", ggml_vec_dot_q6_K_q8_K, 256, 210, {208, -1}, 292, {-1, -1}, 0},
    {"q4_K gemv 8x8", NULL, 256, 144, {-1, -1}, 292, {-1, -1}, 0},
    {"f16 vec_dot", (vec_dot_t *)ggml_vec_dot_f16, 1, 2, {-1, -1}, 2, {-1, -1}, -1},
};

int main(int argc, char **argv) {
    ggml_cpu_init();
    int rows = argc > 1 ? atoi(argv[1]) : 1536, cols = argc > 2 ? atoi(argv[2]) : 576;
    float *y = malloc((size_t)rows * 4);
    for (size_t t = 0; t < sizeof KINDS / sizeof *KINDS; t++) {
        const struct kind *k = &KINDS[t];
        if (cols % k->qk || (!k->dot && rows % 8)) continue;
        size_t nb = cols / k->qk, rb = nb * k->wbytes, wb = (size_t)rows * rb;
        uint8_t *w = malloc(wb), *a = malloc(nb * k->abytes);
        for (size_t i = 0; i < wb; i++) w[i] = rand();
        for (size_t i = 0; i < nb * k->abytes; i++) a[i] = rand() % 50;
        if (k->qk == 1) {
            // F16: every value a small normal (exponent bits 01010-01101), weights and activations.
            for (size_t i = 1; i < wb; i += 2) w[i] = 0x28 | (w[i] & 0x87);
            for (size_t i = 1; i < nb * k->abytes; i += 2) a[i] = 0x28 | (a[i] & 0x87);
        }
        if (k->dot) {
            for (size_t b = 0; b < (size_t)rows * nb; b++)
                for (int s = 0; s < 2; s++) if (k->wscale[s] >= 0) memcpy(w + b * k->wbytes + k->wscale[s], &SCALE, 2);
        } else {
            // Repacked Q4_K, 8 rows interleaved per 1152-byte block: 8 d's and 8 dmin's first.
            for (size_t b = 0; b < (size_t)rows / 8 * nb; b++) for (int s = 0; s < 16; s++) memcpy(w + b * 1152 + 2 * s, &SCALE, 2);
        }
        for (size_t b = 0; b < nb; b++) {
            for (int s = 0; s < 2; s++) if (k->ascale_f16[s] >= 0) memcpy(a + b * k->abytes + k->ascale_f16[s], &SCALE, 2);
            if (k->ascale_f32 >= 0) { float d = 0.01f; memcpy(a + b * k->abytes, &d, 4); }
        }
        int reps = (int)(2000L * 1536 / rows); if (reps < 20) reps = 20;
        double best = 1e9;
        for (int r = 0; r < reps; r++) {
            double t0 = now();
            if (k->dot) for (int i = 0; i < rows; i++) k->dot(cols, y + i, 0, w + i * rb, 0, a, 0, 1);
            else ggml_gemv_q4_K_8x8_q8_K(cols, y, rows, w, a, 1, rows);
            t0 = now() - t0; if (t0 < best) best = t0;
        }
        printf("llama.cpp %-13s %dx%d: %8.1f us, %6.2f GB/s\n", k->name, rows, cols, best * 1e6, wb / best / 1e9);
        free(w); free(a);
    }
}
