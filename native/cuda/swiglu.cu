// See swiglu.h. A block covers 256 rows of F by 128 tokens, 4 at a time; ranks go in chunks of 16, so any
// rank works.
#include "swiglu.h"
#include "common.h"
#include "cuda_check.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace sqlr1 {

namespace {

constexpr int TF = 256;      // F per block, one per thread (consecutive, so the [F, T] accesses coalesce)
constexpr int TT = 4;        // tokens per step
constexpr int STEPS = 32;    // steps per block: the factors are read once for 128 tokens
constexpr int KC = 16;       // ranks per chunk

// Each thread keeps its row's slice of the three LoRA factors in registers (for ranks <= 16, once per block)
// and reads the tokens' z vectors from shared memory as broadcasts: 48 multiply-adds per element for 12 vector
// loads.
template <bool BACKWARD, bool REDUCE>
__global__ void __launch_bounds__(TF) swiglu_kernel(swiglu_args a) {
    static_assert(BACKWARD || !REDUCE, "the gradient sums are part of the backward");
    __shared__ __align__(16) float sz[3][TT][KC];  // zg, zu, dzd for the step's tokens: [t][k]
    const int64_t f = (int64_t) blockIdx.x * TF + threadIdx.x;
    const bool on = f < a.F;
    float b[3][KC];
    auto load_factors = [&](int64_t kc) {
#pragma unroll
        for (int k = 0; k < KC; k++) {
            const int64_t kk = kc + k;
            const bool in = on && kk < a.r;
            b[0][k] = in && a.bg ? a.bg[f * a.r + kk] : 0.0f;
            b[1][k] = in && a.bu ? a.bu[f * a.r + kk] : 0.0f;
            b[2][k] = BACKWARD && in && a.ad ? a.ad[kk * a.F + f] : 0.0f;
        }
    };
    const bool one_chunk = a.r <= KC;
    if (one_chunk) load_factors(0);
    float red[3][KC] = {};  // REDUCE: this row's sums over the block's tokens of zg dg, zu du, dzd h
    for (int step = 0; step < STEPS; step++) {
        const int64_t t0 = ((int64_t) blockIdx.y * STEPS + step) * TT;
        if (t0 >= a.T) break;
        // The step's activations are requested first, so their latency hides behind the LoRA terms.
        float gv[TT], uv[TT], dv[TT];
#pragma unroll
        for (int tt = 0; tt < TT; tt++) {
            const int64_t i = (t0 + tt) * a.ld + f;
            const bool in = on && t0 + tt < a.T;
            gv[tt] = in ? a.g[i] : 0.0f;
            uv[tt] = in ? a.u[i] : 0.0f;
            dv[tt] = BACKWARD && in ? a.dh[(t0 + tt) * a.F + f] : 0.0f;
        }
        float acc[3][TT] = {};
        for (int64_t kc = 0; kc < a.r; kc += KC) {
            if (!one_chunk) load_factors(kc);
            __syncthreads();  // the last chunk's readers are done
            for (int i = threadIdx.x; i < 3 * TT * KC; i += TF) {
                const int w = i / (TT * KC), tt = (i / KC) % TT, k = i % KC;
                const int64_t t = t0 + tt, kk = kc + k;
                const float * z = w == 0 ? a.zg : w == 1 ? a.zu : BACKWARD ? a.dzd : nullptr;
                const int64_t ldz = w < 2 ? a.ldz : a.r;
                sz[w][tt][k] = z && kk < a.r && t < a.T ? z[t * ldz + kk] : 0.0f;
            }
            __syncthreads();
#pragma unroll
            for (int tt = 0; tt < TT; tt++) {
#pragma unroll
                for (int w = 0; w < 3; w++) {
#pragma unroll
                    for (int k4 = 0; k4 < KC; k4 += 4) {
                        const float4 z = *reinterpret_cast<const float4 *>(&sz[w][tt][k4]);
                        acc[w][tt] += b[w][k4] * z.x + b[w][k4 + 1] * z.y + b[w][k4 + 2] * z.z + b[w][k4 + 3] * z.w;
                    }
                }
            }
        }
        if (!on) continue;
#pragma unroll
        for (int tt = 0; tt < TT; tt++) {
            const int64_t t = t0 + tt;
            if (t >= a.T) break;
            const int64_t i = t * a.ld + f;
            const float g = gv[tt] + acc[0][tt], u = uv[tt] + acc[1][tt], dh = dv[tt] + acc[2][tt];
            const float sig = 1.0f / (1.0f + __expf(-g)), sg = g * sig;
            const float h = sg * u;
            a.g[i] = h;
            if (!BACKWARD) continue;
            const float dg = dh * u * sig * (1.0f + g * (1.0f - sig)), du = dh * sg;  // silu'(g) = sig (1 + g (1 - sig))
            const int64_t j = t * a.F + f;
            if (!REDUCE) {
                a.u[i] = dg;
                a.dh[j] = du;
            } else {
                // sz still holds this step's z vectors (one chunk: r <= 16); zero where a term is absent.
#pragma unroll
                for (int k = 0; k < KC; k++) {
                    red[0][k] += sz[0][tt][k] * dg;
                    red[1][k] += sz[1][tt][k] * du;
                    red[2][k] += sz[2][tt][k] * h;
                }
            }
            if (a.dg_bf16) reinterpret_cast<__nv_bfloat16 *>(a.dg_bf16)[j] = __float2bfloat16(dg);
            if (a.du_bf16) reinterpret_cast<__nv_bfloat16 *>(a.du_bf16)[j] = __float2bfloat16(du);
        }
    }
    if (REDUCE && on) {
        // partial[(y * 3 + w) * r + k][f], f fastest: one block row per token block
        float * part = a.partial + (int64_t) blockIdx.y * 3 * a.r * a.F;
#pragma unroll
        for (int w = 0; w < 3; w++)
#pragma unroll
            for (int k = 0; k < KC; k++)
                if (k < a.r) part[((int64_t) w * a.r + k) * a.F + f] = red[w][k];
    }
}

// Adds the token blocks' partial sums into the gradients, in block order.
__global__ void swiglu_reduce_kernel(swiglu_args a, int n_blocks) {
    const int64_t i = (int64_t) blockIdx.x * blockDim.x + threadIdx.x;  // over [3, r, F]
    if (i >= 3 * a.r * a.F) return;
    const int64_t w = i / (a.r * a.F), k = (i / a.F) % a.r, f = i % a.F;
    float * dst = w == 0 ? a.dbg : w == 1 ? a.dbu : a.dad;
    if (!dst) return;
    float s = 0.0f;
    for (int y = 0; y < n_blocks; y++) s += a.partial[(int64_t) y * 3 * a.r * a.F + i];
    dst[w < 2 ? f * a.r + k : k * a.F + f] += s;  // B is [r, F] (r fastest), A is [F, r]
}

} // namespace

int64_t swiglu_partial_floats(int64_t F, int64_t T, int64_t r) { return ((T + TT * STEPS - 1) / (TT * STEPS)) * 3 * r * F; }

void swiglu_cuda(const swiglu_args & args) {
    swiglu_args a = args;
    if (a.ld == 0) a.ld = a.F;
    if (a.ldz == 0) a.ldz = a.r;
    if (a.F <= 0 || a.T <= 0 || a.r < 0 || (a.F + TF - 1) / TF > INT32_MAX || (a.T + TT * STEPS - 1) / (TT * STEPS) > 65535 || a.ld < a.F || a.ldz < a.r)
        fail("ERR_INVALID_ARG", "swiglu: bad dimensions %lld x %lld (stride %lld), rank %lld (stride %lld)", (long long) a.F, (long long) a.T,
             (long long) a.ld, (long long) a.r, (long long) a.ldz);
    const dim3 grid((unsigned) ((a.F + TF - 1) / TF), (unsigned) ((a.T + TT * STEPS - 1) / (TT * STEPS)));
    const bool reduce = a.dbg || a.dbu || a.dad;
    if (reduce && (!a.dh || !swiglu_reduces(a.r) || !a.partial))
        fail("ERR_INVALID_ARG", "swiglu: the fused gradient sums need the backward, a rank in [1, 16] and a partial buffer (rank %lld)", (long long) a.r);
    if (reduce && ((a.dbg && !a.zg) || (a.dbu && !a.zu) || (a.dad && !a.dzd)))
        fail("ERR_INVALID_ARG", "swiglu: a gradient sum needs its adapter input");
    cudaStream_t st = project_stream(a.g);
    if (reduce) swiglu_kernel<true, true><<<grid, TF, 0, st>>>(a);
    else if (a.dh) swiglu_kernel<true, false><<<grid, TF, 0, st>>>(a);
    else swiglu_kernel<false, false><<<grid, TF, 0, st>>>(a);
    cuda_check(cudaGetLastError(), "swiglu launch");
    if (reduce) {
        const int64_t n = 3 * a.r * a.F;
        swiglu_reduce_kernel<<<(unsigned) ((n + 255) / 256), 256, 0, st>>>(a, (int) grid.y);
    }
    project_launched(st, "swiglu");
}

void swiglu_cuda_from_host(swiglu_args a) {
    const int64_t ld = a.ld ? a.ld : a.F, ldz = a.ldz ? a.ldz : a.r;
    const size_t n = (size_t) (a.F * a.T), ng = (size_t) (ld * a.T), nf = (size_t) (a.F * a.r), nz = (size_t) (ldz * a.T);
    float * dev = nullptr;
    cuda_check(cudaMalloc(&dev, (2 * ng + n + 3 * nf + 3 * nz + n + 1) * sizeof(float)), "cudaMalloc");
    struct guard { float * p; ~guard() { cudaFree(p); } } gd{dev};
    float * next = dev;
    auto up = [&](const float * h, size_t cnt) -> float * {
        if (!h) return nullptr;
        float * p = next;
        next += cnt;
        cuda_check(cudaMemcpy(p, h, cnt * sizeof(float), cudaMemcpyHostToDevice), "cudaMemcpy");
        return p;
    };
    const size_t np = a.dbg || a.dbu || a.dad ? (size_t) swiglu_partial_floats(a.F, a.T, a.r) : 0;
    float * part = nullptr;
    if (np) cuda_check(cudaMalloc(&part, np * sizeof(float)), "cudaMalloc");
    struct guard2 { float * p; ~guard2() { if (p) cudaFree(p); } } gp{part};
    float * grads = nullptr;
    if (np) cuda_check(cudaMalloc(&grads, 3 * nf * sizeof(float)), "cudaMalloc");
    struct guard3 { float * p; ~guard3() { if (p) cudaFree(p); } } gg{grads};
    swiglu_args d = a;
    d.partial = part;
    float * hg[3] = { a.dbg, a.dbu, a.dad }, ** dg3[3] = { &d.dbg, &d.dbu, &d.dad };
    for (int w = 0; w < 3; w++) {
        *dg3[w] = hg[w] ? grads + w * nf : nullptr;
        if (hg[w]) cuda_check(cudaMemcpy(*dg3[w], hg[w], nf * sizeof(float), cudaMemcpyHostToDevice), "cudaMemcpy");
    }
    d.g = up(a.g, ng);
    d.u = up(a.u, ng);
    d.dh = up(a.dh, n);
    d.bg = up(a.bg, nf); d.zg = up(a.zg, nz);
    d.bu = up(a.bu, nf); d.zu = up(a.zu, nz);
    d.ad = up(a.ad, nf); d.dzd = up(a.dzd, (size_t) (a.r * a.T));
    uint16_t * d_bf16 = reinterpret_cast<uint16_t *>(next);  // n floats hold both n-element BF16 copies
    d.dg_bf16 = a.dg_bf16 ? d_bf16 : nullptr;
    d.du_bf16 = a.du_bf16 ? d_bf16 + n : nullptr;
    uploads_done();
    swiglu_cuda(d);
    auto down = [&](float * h, const float * p, size_t cnt) { if (h) cuda_check(cudaMemcpy(h, p, cnt * sizeof(float), cudaMemcpyDeviceToHost), "cudaMemcpy"); };
    down(a.g, d.g, ng);
    down(a.u, d.u, ng);
    down(a.dh, d.dh, n);
    if (a.dg_bf16) cuda_check(cudaMemcpy(a.dg_bf16, d.dg_bf16, n * sizeof(uint16_t), cudaMemcpyDeviceToHost), "cudaMemcpy");
    if (a.du_bf16) cuda_check(cudaMemcpy(a.du_bf16, d.du_bf16, n * sizeof(uint16_t), cudaMemcpyDeviceToHost), "cudaMemcpy");
    for (int w = 0; w < 3; w++) if (hg[w]) cuda_check(cudaMemcpy(hg[w], *dg3[w], nf * sizeof(float), cudaMemcpyDeviceToHost), "cudaMemcpy");
}

} // namespace sqlr1
