// llama.cpp's own one-row kernels (ggml_vec_dot_q8_0_q8_0, ggml_vec_dot_q4_1_q8_1 from the peer's
// libggml-cpu.so) timed over ROWS rows of 576, best of many passes: the reference for
// `cargo run --release -p smelt-gguf --example qbench` (QBENCH_ROWS, same sizes). Random blocks.
//   L=/work/llama/peer/py/llama_cpp/lib; gcc -O2 scripts/llama_vec_dot_bench.c -o /tmp/llbench -L$L -lggml-cpu -lggml-base -Wl,-rpath,$L
//   /tmp/llbench 1536; /tmp/llbench 98304
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
void ggml_vec_dot_q8_0_q8_0(int n, float *s, size_t bs, const void *vx, size_t bx, const void *vy, size_t by, int nrc);
void ggml_vec_dot_q4_1_q8_1(int n, float *s, size_t bs, const void *vx, size_t bx, const void *vy, size_t by, int nrc);
void ggml_cpu_init(void);
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
int main(int argc, char **argv) {
    ggml_cpu_init();
    int rows = argc > 1 ? atoi(argv[1]) : 98304, cols = 576, nb = cols / 32;
    for (int type = 0; type < 2; type++) {
        int bb = type == 0 ? 34 : 20, ab = type == 0 ? 34 : 36;
        size_t rb = (size_t)nb * bb;
        uint8_t *w = malloc(rows * rb), *a = malloc(nb * ab);
        for (size_t i = 0; i < rows * rb; i++) w[i] = rand();
        for (size_t i = 0; i < rows * (size_t)nb; i++) { uint16_t one = 0x2000; memcpy(w + i * bb, &one, 2); if (type) memcpy(w + i * bb + 2, &one, 2); }
        for (int i = 0; i < nb * ab; i++) a[i] = rand() % 200;
        for (int i = 0; i < nb; i++) { uint16_t one = 0x2000; memcpy(a + i * ab, &one, 2); if (type) memcpy(a + i * ab + 2, &one, 2); }
        float *y = malloc(rows * 4);
        int reps = (int)(2000L * 1536 / rows); if (reps < 20) reps = 20;
        double best = 1e9;
        for (int k = 0; k < reps; k++) {
            double t = now();
            for (int r = 0; r < rows; r++) {
                if (type == 0) ggml_vec_dot_q8_0_q8_0(cols, y + r, 0, w + r * rb, 0, a, 0, 1);
                else ggml_vec_dot_q4_1_q8_1(cols, y + r, 0, w + r * rb, 0, a, 0, 1);
            }
            t = now() - t; if (t < best) best = t;
        }
        printf("llama.cpp %s matvec %dx%d: best %.1f us, %.2f GB/s\n", type ? "q4_1" : "q8_0", rows, cols, best * 1e6, rows * rb / best / 1e9);
    }
}
