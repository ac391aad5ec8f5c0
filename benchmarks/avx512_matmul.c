/* Hand-written float32 products at few rows, for benchmarks/avx512_matmul.py: how much faster than XLA:CPU a
 * decode step's projections could be with a kernel of our own (docs/PERFORMANCE.md, "A hand-written 32-row
 * kernel, measured"). Not used by capt_jax.
 *
 * y[M, N] = x[M, K] @ W^T for W [N, K] (the Hugging Face layout), computed 48 outputs at a time: 8 rows of x
 * times one [K, 48] panel of W^T, in 24 AVX-512 accumulators. The next panel is prefetched into L2 while the
 * current one is multiplied, so reading the weights overlaps the arithmetic. Requires K % 16 == 0 and
 * N % 48 == 0 (the caller checks).
 *   matmul_packed: W already stored as panels [N / 48][K][48] (pack_panels), so a second copy of the weights.
 *   matmul_transposing: W as it is; each panel is transposed into a buffer on the fly, 16 x 16 at a time.
 */
#include <immintrin.h>
#include <stddef.h>

#define PANEL 48
#define ROWS 8
#define MAX_K 8192

static void multiply_panel(int rows, int k_size, const float *x, const float *panel, float *y, int n_size,
                           const char *prefetch, int prefetch_lines) {
  __m512 acc[ROWS][3];
  for (int i = 0; i < ROWS; i++)
    for (int j = 0; j < 3; j++) acc[i][j] = _mm512_setzero_ps();
  for (int k = 0; k < k_size; k++) {
    if (k < prefetch_lines) _mm_prefetch(prefetch + 64 * (size_t)k, _MM_HINT_T1);
    const float *w = panel + (size_t)k * PANEL;
    __m512 w0 = _mm512_loadu_ps(w), w1 = _mm512_loadu_ps(w + 16), w2 = _mm512_loadu_ps(w + 32);
    for (int i = 0; i < ROWS; i++) {
      if (i < rows) {
        __m512 xi = _mm512_set1_ps(x[(size_t)i * k_size + k]);
        acc[i][0] = _mm512_fmadd_ps(xi, w0, acc[i][0]);
        acc[i][1] = _mm512_fmadd_ps(xi, w1, acc[i][1]);
        acc[i][2] = _mm512_fmadd_ps(xi, w2, acc[i][2]);
      }
    }
  }
  for (int i = 0; i < rows; i++)
    for (int j = 0; j < 3; j++) _mm512_storeu_ps(y + (size_t)i * n_size + 16 * j, acc[i][j]);
}

/* All row blocks of x against one panel; the next panel's lines (a contiguous region in both layouts) are
 * prefetched a share per row block, so that the prefetches are spread over the whole panel's arithmetic. */
static void multiply_rows(int m_size, int k_size, int n_size, int n, const float *x, const float *panel,
                          const char *next_panel, float *y) {
  int lines = PANEL * k_size / 16, blocks = (m_size + ROWS - 1) / ROWS, share = (lines + blocks - 1) / blocks;
  if (n + PANEL >= n_size) share = 0;
  for (int m = 0, block = 0; m < m_size; m += ROWS, block++) {
    int first = block * share, count = share;
    if (first + count > lines) count = lines - first;
    if (count > k_size) count = k_size;
    if (count < 0) count = 0;
    int rows = m_size - m < ROWS ? m_size - m : ROWS;
    multiply_panel(rows, k_size, x + (size_t)m * k_size, panel, y + (size_t)m * n_size + n, n_size,
                   next_panel + 64 * (size_t)first, count);
  }
}

void pack_panels(int n_size, int k_size, const float *w, float *panels) {
  for (int n = 0; n < n_size; n++)
    for (int k = 0; k < k_size; k++)
      panels[((size_t)(n / PANEL) * k_size + k) * PANEL + n % PANEL] = w[(size_t)n * k_size + k];
}

void matmul_packed(int m_size, int k_size, int n_size, const float *x, const float *panels, float *y) {
  for (int n = 0; n < n_size; n += PANEL) {
    const float *panel = panels + (size_t)n * k_size;
    multiply_rows(m_size, k_size, n_size, n, x, panel, (const char *)(panel + (size_t)PANEL * k_size), y);
  }
}

/* dst[c][r] = src[r][c] for a 16 x 16 tile: three rounds of in-register shuffles. */
static void transpose_16x16(const float *src, size_t src_stride, float *dst, size_t dst_stride) {
  __m512 r[16], t[16];
  for (int i = 0; i < 16; i++) r[i] = _mm512_loadu_ps(src + i * src_stride);
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    __m512d a = _mm512_castps_pd(t[i]), b = _mm512_castps_pd(t[i + 1]);
    __m512d c = _mm512_castps_pd(t[i + 2]), d = _mm512_castps_pd(t[i + 3]);
    r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
    r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
  }
  for (int i = 0; i < 4; i++) {
    t[i] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0x88);
    t[i + 4] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0xdd);
    t[i + 8] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0x88);
    t[i + 12] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0xdd);
  }
  for (int i = 0; i < 4; i++) {
    r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd);
    r[i + 4] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0x88);
    r[i + 12] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0xdd);
  }
  for (int i = 0; i < 16; i++) _mm512_storeu_ps(dst + i * dst_stride, r[i]);
}

void matmul_transposing(int m_size, int k_size, int n_size, const float *x, const float *w, float *y) {
  static float panel[MAX_K * PANEL] __attribute__((aligned(64)));
  for (int n = 0; n < n_size; n += PANEL) {
    const float *rows = w + (size_t)n * k_size;
    for (int group = 0; group < PANEL / 16; group++)
      for (int k = 0; k < k_size; k += 16)
        transpose_16x16(rows + (size_t)16 * group * k_size + k, k_size, panel + (size_t)k * PANEL + 16 * group,
                        PANEL);
    multiply_rows(m_size, k_size, n_size, n, x, panel, (const char *)(rows + (size_t)PANEL * k_size), y);
  }
}
