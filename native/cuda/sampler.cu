// Token sampling on the GPU: one block per row of logits, so that only the drawn token ids and their
// log-probs cross to the host (not rows of 151,936 floats). Same rule and RNG as the CPU loop in
// native/src/sampler.cpp (sampler_core.h); checked against it in test/native/sampling.test.ts.
#include "sampler.h"
#include "common.h"

#include <cuda_runtime.h>

#include <cfloat>
#include <mutex>

namespace sqlr1 {

namespace {

constexpr int BLOCK = 1024;

struct arg_best { float v; int i; };

__device__ __forceinline__ arg_best better(arg_best a, arg_best b) {
    // Larger value wins; on a tie the lower index wins, as in the CPU loop.
    return (b.v > a.v || (b.v == a.v && b.i < a.i)) ? b : a;
}

__global__ void sample_kernel(const float * __restrict__ logits, int64_t V, int64_t stride,
                              const sample_row_params * __restrict__ rows, float inv_t, bool greedy,
                              int32_t * __restrict__ out_tok, float * __restrict__ out_lp) {
    const int64_t r = blockIdx.x;
    const float * l = logits + r * stride;
    const sample_row_params rp = rows[r];
    __shared__ float s_max[BLOCK / 32];
    __shared__ arg_best s_best[BLOCK / 32];
    __shared__ float s_sum[BLOCK / 32];

    float mx = -FLT_MAX;
    arg_best best = { -INFINITY, INT_MAX };
    for (int64_t i = threadIdx.x; i < V; i += BLOCK) {
        const float x = l[i] * inv_t;
        mx = fmaxf(mx, x);
        const float score = greedy ? l[i] : x + gumbel_noise(rng_uniform(rp.seed, rp.pos, (uint64_t) i));
        best = better(best, { score, (int) i });
    }
    for (int off = 16; off > 0; off >>= 1) {
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, off));
        arg_best o = { __shfl_xor_sync(0xffffffff, best.v, off), __shfl_xor_sync(0xffffffff, best.i, off) };
        best = better(best, o);
    }
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) { s_max[warp] = mx; s_best[warp] = best; }
    __syncthreads();
    if (warp == 0) {
        mx = s_max[lane];
        best = s_best[lane];
        for (int off = 16; off > 0; off >>= 1) {
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, off));
            arg_best o = { __shfl_xor_sync(0xffffffff, best.v, off), __shfl_xor_sync(0xffffffff, best.i, off) };
            best = better(best, o);
        }
        if (lane == 0) { s_max[0] = mx; s_best[0] = best; }
    }
    __syncthreads();
    mx = s_max[0];

    float sum = 0.0f;
    for (int64_t i = threadIdx.x; i < V; i += BLOCK) sum += __expf(l[i] * inv_t - mx);
    for (int off = 16; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffff, sum, off);
    if (lane == 0) s_sum[warp] = sum;
    __syncthreads();
    if (threadIdx.x == 0) {
        float total = 0.0f;
        for (int w = 0; w < BLOCK / 32; w++) total += s_sum[w];
        const int tok = s_best[0].i;
        out_tok[r] = tok;
        out_lp[r] = l[tok] * inv_t - mx - logf(total);
    }
}

void check(cudaError_t e, const char * what) {
    if (e != cudaSuccess) fail("ERR_INTERNAL", "CUDA error in %s: %s", what, cudaGetErrorString(e));
}

// Grow-only device scratch for the per-row parameters and results.
struct scratch {
    std::mutex mu;
    sample_row_params * rows = nullptr;
    int32_t * tok = nullptr;
    float * lp = nullptr;
    int64_t cap = 0;
    cudaStream_t stream = nullptr;
} g_scratch;

} // namespace

void sample_rows_cuda(const float * d_logits, int64_t n_vocab, int64_t stride, int64_t n_rows,
                      const sample_row_params * rows, float temperature, int32_t * out_tok, float * out_lp) {
    if (n_rows <= 0) return;
    std::lock_guard<std::mutex> lock(g_scratch.mu);
    scratch & s = g_scratch;
    if (!s.stream) check(cudaStreamCreateWithFlags(&s.stream, cudaStreamNonBlocking), "cudaStreamCreate");
    if (n_rows > s.cap) {
        cudaFree(s.rows); cudaFree(s.tok); cudaFree(s.lp);
        s.cap = std::max<int64_t>(n_rows, 64);
        check(cudaMalloc(&s.rows, s.cap * sizeof(sample_row_params)), "cudaMalloc");
        check(cudaMalloc(&s.tok, s.cap * sizeof(int32_t)), "cudaMalloc");
        check(cudaMalloc(&s.lp, s.cap * sizeof(float)), "cudaMalloc");
    }
    const bool greedy = !(temperature > 0.0f);
    const float inv_t = greedy ? 1.0f : 1.0f / temperature;
    check(cudaMemcpyAsync(s.rows, rows, n_rows * sizeof(sample_row_params), cudaMemcpyHostToDevice, s.stream), "cudaMemcpy");
    sample_kernel<<<(unsigned) n_rows, BLOCK, 0, s.stream>>>(d_logits, n_vocab, stride, s.rows, inv_t, greedy, s.tok, s.lp);
    check(cudaGetLastError(), "sample_kernel launch");
    check(cudaMemcpyAsync(out_tok, s.tok, n_rows * sizeof(int32_t), cudaMemcpyDeviceToHost, s.stream), "cudaMemcpy");
    check(cudaMemcpyAsync(out_lp, s.lp, n_rows * sizeof(float), cudaMemcpyDeviceToHost, s.stream), "cudaMemcpy");
    check(cudaStreamSynchronize(s.stream), "cudaStreamSynchronize");
}

} // namespace sqlr1
