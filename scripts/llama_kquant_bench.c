// llama.cpp's own Q4_K repacked GEMV (ggml_gemv_q4_K_8x8_q8_K), Q6_K and Q5_0 vec_dot kernels
// from the peer's libggml-cpu.so, timed over ROWS x COLS (best of 2000 passes; random bytes with
// f16 scales 2^-7, so no NaN/denormal slow paths): the reference for smelt's qbench (QBENCH_ROWS,
// QBENCH_COLS, same sizes). Q5_0 uses COLS/32 blocks per row, the K-quants COLS/256.
//   L=/work/llama/peer/py/llama_cpp/lib; gcc -O2 scripts/llama_kquant_bench.c -o /tmp/llk -L$L -lggml-cpu -lggml-base -Wl,-rpath,$L
//   /tmp/llk 576 1536; /tmp/llk 18432 1536; /tmp/llk 49152 576 (Q5_0 line)
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
void ggml_gemv_q4_K_8x8_q8_K(int n, float *s, size_t bs, const void *vx, const void *vy, int nr, int nc);
void ggml_vec_dot_q6_K_q8_K(int n, float *s, size_t bs, const void *vx, size_t bx, const void *vy, size_t by, int nrc);
void ggml_vec_dot_q5_0_q8_0(int n, float *s, size_t bs, const void *vx, size_t bx, const void *vy, size_t by, int nrc);
void ggml_cpu_init(void);
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
int main(int argc, char **argv) {
    ggml_cpu_init();
    int rows = argc > 1 ? atoi(argv[1]) : 576, cols = argc > 2 ? atoi(argv[2]) : 1536, nb = cols / 256 ? cols / 256 : 1;
    uint8_t *w = malloc((size_t)rows * nb * 210 + 4096), *a = malloc(nb * 292 + 64);
    for (size_t i = 0; i < (size_t)rows * nb * 210; i++) w[i] = rand();
    for (int i = 0; i < nb * 292; i++) a[i] = rand() % 50;
    float *y = malloc(rows * 4);
    uint16_t one = 0x2000;
    for (int type = 0; type < 3; type++) {
        double best = 1e9;
        for (size_t i = 0; i < (size_t)rows * nb * 210; i++) w[i] = rand();
        if (type == 1) for (size_t b = 0; b < (size_t)rows * nb; b++) memcpy(w + b * 210 + 208, &one, 2);
        if (type == 2) for (size_t b = 0; b < (size_t)rows * cols / 32; b++) memcpy(w + b * 22, &one, 2);
        if (type == 0) for (size_t b = 0; b < (size_t)rows / 8 * nb; b++) for (int k = 0; k < 16; k++) memcpy(w + b * 1152 + 2 * k, &one, 2);
        for (int i = 0; i < nb * 292; i++) a[i] = rand() % 50;
        if (type == 2) for (int b = 0; b < cols / 32; b++) memcpy(a + b * 34, &one, 2); else for (int b = 0; b < nb; b++) { float d = 0.01f; memcpy(a + b * 292, &d, 4); }
        for (int k = 0; k < 2000; k++) {
            double t = now();
            if (type == 0) ggml_gemv_q4_K_8x8_q8_K(cols, y, rows, w, a, 1, rows);
            else if (type == 1) for (int r = 0; r < rows; r++) ggml_vec_dot_q6_K_q8_K(cols, y + r, 0, w + (size_t)r * nb * 210, 0, a, 0, 1);
            else for (int r = 0; r < rows; r++) ggml_vec_dot_q5_0_q8_0(cols, y + r, 0, w + (size_t)r * (cols/32) * 22, 0, a, 0, 1);
            t = now() - t; if (t < best) best = t;
        }
        size_t bytes = (size_t)rows * (type == 0 ? nb * 144 : type == 1 ? nb * 210 : cols / 32 * 22);
        printf("llama.cpp %s %dx%d: %.1f us, %.2f GB/s\n", type == 0 ? "q4_K gemv 8x8" : type == 1 ? "q6_K vec_dot" : "q5_0 vec_dot", rows, cols, best * 1e6, bytes / best / 1e9);
    }
}
