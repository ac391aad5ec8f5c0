/* y[M, N] = x[M, K] @ W^T in float32 on an x86 CPU, for W [N, K] stored as panels [ceil(N / P)][K][P]
 * (`capt_jax.model.panels.pack`): the products of `decode` on a CPU (capt_jax/model/panels.py says why).
 *
 * Built once per instruction set: with AVX-512 a panel is P = 48 outputs of W^T, three 16-float registers wide,
 * and blocks of up to 8 rows of x are multiplied by one panel in 24 accumulators; with AVX2 and FMA (16
 * registers of 8 floats) P = 24 and blocks of up to 4 rows use 12. The next panel is prefetched into L2 during
 * the current one, so that reading the weights overlaps the arithmetic (XLA:CPU's dot runs the two one after
 * the other). Rows come in chunks of 128 that stay in L2 while the panels pass by. The work is split into
 * ranges of consecutive (chunk, panel) units, claimed by the calling thread and by tasks on XLA's intra-op
 * thread pool; the caller waits only for ranges already claimed, so a busy pool delays nothing.
 */
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <utility>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

#if defined(__AVX512F__)
using Vec = __m512;
constexpr int64_t kLanes = 16;
constexpr int64_t kRows = 8;
inline Vec Zero() { return _mm512_setzero_ps(); }
inline Vec Load(const float* p) { return _mm512_loadu_ps(p); }
inline Vec Broadcast(float v) { return _mm512_set1_ps(v); }
inline Vec MultiplyAdd(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
inline void StoreFirst(float* p, Vec v, int64_t count) {  // the first min(count, 16) lanes of v
  if (count >= kLanes)
    _mm512_storeu_ps(p, v);
  else
    _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << count) - 1), v);
}
#elif defined(__AVX2__) && defined(__FMA__)
using Vec = __m256;
constexpr int64_t kLanes = 8;
constexpr int64_t kRows = 4;
inline Vec Zero() { return _mm256_setzero_ps(); }
inline Vec Load(const float* p) { return _mm256_loadu_ps(p); }
inline Vec Broadcast(float v) { return _mm256_set1_ps(v); }
inline Vec MultiplyAdd(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
inline void StoreFirst(float* p, Vec v, int64_t count) {  // the first min(count, 8) lanes of v
  if (count >= kLanes)
    _mm256_storeu_ps(p, v);
  else
    _mm256_maskstore_ps(p, _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(count)),
                                              _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)), v);
}
#else
#error "panel_matmul.cc needs -mavx512f, or -mavx2 and -mfma"
#endif

constexpr int64_t kPanel = 3 * kLanes;
constexpr int64_t kChunkRows = 128;
constexpr int64_t kRangesPerThread = 4;

struct Product {
  const float* x;
  const float* panels;
  float* y;
  int64_t m, k, n, panel_count, chunk_count;
};

// Rows [row, row + R) of x times `panel`; `lines` cache lines from `prefetch` are requested into L2 on the way.
template <int R>
void MultiplyBlock(const Product& p, int64_t row, int64_t panel, const char* prefetch, int64_t lines) {
  Vec acc[R][3];
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < 3; ++j) acc[i][j] = Zero();
  const float* w = p.panels + panel * p.k * kPanel;
  const float* x = p.x + row * p.k;
  const int64_t per_k = (lines + p.k - 1) / std::max<int64_t>(p.k, 1);
  for (int64_t k = 0; k < p.k; ++k) {
    for (int64_t line = k * per_k; line < std::min(lines, (k + 1) * per_k); ++line)
      _mm_prefetch(prefetch + 64 * line, _MM_HINT_T1);
    const float* wk = w + k * kPanel;
    const Vec w0 = Load(wk), w1 = Load(wk + kLanes), w2 = Load(wk + 2 * kLanes);
    for (int i = 0; i < R; ++i) {
      const Vec xi = Broadcast(x[i * p.k + k]);
      acc[i][0] = MultiplyAdd(xi, w0, acc[i][0]);
      acc[i][1] = MultiplyAdd(xi, w1, acc[i][1]);
      acc[i][2] = MultiplyAdd(xi, w2, acc[i][2]);
    }
  }
  // The last panel of an N that is no multiple of P is zero-padded; only its first `cols` outputs are written.
  const int64_t cols = std::min(kPanel, p.n - panel * kPanel);
  float* y = p.y + row * p.n + panel * kPanel;
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < 3; ++j)
      if (cols > kLanes * j) StoreFirst(y + i * p.n + kLanes * j, acc[i][j], cols - kLanes * j);
}

using BlockFn = void (*)(const Product&, int64_t, int64_t, const char*, int64_t);
template <std::size_t... R>
constexpr std::array<BlockFn, sizeof...(R)> BlockTable(std::index_sequence<R...>) {
  return {MultiplyBlock<R + 1>...};
}
constexpr auto kBlocks = BlockTable(std::make_index_sequence<kRows>());  // kBlocks[r - 1] multiplies r rows

// One chunk of rows times one panel, with the next panel's lines prefetched a share per block of rows.
void MultiplyUnit(const Product& p, int64_t unit) {
  const int64_t chunk = unit / p.panel_count, panel = unit % p.panel_count;
  const int64_t first_row = chunk * kChunkRows, end_row = std::min(p.m, first_row + kChunkRows);
  const int64_t blocks = (end_row - first_row + kRows - 1) / kRows;
  // Every cache line the next panel touches: with AVX2 a panel is 96 K bytes, so it may start mid-line.
  const uintptr_t start = reinterpret_cast<uintptr_t>(p.panels + (panel + 1) * p.k * kPanel);
  const uintptr_t end = reinterpret_cast<uintptr_t>(p.panels + (panel + 2) * p.k * kPanel);
  const char* next = reinterpret_cast<const char*>(start & ~uintptr_t{63});
  const int64_t lines = panel + 1 < p.panel_count ? (end - (start & ~uintptr_t{63}) + 63) / 64 : 0;
  const int64_t share = (lines + blocks - 1) / blocks;
  for (int64_t row = first_row, block = 0; row < end_row; row += kRows, ++block) {
    const int64_t first = std::min(lines, block * share), count = std::min(share, lines - first);
    kBlocks[std::min(kRows, end_row - row) - 1](p, row, panel, next + 64 * first, count);
  }
}

struct Shared {
  Product product;
  int64_t ranges;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> finished{0};
  std::mutex mutex;
  std::condition_variable done;
};

void RunRanges(Shared& s) {
  const int64_t units = s.product.chunk_count * s.product.panel_count;
  for (int64_t range = s.next.fetch_add(1); range < s.ranges; range = s.next.fetch_add(1)) {
    for (int64_t unit = range * units / s.ranges; unit < (range + 1) * units / s.ranges; ++unit)
      MultiplyUnit(s.product, unit);
    if (s.finished.fetch_add(1) + 1 == s.ranges) {
      std::lock_guard<std::mutex> lock(s.mutex);
      s.done.notify_all();
    }
  }
}

ffi::Error PanelMatmulImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> panels,
                           ffi::ResultBuffer<ffi::F32> y) {
  const auto xd = x.dimensions(), pd = panels.dimensions(), yd = y->dimensions();
  if (xd.size() != 2 || pd.size() != 3 || yd.size() != 2 || pd[2] != kPanel || pd[1] != xd[1] ||
      yd[0] != xd[0] || (yd[1] + kPanel - 1) / kPanel != pd[0])
    return ffi::Error::InvalidArgument("panel_matmul: expected x [M, K], panels [ceil(N / P), K, P], y [M, N]");
  Product p{x.typed_data(), panels.typed_data(), y->typed_data(), xd[0], xd[1], yd[1], pd[0],
            (xd[0] + kChunkRows - 1) / kChunkRows};
  const int64_t units = p.chunk_count * p.panel_count;
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  if (threads == 1 || units == 1) {
    for (int64_t unit = 0; unit < units; ++unit) MultiplyUnit(p, unit);
    return ffi::Error::Success();
  }
  auto shared = std::make_shared<Shared>();
  shared->product = p;
  shared->ranges = std::min(units, threads * kRangesPerThread);
  // Tasks that start after the work is gone find no range left; they hold `shared` so it outlives them.
  for (int64_t t = 1; t < std::min(threads, shared->ranges); ++t) pool.Schedule([shared] { RunRanges(*shared); });
  RunRanges(*shared);
  std::unique_lock<std::mutex> lock(shared->mutex);
  shared->done.wait(lock, [&] { return shared->finished.load() == shared->ranges; });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(PanelMatmul, PanelMatmulImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
