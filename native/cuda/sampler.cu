// Token sampling on the GPU, so that only the drawn token ids and their log-probs cross to the host (not rows
// of 151,936 floats). Same rule and RNG as the CPU loop in native/src/sampler.cpp (sampler_core.h); the tests
// compare the two on the same logits (test/native/sampling.test.ts).
//
// Each row is split over SPLITS blocks (one block per row would leave most of the GPU idle at small batch):
// pass 1 computes per-slice max, sum of exp and the best Gumbel score; pass 2 combines the slices per row.
#include "sampler.h"
#include "common.h"
#include "cuda_check.h"

#include <cuda_runtime.h>

#include <cfloat>
#include <climits>
#include <mutex>
#include <vector>

namespace sqlr1 {

namespace {

constexpr int BLOCK = 256;
constexpr int SPLITS = 16;

struct arg_best { float v; int i; };

struct slice_stats {
    float max;     // max of logits / T over the slice
    float sum;     // sum of exp(logits / T - max) over the slice
    float best_v;  // best score (Gumbel-perturbed, or the raw logit when greedy)
    int best_i;
};

struct sample_out {
    int32_t tok;
    float lp;
};

__device__ __forceinline__ arg_best better(arg_best a, arg_best b) {
    // Larger value wins; on a tie the lower index wins, as in the CPU loop.
    return (b.v > a.v || (b.v == a.v && b.i < a.i)) ? b : a;
}

__device__ __forceinline__ void warp_reduce(float & mx, float & sum, arg_best & best) {
    for (int off = 16; off > 0; off >>= 1) {
        const float omx = __shfl_xor_sync(0xffffffff, mx, off);
        const float osum = __shfl_xor_sync(0xffffffff, sum, off);
        const float nmx = fmaxf(mx, omx);
        sum = (mx == -INFINITY ? 0.0f : sum * __expf(mx - nmx)) + (omx == -INFINITY ? 0.0f : osum * __expf(omx - nmx));
        mx = nmx;
        arg_best o = { __shfl_xor_sync(0xffffffff, best.v, off), __shfl_xor_sync(0xffffffff, best.i, off) };
        best = better(best, o);
    }
}

__global__ void sample_slices(const float * __restrict__ logits, int64_t V, int64_t stride,
                              const sample_row_params * __restrict__ rows, float inv_t, bool greedy,
                              slice_stats * __restrict__ out) {
    const int64_t r = blockIdx.x;
    const int s = blockIdx.y;
    const float * l = logits + r * stride;
    const sample_row_params rp = rows[r];
    const int64_t per = (V + SPLITS - 1) / SPLITS;
    const int64_t i0 = s * per, i1 = min(V, i0 + per);

    // Online max / sum of exp, so each element is read once.
    float mx = -INFINITY, sum = 0.0f;
    arg_best best = { -INFINITY, INT_MAX };
    for (int64_t i = i0 + threadIdx.x; i < i1; i += BLOCK) {
        const float x = l[i] * inv_t;
        if (x > mx) { sum = sum * __expf(mx - x) + 1.0f; mx = x; }
        else if (x != -INFINITY) sum += __expf(x - mx);
        const float score = greedy ? l[i] : x + gumbel_noise(rng_uniform(rp.seed, rp.pos, (uint64_t) i));
        best = better(best, { score, (int) i });
    }
    warp_reduce(mx, sum, best);
    __shared__ float s_mx[BLOCK / 32], s_sum[BLOCK / 32];
    __shared__ arg_best s_best[BLOCK / 32];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) { s_mx[warp] = mx; s_sum[warp] = sum; s_best[warp] = best; }
    __syncthreads();
    if (warp == 0) {
        const bool on = lane < BLOCK / 32;
        mx = on ? s_mx[lane] : -INFINITY;
        sum = on ? s_sum[lane] : 0.0f;
        best = on ? s_best[lane] : arg_best{ -INFINITY, INT_MAX };
        warp_reduce(mx, sum, best);
        if (lane == 0) out[r * SPLITS + s] = { mx, sum, best.v, best.i };
    }
}

__global__ void sample_combine(const float * __restrict__ logits, int64_t stride, const slice_stats * __restrict__ st,
                               float inv_t, sample_out * __restrict__ out) {
    const int64_t r = blockIdx.x;
    const int lane = threadIdx.x;
    const bool on = lane < SPLITS;
    float mx = on ? st[r * SPLITS + lane].max : -INFINITY;
    float sum = on ? st[r * SPLITS + lane].sum : 0.0f;
    arg_best best = on ? arg_best{ st[r * SPLITS + lane].best_v, st[r * SPLITS + lane].best_i } : arg_best{ -INFINITY, INT_MAX };
    warp_reduce(mx, sum, best);
    if (lane == 0) {
        const int tok = best.i;
        out[r] = { tok, logits[r * stride + tok] * inv_t - mx - logf(sum) };
    }
}

// Grow-only device scratch for the per-row parameters, slice statistics and results.
struct scratch {
    std::mutex mu;
    sample_row_params * rows = nullptr;
    slice_stats * stats = nullptr;
    sample_out * out = nullptr;
    int64_t cap = 0;
    cudaStream_t stream = nullptr;
    std::vector<sample_out> host;
} g_scratch;

} // namespace

void sample_rows_cuda(const float * d_logits, int64_t n_vocab, int64_t stride, int64_t n_rows,
                      const sample_row_params * rows, float temperature, int32_t * out_tok, float * out_lp) {
    if (n_rows <= 0) return;
    if (n_vocab > INT_MAX) fail("ERR_INVALID_ARG", "vocabulary too large for the sampling kernel");
    std::lock_guard<std::mutex> lock(g_scratch.mu);
    scratch & s = g_scratch;
    if (!s.stream) cuda_check(cudaStreamCreateWithFlags(&s.stream, cudaStreamNonBlocking), "cudaStreamCreate");
    if (n_rows > s.cap) {
        cudaFree(s.rows); cudaFree(s.stats); cudaFree(s.out);
        s.cap = std::max<int64_t>(n_rows, 64);
        cuda_check(cudaMalloc(&s.rows, s.cap * sizeof(sample_row_params)), "cudaMalloc");
        cuda_check(cudaMalloc(&s.stats, s.cap * SPLITS * sizeof(slice_stats)), "cudaMalloc");
        cuda_check(cudaMalloc(&s.out, s.cap * sizeof(sample_out)), "cudaMalloc");
    }
    const bool greedy = !(temperature > 0.0f);
    const float inv_t = greedy ? 1.0f : 1.0f / temperature;
    cuda_check(cudaMemcpyAsync(s.rows, rows, n_rows * sizeof(sample_row_params), cudaMemcpyHostToDevice, s.stream), "cudaMemcpy");
    sample_slices<<<dim3((unsigned) n_rows, SPLITS), BLOCK, 0, s.stream>>>(d_logits, n_vocab, stride, s.rows, inv_t, greedy, s.stats);
    cuda_check(cudaGetLastError(), "sample_slices launch");
    sample_combine<<<(unsigned) n_rows, 32, 0, s.stream>>>(d_logits, stride, s.stats, inv_t, s.out);
    cuda_check(cudaGetLastError(), "sample_combine launch");
    s.host.resize(n_rows);
    cuda_check(cudaMemcpyAsync(s.host.data(), s.out, n_rows * sizeof(sample_out), cudaMemcpyDeviceToHost, s.stream), "cudaMemcpy");
    cuda_check(cudaStreamSynchronize(s.stream), "cudaStreamSynchronize");
    for (int64_t r = 0; r < n_rows; r++) { out_tok[r] = s.host[r].tok; out_lp[r] = s.host[r].lp; }
}

void sample_rows_cuda_from_host(const float * logits, int64_t n_vocab, int64_t n_rows, const sample_row_params * rows,
                                float temperature, int32_t * out_tok, float * out_lp) {
    float * d = nullptr;
    cuda_check(cudaMalloc(&d, n_rows * n_vocab * sizeof(float)), "cudaMalloc");
    struct guard { float * d; ~guard() { cudaFree(d); } } g{d};
    cuda_check(cudaMemcpy(d, logits, n_rows * n_vocab * sizeof(float), cudaMemcpyHostToDevice), "cudaMemcpy");
    sample_rows_cuda(d, n_vocab, n_vocab, n_rows, rows, temperature, out_tok, out_lp);
}

} // namespace sqlr1
