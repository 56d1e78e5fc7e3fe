#!/usr/bin/env bash
# Golden for crates/core/src/ggml.rs: ggml's AVX-512 ggml_v_expf (vec.h of the llama.cpp peer,
# copied verbatim below) on 8192 inputs covering underflow, normal range and overflow.
# Writes crates/core/src/ggml_data/expf.bin: pairs (x, expf(x)) as little-endian f32.
# Needs gcc and an AVX-512 CPU. Run: scripts/ggml_expf_golden.sh
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
cat > "$tmp/e.c" <<'C'
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
inline static __m512 ggml_v_expf(__m512 x) {
  const __m512 r = _mm512_set1_ps(0x1.8p23f);
  const __m512 z = _mm512_fmadd_ps(x, _mm512_set1_ps(0x1.715476p+0f), r);
  const __m512 n = _mm512_sub_ps(z, r);
  const __m512 b =
      _mm512_fnmadd_ps(n, _mm512_set1_ps(0x1.7f7d1cp-20f),
                       _mm512_fnmadd_ps(n, _mm512_set1_ps(0x1.62e4p-1f), x));
  const __mmask16 d =
      _mm512_cmp_ps_mask(_mm512_abs_ps(n), _mm512_set1_ps(192), _CMP_GT_OQ);
  const __m512 u = _mm512_mul_ps(b, b);
  const __m512 j = _mm512_fmadd_ps(
      _mm512_fmadd_ps(_mm512_fmadd_ps(_mm512_set1_ps(0x1.0e4020p-7f), b,
                                      _mm512_set1_ps(0x1.573e2ep-5f)),
                      u,
                      _mm512_fmadd_ps(_mm512_set1_ps(0x1.555e66p-3f), b,
                                      _mm512_set1_ps(0x1.fffdb6p-2f))),
      u,
      _mm512_fmadd_ps(_mm512_set1_ps(0x1.ffffecp-1f), b, _mm512_set1_ps(1.0F)));
  const __m512 res = _mm512_scalef_ps(j, n);
  if (_mm512_kortestz(d, d))
    return res;
  const __m512 zero = _mm512_setzero_ps();
  const __m512 alt = _mm512_mask_blend_ps(
      _mm512_cmp_ps_mask(n, zero, _CMP_LE_OQ), _mm512_set1_ps(INFINITY), zero);
  return _mm512_mask_blend_ps(d, res, alt);
}
int main(int argc, char **argv) {
  FILE *f = fopen(argv[1], "wb");
  uint32_t s = 12345;
  for (int k = 0; k < 512; k++) {
    float x[16], y[16];
    for (int i = 0; i < 16; i++) {
      s = s * 1664525u + 1013904223u;
      float u = (s >> 8) / 16777216.0f;
      x[i] = k % 4 == 0 ? u * 400 - 200 : k % 4 == 1 ? u * 40 - 30 : u * 2 - 1;
    }
    _mm512_storeu_ps(y, ggml_v_expf(_mm512_loadu_ps(x)));
    for (int i = 0; i < 16; i++) { fwrite(&x[i], 4, 1, f); fwrite(&y[i], 4, 1, f); }
  }
  fclose(f);
}
C
gcc -O2 -march=native "$tmp/e.c" -o "$tmp/e" -lm
"$tmp/e" crates/core/src/ggml_data/expf.bin
rm -rf "$tmp"
echo "wrote crates/core/src/ggml_data/expf.bin"
