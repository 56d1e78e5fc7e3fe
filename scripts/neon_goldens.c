// Goldens for smelt's NEON kernels from llama.cpp's own ARM kernels: linked against llama.cpp's
// ggml-cpu/arch/arm/quants.c (and ggml-quants.c for quantize_row_q8_K_ref), cross-compiled for
// aarch64 by scripts/neon_goldens.sh once without and once with the dotprod extension, and run
// under qemu-user. Writes, for random weight rows of each type smelt's quantised matmul uses,
// the activation row, llama.cpp's quantisation of it (Q8_0 / Q8_1 / Q8_K) and llama.cpp's dot
// product, so crates/core/src/quant/tests.rs can check smelt's NEON path bit for bit.
//
// `gen OUT` writes records (little endian): u32 ggml type id, u32 n (elements), f32 x[n], weight
// row bytes, activation row bytes (llama.cpp's block_q8_0 / block_q8_1 / block_q8_K), f32 dot.
// `gen --dots OUT` writes only the f32 dots of the same records (the same data: the quantisers
// do not depend on dotprod, the dots' float rounding does).
#include "ggml-common.h"
#include "ggml-quants.h"
#include "ggml-cpu.h"
#include "quants.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// What quants.c / ggml-quants.c reference from the rest of ggml (never called here).
void ggml_abort(const char * file, int line, const char * fmt, ...) { fprintf(stderr, "abort %s:%d %s\n", file, line, fmt); abort(); }
size_t ggml_row_size(enum ggml_type t, int64_t ne) { (void) t; (void) ne; abort(); }
const char * ggml_type_name(enum ggml_type t) { (void) t; return "?"; }
size_t ggml_type_size(enum ggml_type t) { (void) t; abort(); }
float ggml_table_f32_ue4m3[256];

static uint64_t rs = 0x5eed5eed12345ull;
static uint32_t next(void) { rs ^= rs << 13; rs ^= rs >> 7; rs ^= rs << 17; return (uint32_t) (rs >> 11); }
static float unif(void) { return (next() & 0xFFFFFF) / 16777216.0f; }
static float normal(void) { float s = 0; for (int i = 0; i < 12; i++) s += unif(); return s - 6.0f; }
static ggml_fp16_t f16(float v) { __fp16 h = (__fp16) v; ggml_fp16_t b; memcpy(&b, &h, 2); return b; }
static void put_f16(uint8_t * p, float v) { ggml_fp16_t b = f16(v); memcpy(p, &b, 2); }

typedef void (*dot_fn)(int, float *, size_t, const void *, size_t, const void *, size_t, int);
typedef void (*quant_fn)(const float *, void *, int64_t);

static void q8k(const float * x, void * y, int64_t k) { quantize_row_q8_K_ref(x, y, k); }

struct ty { int id, bs, bytes, act_bytes; dot_fn dot; quant_fn quant; };

// Random bytes with each block's f16 fields replaced by finite values of a realistic size.
static void weights(const struct ty * t, uint8_t * w, int nb) {
    for (int i = 0; i < nb * t->bytes; i++) w[i] = next() & 0xFF;
    for (int b = 0; b < nb; b++) {
        uint8_t * p = w + b * t->bytes;
        switch (t->id) {
            case GGML_TYPE_Q8_0: case GGML_TYPE_Q4_0: case GGML_TYPE_Q5_0: put_f16(p, 0.02f * normal()); break;
            case GGML_TYPE_Q4_1: put_f16(p, 0.01f * unif()); put_f16(p + 2, -0.1f * unif()); break;
            case GGML_TYPE_Q4_K: put_f16(p, 0.002f * unif()); put_f16(p + 2, 0.002f * unif()); break;
            case GGML_TYPE_Q6_K: put_f16(p + 208, 0.001f * normal()); break;
        }
    }
}

int main(int argc, char ** argv) {
    const int dots_only = argc == 3 && strcmp(argv[1], "--dots") == 0;
    if (argc != 2 && !dots_only) { fprintf(stderr, "usage: %s [--dots] OUT.bin\n", argv[0]); return 1; }
    FILE * f = fopen(argv[argc - 1], "wb");
    if (!f) { perror(argv[argc - 1]); return 1; }
    const struct ty types[] = {
        { GGML_TYPE_Q8_0, 32, sizeof(block_q8_0), sizeof(block_q8_0), ggml_vec_dot_q8_0_q8_0, quantize_row_q8_0 },
        { GGML_TYPE_Q4_0, 32, sizeof(block_q4_0), sizeof(block_q8_0), ggml_vec_dot_q4_0_q8_0, quantize_row_q8_0 },
        { GGML_TYPE_Q4_1, 32, sizeof(block_q4_1), sizeof(block_q8_1), ggml_vec_dot_q4_1_q8_1, quantize_row_q8_1 },
        { GGML_TYPE_Q5_0, 32, sizeof(block_q5_0), sizeof(block_q8_0), ggml_vec_dot_q5_0_q8_0, quantize_row_q8_0 },
        { GGML_TYPE_Q4_K, 256, sizeof(block_q4_K), sizeof(block_q8_K), ggml_vec_dot_q4_K_q8_K, q8k },
        { GGML_TYPE_Q6_K, 256, sizeof(block_q6_K), sizeof(block_q8_K), ggml_vec_dot_q6_K_q8_K, q8k },
    };
    // Odd counts exercise llama.cpp's scalar tail after its two-blocks-at-a-time loop.
    const int nblocks[] = { 1, 2, 3, 17 };
    for (size_t ti = 0; ti < sizeof(types) / sizeof(types[0]); ti++) {
        const struct ty * t = &types[ti];
        for (size_t ni = 0; ni < sizeof(nblocks) / sizeof(nblocks[0]); ni++) {
            int nb = nblocks[ni];
            if (t->bs == 256 && (nb == 2 || nb > 3)) continue;
            for (int rep = 0; rep < 3; rep++) {
                const int n = nb * t->bs;
                float * x = malloc(n * sizeof(float));
                uint8_t * w = malloc(nb * t->bytes);
                uint8_t * a = calloc(nb, t->act_bytes);
                const float scale = rep == 2 ? 100.0f : 1.0f;
                for (int i = 0; i < n; i++) x[i] = scale * normal();
                if (rep == 1) memset(x, 0, t->bs * sizeof(float)); // a block of zeros: d = 0
                weights(t, w, nb);
                t->quant(x, a, n);
                float s = 0;
                t->dot(n, &s, 0, w, 0, a, 0, 1);
                if (!dots_only) {
                    const uint32_t hdr[2] = { (uint32_t) t->id, (uint32_t) n };
                    fwrite(hdr, 4, 2, f);
                    fwrite(x, 4, n, f);
                    fwrite(w, 1, nb * t->bytes, f);
                    fwrite(a, 1, nb * t->act_bytes, f);
                }
                fwrite(&s, 4, 1, f);
                free(x); free(w); free(a);
            }
        }
    }
    return fclose(f) != 0;
}
