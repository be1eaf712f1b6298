// Attention for training (see attention.h): three kernels on BF16 matrix units (WMMA, F32 accumulate).
//
// A block has 4 warps and owns a tile of 64 rows; each warp owns 16 of them and the products it needs run on
// 16x16x16 fragments. Scores pass through a per-warp shared-memory tile (F32) where the softmax arithmetic and
// the mask (causal, or each query's span) are applied element by element, then go back to the matrix units as
// BF16. A pair of tiles where no query sees any key is skipped whole. The backward
// kernels keep one F32 tile per warp (S, then dP), so that two blocks fit on an SM.
//  - forward: per query tile, one pass over the key tiles for each row's max and sum of exp (the log-sum-exp
//    L), a second for O = softmax V with the final normalization (no running rescale of O);
//  - dQ: per query tile, over key tiles: P = exp(scale S - L), dS = P (dO V^T - D) scale, dQ += dS K;
//  - dK, dV: per key tile and query head, over the query tiles at or after it: dV += P^T dO, dK += dS^T Q.
// Every pair of tiles the causal mask would visit is checked against the query tile's spans first, so a prompt
// shared by several completions costs its own tiles once and each completion only its prompt and itself.
// Each output element is written by one block: no atomics, the same result on every run.
#include "attention.h"
#include "common.h"
#include "cuda_check.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <climits>
#include <cmath>

#include <tuple>

namespace sqlr1 {

namespace {

using bf16 = __nv_bfloat16;
namespace wmma = nvcuda::wmma;

constexpr int BR = 64;              // rows of a tile
constexpr int WARPS = 4;            // each owns 16 rows
constexpr int THREADS = WARPS * 32;
constexpr int LDS = BR + 4;         // stride of a warp's F32 [16][64] tile (WMMA wants a multiple of 4 floats)
constexpr int LDP = BR + 8;         // stride of a warp's BF16 [16][64] tile (a multiple of 8)

constexpr size_t SPAN_BYTES = 3 * BR * sizeof(int);  // a query tile's spans in shared memory

template <int D> struct cfg {
    static constexpr int LDH = D + 8;         // stride of a BF16 [64][D] tile; the +8 staggers the banks
    static constexpr int TILE = BR * LDH;     // elements of one such tile
    static constexpr int LDO = D + 4;         // stride of the F32 staging rows for the output
};

using frag_a = wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major>;
using frag_bt = wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major>;  // B^T of a row-major tile
using frag_b = wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major>;
using frag_c = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;

// Rows [row0, row0 + 64) of one head of a [D, heads, T] tensor, from token tok0 on, into a [64][D] tile; rows
// at or past nt are zero.
template <int D>
__device__ void load_tile(bf16 * dst, const bf16 * __restrict__ src, int64_t heads, int64_t head, int64_t tok0, int64_t row0, int64_t nt) {
    constexpr int VPR = D / 8;  // 16-byte vectors per row
    for (int i = threadIdx.x; i < BR * VPR; i += THREADS) {
        const int r = i / VPR, c = i % VPR;
        const int64_t row = row0 + r;
        uint4 val = make_uint4(0, 0, 0, 0);
        if (row < nt) val = *reinterpret_cast<const uint4 *>(src + ((tok0 + row) * heads + head) * D + c * 8);
        *reinterpret_cast<uint4 *>(dst + r * cfg<D>::LDH + c * 8) = val;
    }
}

// Key tile jt of K and V into Ks and Vs, once every warp is done with the last one.
template <int D>
__device__ void next_kv_tile(bf16 * Ks, bf16 * Vs, const bf16 * __restrict__ k, const bf16 * __restrict__ v, int64_t Hk, int64_t hk,
                             int64_t tok0, int64_t jt, int64_t nt) {
    __syncthreads();
    load_tile<D>(Ks, k, Hk, hk, tok0, jt * BR, nt);
    load_tile<D>(Vs, v, Hk, hk, tok0, jt * BR, nt);
    __syncthreads();
}

template <int D>
__device__ void zero(frag_c (&acc)[D / 16]) {
#pragma unroll
    for (int n = 0; n < D / 16; n++) wmma::fill_fragment(acc[n], 0.0f);
}

// S [16][64] (F32) = A [16][D] B^T for B [64][D]; A and B are BF16 tile rows.
template <int D>
__device__ void mm_abt(const bf16 * A, const bf16 * B, float * S) {
#pragma unroll
    for (int n = 0; n < BR / 16; n++) {
        frag_c c;
        wmma::fill_fragment(c, 0.0f);
#pragma unroll
        for (int k = 0; k < D / 16; k++) {
            frag_a a;
            frag_bt b;
            wmma::load_matrix_sync(a, A + k * 16, cfg<D>::LDH);
            wmma::load_matrix_sync(b, B + n * 16 * cfg<D>::LDH + k * 16, cfg<D>::LDH);
            wmma::mma_sync(c, a, b, c);
        }
        wmma::store_matrix_sync(S + n * 16, c, LDS, wmma::mem_row_major);
    }
}

// acc [16][D] += P [16][64] B, P a warp's BF16 tile and B a [64][D] tile.
template <int D>
__device__ void mm_ab(const bf16 * P, const bf16 * B, frag_c (&acc)[D / 16]) {
#pragma unroll
    for (int k = 0; k < BR / 16; k++) {
        frag_a a;
        wmma::load_matrix_sync(a, P + k * 16, LDP);
#pragma unroll
        for (int n = 0; n < D / 16; n++) {
            frag_b b;
            wmma::load_matrix_sync(b, B + k * 16 * cfg<D>::LDH + n * 16, cfg<D>::LDH);
            wmma::mma_sync(acc[n], a, b, acc[n]);
        }
    }
}

// The spans of the query tile at q0 into sp ({from} [64], {shared_end} [64], {own_from} [64]); causal (null
// span) is {0, 0, 0}: [0, 0) and [0, q].
__device__ void load_spans(int * sp, const int32_t * __restrict__ span, int64_t tok0, int64_t q0, int64_t nt) {
    if (threadIdx.x < BR) {
        const int64_t row = q0 + threadIdx.x;
        int a = 0, b = 0, c = 0;
        if (span && row < nt) {
            const int32_t * e = span + 3 * (tok0 + row);
            a = e[0];
            b = e[1];
            c = e[2];
        }
        sp[threadIdx.x] = a;
        sp[BR + threadIdx.x] = b;
        sp[2 * BR + threadIdx.x] = c;
    }
}

// Whether query q, row r of the tile whose spans are in sp, sees key k.
__device__ __forceinline__ bool sees(const int * sp, int r, int q, int k) {
    return k <= q && ((k >= sp[r] && k < sp[BR + r]) || k >= sp[2 * BR + r]);
}

// Whether any query of the tile at q0 (spans in sp, written by the same threads) sees any key of the tile at k0.
// Every thread of the block must call it: it is also a barrier.
__device__ bool tile_pair_live(const int * sp, int64_t q0, int64_t k0, int64_t nt) {
    bool any = false;
    if (threadIdx.x < BR) {
        const int64_t q = q0 + threadIdx.x;
        if (q < nt) {
            const int64_t end = min(k0 + BR, q + 1);  // keys after the query are never seen
            const int64_t a = sp[threadIdx.x], b = sp[BR + threadIdx.x], c = sp[2 * BR + threadIdx.x];
            any = max(k0, a) < min(end, b) || max(k0, c) < end;
        }
    }
    return __syncthreads_or(any);
}

// A warp's probability tile P [16][64] = exp(scale S - L) in BF16 from its score tile S (F32), zero where
// on(r, c) is false (a key its query does not see, or a row past the sequence); lse(r, c) is L for the entry. Tiles of
// the forward and of dQ are [queries][keys]; dK/dV's is the transpose.
template <typename On, typename Lse>
__device__ __forceinline__ void causal_probs(const float * S, bf16 * P, float scale, int lane, On on, Lse lse) {
#pragma unroll
    for (int r = 0; r < 16; r++) {
#pragma unroll
        for (int c = lane; c < BR; c += 32) P[r * LDP + c] = __float2bfloat16(on(r, c) ? __expf(S[r * LDS + c] * scale - lse(r, c)) : 0.0f);
    }
}

// The softmax's backward on a warp's tile: dS = P (dP - D) scale, with dsum(r, c) the entry's D (P and dS may be
// the same tile: each entry is read, then written, by one lane).
template <typename Dsum>
__device__ __forceinline__ void softmax_grad(const float * dP, const bf16 * P, bf16 * dS, float scale, int lane, Dsum dsum) {
#pragma unroll
    for (int r = 0; r < 16; r++) {
#pragma unroll
        for (int c = lane; c < BR; c += 32) dS[r * LDP + c] = __float2bfloat16(__bfloat162float(P[r * LDP + c]) * (dP[r * LDS + c] - dsum(r, c)) * scale);
    }
}

// A warp's [16][D] accumulator to rows row0.. of one head of an F32 [D, heads, T] tensor, through the warp's
// staging rows; rows at or past nt are skipped.
template <int D>
__device__ void store_rows(frag_c (&acc)[D / 16], float * stage, float * __restrict__ out, int64_t heads, int64_t head,
                           int64_t tok0, int64_t row0, int64_t nt) {
#pragma unroll
    for (int n = 0; n < D / 16; n++) wmma::store_matrix_sync(stage + n * 16, acc[n], cfg<D>::LDO, wmma::mem_row_major);
    __syncwarp();
    constexpr int VPR = D / 4;
    for (int i = threadIdx.x & 31; i < 16 * VPR; i += 32) {
        const int r = i / VPR, c = i % VPR;
        const int64_t row = row0 + r;
        if (row < nt) {
            *reinterpret_cast<float4 *>(out + ((tok0 + row) * heads + head) * D + c * 4) =
                *reinterpret_cast<const float4 *>(stage + r * cfg<D>::LDO + c * 4);
        }
    }
    __syncwarp();
}

// Shared memory per kernel: the tiles, the warps' F32 and BF16 tiles, (dK/dV: each query row's L and D), the spans.
template <int D> __host__ __device__ constexpr size_t smem_fwd() { return 3 * cfg<D>::TILE * 2 + WARPS * 16 * (LDS * 4 + LDP * 2) + SPAN_BYTES; }
template <int D> __host__ __device__ constexpr size_t smem_dq() { return 4 * cfg<D>::TILE * 2 + WARPS * 16 * (LDS * 4 + LDP * 2) + SPAN_BYTES; }
template <int D> __host__ __device__ constexpr size_t smem_dkv() { return 4 * cfg<D>::TILE * 2 + WARPS * 16 * (LDS * 4 + 2 * LDP * 2) + 2 * BR * 4 + SPAN_BYTES; }

template <int D>
__global__ void __launch_bounds__(THREADS) attn_fwd(const bf16 * __restrict__ q, const bf16 * __restrict__ k,
                                                    const bf16 * __restrict__ v, float * __restrict__ o, float * __restrict__ lse,
                                                    const int32_t * __restrict__ span, int64_t H, int64_t Hk, int64_t nt, float scale) {
#if __CUDA_ARCH__ >= 800
    using C = cfg<D>;
    extern __shared__ __align__(128) unsigned char smem[];
    bf16 * Qs = reinterpret_cast<bf16 *>(smem);
    bf16 * Ks = Qs + C::TILE;
    bf16 * Vs = Ks + C::TILE;
    const int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
    float * Sw = reinterpret_cast<float *>(Vs + C::TILE) + warp * 16 * LDS;
    bf16 * Pw = reinterpret_cast<bf16 *>(reinterpret_cast<float *>(Vs + C::TILE) + WARPS * 16 * LDS) + warp * 16 * LDP;
    int * Sp = reinterpret_cast<int *>(smem + smem_fwd<D>() - SPAN_BYTES);

    const int64_t it = blockIdx.x, h = blockIdx.y, tok0 = blockIdx.z * nt, q0 = it * BR;
    const int64_t hk = h / (H / Hk);
    load_tile<D>(Qs, q, H, h, tok0, q0, nt);
    load_spans(Sp, span, tok0, q0, nt);
    // Lane l covers columns l and l + 32 of each of the warp's 16 rows (conflict-free shared-memory rows).
    const int64_t qbase = q0 + warp * 16;
    const int wr = warp * 16;  // the warp's first row in the tile

    // Pass 1: each row's max and sum of exp, online per lane over the key tiles, then across the lanes.
    float m[16], l[16];
#pragma unroll
    for (int r = 0; r < 16; r++) {
        m[r] = -INFINITY;
        l[r] = 0.0f;
    }
    for (int64_t jt = 0; jt <= it; jt++) {
        if (!tile_pair_live(Sp, q0, jt * BR, nt)) continue;  // also: the last tile's readers are done
        load_tile<D>(Ks, k, Hk, hk, tok0, jt * BR, nt);
        __syncthreads();
        mm_abt<D>(Qs + warp * 16 * C::LDH, Ks, Sw);
        __syncwarp();
        const int64_t kb = jt * BR;
#pragma unroll
        for (int r = 0; r < 16; r++) {
            const float s0 = sees(Sp, wr + r, (int) qbase + r, (int) kb + lane) ? Sw[r * LDS + lane] * scale : -INFINITY;
            const float s1 = sees(Sp, wr + r, (int) qbase + r, (int) kb + lane + 32) ? Sw[r * LDS + lane + 32] * scale : -INFINITY;
            const float mn = fmaxf(m[r], fmaxf(s0, s1));
            if (mn != -INFINITY) {
                l[r] = l[r] * __expf(m[r] - mn) + __expf(s0 - mn) + __expf(s1 - mn);
                m[r] = mn;
            }
        }
        __syncwarp();
    }
    float L[16];
#pragma unroll
    for (int r = 0; r < 16; r++) {
        for (int off = 16; off > 0; off >>= 1) {
            const float m2 = __shfl_xor_sync(0xffffffffu, m[r], off), l2 = __shfl_xor_sync(0xffffffffu, l[r], off);
            const float mn = fmaxf(m[r], m2);
            l[r] = (m[r] == -INFINITY ? 0.0f : l[r] * __expf(m[r] - mn)) + (m2 == -INFINITY ? 0.0f : l2 * __expf(m2 - mn));
            m[r] = mn;
        }
        L[r] = m[r] + logf(l[r]);  // a real row always has its own key
        if (lane == r && qbase + r < nt) lse[(tok0 + qbase + r) * H + h] = L[r];
    }

    // Pass 2: O = exp(scale S - L) V.
    frag_c acc[D / 16];
    zero<D>(acc);
    for (int64_t jt = 0; jt <= it; jt++) {
        if (!tile_pair_live(Sp, q0, jt * BR, nt)) continue;
        next_kv_tile<D>(Ks, Vs, k, v, Hk, hk, tok0, jt, nt);
        mm_abt<D>(Qs + warp * 16 * C::LDH, Ks, Sw);
        __syncwarp();
        const int64_t kb = jt * BR;
        causal_probs(Sw, Pw, scale, lane, [&](int r, int c) { return sees(Sp, wr + r, (int) (qbase + r), (int) (kb + c)); }, [&](int r, int) { return L[r]; });
        __syncwarp();
        mm_ab<D>(Pw, Vs, acc);
    }
    __syncthreads();  // Ks and Vs become the staging rows
    store_rows<D>(acc, reinterpret_cast<float *>(Ks) + warp * 16 * C::LDO, o, H, h, tok0, qbase, nt);
#endif
}

template <int D>
__global__ void __launch_bounds__(THREADS) attn_bwd_dq(const bf16 * __restrict__ q, const bf16 * __restrict__ k,
                                                       const bf16 * __restrict__ v, const bf16 * __restrict__ dout,
                                                       const float * __restrict__ lse, const float * __restrict__ dsum,
                                                       float * __restrict__ dq, const int32_t * __restrict__ span,
                                                       int64_t H, int64_t Hk, int64_t nt, float scale) {
#if __CUDA_ARCH__ >= 800
    using C = cfg<D>;
    extern __shared__ __align__(128) unsigned char smem[];
    bf16 * Ks = reinterpret_cast<bf16 *>(smem);
    bf16 * Vs = Ks + C::TILE;
    bf16 * Qs = Vs + C::TILE;
    bf16 * dOs = Qs + C::TILE;
    const int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
    float * Sw = reinterpret_cast<float *>(dOs + C::TILE) + warp * 16 * LDS;       // S, then dP
    bf16 * dSw = reinterpret_cast<bf16 *>(reinterpret_cast<float *>(dOs + C::TILE) + WARPS * 16 * LDS) + warp * 16 * LDP;  // P, then dS
    int * Sp = reinterpret_cast<int *>(smem + smem_dq<D>() - SPAN_BYTES);

    const int64_t it = blockIdx.x, h = blockIdx.y, tok0 = blockIdx.z * nt, q0 = it * BR;
    const int64_t hk = h / (H / Hk);
    load_tile<D>(Qs, q, H, h, tok0, q0, nt);
    load_tile<D>(dOs, dout, H, h, tok0, q0, nt);
    load_spans(Sp, span, tok0, q0, nt);
    const int wr = warp * 16;
    // Lane l covers columns l and l + 32 of each of the warp's 16 rows; each lane holds every row's L and D.
    const int64_t qbase = q0 + warp * 16;
    float L[16], Dr[16];
#pragma unroll
    for (int r = 0; r < 16; r++) {
        const bool real = qbase + r < nt;
        L[r] = real ? lse[(tok0 + qbase + r) * H + h] : 0.0f;
        Dr[r] = real ? dsum[(tok0 + qbase + r) * H + h] : 0.0f;
    }

    frag_c acc[D / 16];
    zero<D>(acc);
    for (int64_t jt = 0; jt <= it; jt++) {
        if (!tile_pair_live(Sp, q0, jt * BR, nt)) continue;
        next_kv_tile<D>(Ks, Vs, k, v, Hk, hk, tok0, jt, nt);
        // One F32 tile per warp (so that two blocks fit on an SM): S gives P (kept in BF16), then dP gives dS.
        mm_abt<D>(Qs + warp * 16 * C::LDH, Ks, Sw);
        __syncwarp();
        const int64_t kb = jt * BR;
        causal_probs(Sw, dSw, scale, lane, [&](int r, int c) { return qbase + r < nt && sees(Sp, wr + r, (int) (qbase + r), (int) (kb + c)); }, [&](int r, int) { return L[r]; });
        __syncwarp();
        mm_abt<D>(dOs + warp * 16 * C::LDH, Vs, Sw);
        __syncwarp();
        softmax_grad(Sw, dSw, dSw, scale, lane, [&](int r, int) { return Dr[r]; });
        __syncwarp();
        mm_ab<D>(dSw, Ks, acc);
    }
    __syncthreads();
    store_rows<D>(acc, reinterpret_cast<float *>(Ks) + warp * 16 * C::LDO, dq, H, h, tok0, qbase, nt);
#endif
}

template <int D>
__global__ void __launch_bounds__(THREADS) attn_bwd_dkv(const bf16 * __restrict__ q, const bf16 * __restrict__ k,
                                                        const bf16 * __restrict__ v, const bf16 * __restrict__ dout,
                                                        const float * __restrict__ lse, const float * __restrict__ dsum,
                                                        float * __restrict__ dk, float * __restrict__ dv, const int32_t * __restrict__ span,
                                                        int64_t H, int64_t Hk, int64_t nt, float scale) {
#if __CUDA_ARCH__ >= 800
    using C = cfg<D>;
    extern __shared__ __align__(128) unsigned char smem[];
    bf16 * Ks = reinterpret_cast<bf16 *>(smem);
    bf16 * Vs = Ks + C::TILE;
    bf16 * Qs = Vs + C::TILE;
    bf16 * dOs = Qs + C::TILE;
    const int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
    float * f32 = reinterpret_cast<float *>(dOs + C::TILE);
    float * Sw = f32 + warp * 16 * LDS;                    // S^T: [16 keys][64 queries], then dP^T
    bf16 * b16 = reinterpret_cast<bf16 *>(f32 + WARPS * 16 * LDS);
    bf16 * Pw = b16 + warp * 16 * LDP;
    bf16 * dSw = b16 + (WARPS + warp) * 16 * LDP;
    float * Ls = reinterpret_cast<float *>(b16 + 2 * WARPS * 16 * LDP);
    float * Ds = Ls + BR;
    int * Sp = reinterpret_cast<int *>(Ds + BR);  // the current query tile's spans

    const int64_t jt = blockIdx.x, h = blockIdx.y, tok0 = blockIdx.z * nt, k0 = jt * BR;
    const int64_t hk = h / (H / Hk), n_qt = (nt + BR - 1) / BR;
    load_tile<D>(Ks, k, Hk, hk, tok0, k0, nt);
    load_tile<D>(Vs, v, Hk, hk, tok0, k0, nt);
    // Lane l covers columns (queries) l and l + 32 of each of the warp's 16 rows (keys).
    const int64_t kbase = k0 + warp * 16;

    frag_c acc_k[D / 16], acc_v[D / 16];
    zero<D>(acc_k);
    zero<D>(acc_v);
    for (int64_t it = jt; it < n_qt; it++) {
        const int64_t q0 = it * BR;
        __syncthreads();  // the last query tile's readers are done
        load_spans(Sp, span, tok0, q0, nt);
        if (!tile_pair_live(Sp, q0, k0, nt)) continue;
        load_tile<D>(Qs, q, H, h, tok0, q0, nt);
        load_tile<D>(dOs, dout, H, h, tok0, q0, nt);
        if (threadIdx.x < BR) {
            const int64_t row = q0 + threadIdx.x;
            Ls[threadIdx.x] = row < nt ? lse[(tok0 + row) * H + h] : 0.0f;
            Ds[threadIdx.x] = row < nt ? dsum[(tok0 + row) * H + h] : 0.0f;
        }
        __syncthreads();
        // One F32 tile per warp (so that two blocks fit on an SM): S^T gives P^T (BF16), then dP^T gives dS^T.
        mm_abt<D>(Ks + warp * 16 * C::LDH, Qs, Sw);
        __syncwarp();
        causal_probs(Sw, Pw, scale, lane, [&](int r, int c) { return q0 + c < nt && sees(Sp, c, (int) (q0 + c), (int) (kbase + r)); }, [&](int, int c) { return Ls[c]; });
        __syncwarp();
        mm_abt<D>(Vs + warp * 16 * C::LDH, dOs, Sw);
        __syncwarp();
        softmax_grad(Sw, Pw, dSw, scale, lane, [&](int, int c) { return Ds[c]; });
        __syncwarp();
        mm_ab<D>(Pw, dOs, acc_v);
        mm_ab<D>(dSw, Qs, acc_k);
    }
    __syncthreads();  // Qs and dOs become the staging rows
    float * stage = reinterpret_cast<float *>(Qs) + warp * 16 * C::LDO;
    store_rows<D>(acc_k, stage, dk, H, h, tok0, kbase, nt);
    store_rows<D>(acc_v, stage, dv, H, h, tok0, kbase, nt);
#endif
}

// D = rowsum(dO * O) per query row and head [H, T], one warp per row, and the BF16 copy of dO.
__global__ void dsum_kernel(const float * __restrict__ dout, const float * __restrict__ o, float * __restrict__ dsum,
                            bf16 * __restrict__ dout_bf16, int64_t hd, int64_t rows) {
    const int64_t row = (int64_t) blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (row >= rows) return;
    const int lane = threadIdx.x & 31;
    float acc = 0.0f;
    for (int64_t e = lane; e < hd; e += 32) {
        const float g = dout[row * hd + e];
        acc += g * o[row * hd + e];
        dout_bf16[row * hd + e] = __float2bfloat16(g);
    }
    for (int off = 16; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
    if (lane == 0) dsum[row] = acc;
}

// dK, dV per query head [hd, H, T] -> per KV head [hd, Hk, T]: query head h belongs to KV head h / group.
__global__ void group_sum_kernel(const float * __restrict__ src, float * __restrict__ dst, int64_t hd, int64_t Hk, int64_t group, int64_t n) {
    const int64_t i = (int64_t) blockIdx.x * blockDim.x + threadIdx.x;  // over hd * Hk * T
    if (i >= n) return;
    const int64_t e = i % hd, rest = i / hd, g = rest % Hk, t = rest / Hk;
    const float * s = src + ((t * Hk + g) * group) * hd + e;
    float acc = 0.0f;
    for (int64_t j = 0; j < group; j++) acc += s[j * hd];
    dst[i] = acc;
}


template <typename K, typename... A>
void launch(K kernel, size_t smem, const attn_dims & d, cudaStream_t st, const char * what, A... args) {
    cuda_check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int) smem), what);
    const dim3 grid((unsigned) ((d.nt + BR - 1) / BR), (unsigned) d.H, (unsigned) d.ns);
    kernel<<<grid, THREADS, smem, st>>>(args..., (int64_t) d.H, (int64_t) d.Hk, (int64_t) d.nt, d.scale);
    cuda_check(cudaGetLastError(), what);
}

void check_dims(const attn_dims & d) {
    if (d.hd <= 0 || d.H <= 0 || d.Hk <= 0 || d.H % d.Hk != 0 || d.nt <= 0 || d.ns <= 0 || d.H > 65535 || d.ns > 65535)
        fail("ERR_INVALID_ARG", "attention: bad dimensions hd %lld, heads %lld / %lld, %lld x %lld tokens", (long long) d.hd,
             (long long) d.H, (long long) d.Hk, (long long) d.ns, (long long) d.nt);
}

template <int D>
void forward_d(const attn_dims & d, const bf16 * q, const bf16 * k, const bf16 * v, float * o, float * lse) {
    cudaStream_t st = project_stream(q);
    launch(attn_fwd<D>, smem_fwd<D>(), d, st, "attention forward", q, k, v, o, lse, d.span);
    project_launched(st, "attention forward");
}

template <int D>
void backward_d(const attn_dims & d, const bf16 * q, const bf16 * k, const bf16 * v, const float * o, const float * dout_f32,
                bf16 * dout, const float * lse, float * dsum, float * dq, float * dk, float * dv, float * per_head) {
    cudaStream_t st = project_stream(q);
    const int64_t rows = d.H * d.nt * d.ns;
    dsum_kernel<<<(unsigned) ((rows + 7) / 8), 256, 0, st>>>(dout_f32, o, dsum, dout, d.hd, rows);
    cuda_check(cudaGetLastError(), "attention backward (D)");
    launch(attn_bwd_dq<D>, smem_dq<D>(), d, st, "attention backward (dQ)", q, k, v, dout, lse, dsum, dq, d.span);
    const int64_t group = d.H / d.Hk;
    if (group == 1) {
        launch(attn_bwd_dkv<D>, smem_dkv<D>(), d, st, "attention backward (dK, dV)", q, k, v, dout, lse, dsum, dk, dv, d.span);
    } else {
        const int64_t nh = d.hd * d.H * d.nt * d.ns, n = nh / group;
        launch(attn_bwd_dkv<D>, smem_dkv<D>(), d, st, "attention backward (dK, dV)", q, k, v, dout, lse, dsum, per_head, per_head + nh, d.span);
        const unsigned blocks = (unsigned) ((n + 255) / 256);
        group_sum_kernel<<<blocks, 256, 0, st>>>(per_head, dk, d.hd, d.Hk, group, n);
        group_sum_kernel<<<blocks, 256, 0, st>>>(per_head + nh, dv, d.hd, d.Hk, group, n);
    }
    project_launched(st, "attention backward");
}

#define SQLR1_ATTN_HEAD_SIZES(X) X(16) X(32) X(64) X(128)

// One block per query row (row = sequence * nt + query): the keys in [a0, a1) and [b0, q] are seen.
__global__ void mask_f16_kernel(__half * __restrict__ mask, const int32_t * __restrict__ span, int64_t nt) {
    const int64_t row = blockIdx.x, q = row % nt;
    int64_t a0 = 0, a1 = q + 1, b0 = q + 1;  // causal: [0, q]
    if (span) {
        const int32_t * sp = span + 3 * row;
        a0 = sp[0];
        a1 = sp[1] < q + 1 ? (int64_t) sp[1] : q + 1;
        b0 = sp[2];
    }
    const __half seen = __ushort_as_half((unsigned short) 0x0000), unseen = __ushort_as_half((unsigned short) 0xFC00);  // 0, -inf
    __half * r = mask + row * nt;
    for (int64_t k = threadIdx.x; k < nt; k += blockDim.x) r[k] = (k >= a0 && k < a1) || (k >= b0 && k <= q) ? seen : unseen;
}

} // namespace

void attn_mask_f16_cuda(void * mask, const int32_t * span, int64_t nt, int64_t ns) {
    if (nt <= 0 || ns <= 0 || nt * ns > INT32_MAX)
        fail("ERR_INVALID_ARG", "attention mask: bad dimensions %lld x %lld tokens", (long long) ns, (long long) nt);
    cudaStream_t st = project_stream(mask);
    mask_f16_kernel<<<(unsigned) (nt * ns), 256, 0, st>>>((__half *) mask, span, nt);
    project_launched(st, "attention mask");
}

std::vector<uint16_t> attn_mask_f16_from_host(const int32_t * span, int64_t nt, int64_t ns) {
    const size_t n = (size_t) (nt * nt * ns), span_n = span ? (size_t) (3 * nt * ns) : 0;
    char * dev = nullptr;
    cuda_check(cudaMalloc(&dev, n * sizeof(__half) + span_n * sizeof(int32_t) + 16), "cudaMalloc");
    struct guard { char * p; ~guard() { cudaFree(p); } } g{dev};
    int32_t * dspan = span ? (int32_t *) (dev + ((n * sizeof(__half) + 15) / 16) * 16) : nullptr;
    if (span) cuda_check(cudaMemcpy(dspan, span, span_n * sizeof(int32_t), cudaMemcpyHostToDevice), "cudaMemcpy");
    uploads_done();
    attn_mask_f16_cuda(dev, dspan, nt, ns);
    std::vector<uint16_t> out(n);
    cuda_check(cudaMemcpy(out.data(), dev, n * sizeof(__half), cudaMemcpyDeviceToHost), "cudaMemcpy");
    return out;
}

bool attn_cuda_supported(int64_t hd, const void * ptr) {
    bool sized = false;
#define X(n) sized = sized || hd == n;
    SQLR1_ATTN_HEAD_SIZES(X)
#undef X
    if (!sized) return false;
    cudaPointerAttributes at{};
    if (cudaPointerGetAttributes(&at, ptr) != cudaSuccess || at.type != cudaMemoryTypeDevice) {
        cudaGetLastError();
        return false;
    }
    cuda_check(cudaSetDevice(at.device), "cudaSetDevice");
    // The kernels are empty where this build has no sm_80+ code for the device: ask which binary would run.
    cudaFuncAttributes fa{};
    if (cudaFuncGetAttributes(&fa, attn_fwd<64>) != cudaSuccess) {
        cudaGetLastError();
        return false;
    }
    return fa.binaryVersion >= 80;
}

void attn_cuda_forward(const attn_dims & d, const void * q, const void * k, const void * v, float * o, float * lse) {
    check_dims(d);
    switch (d.hd) {
#define X(n) case n: forward_d<n>(d, (const bf16 *) q, (const bf16 *) k, (const bf16 *) v, o, lse); return;
        SQLR1_ATTN_HEAD_SIZES(X)
#undef X
    }
    fail("ERR_UNSUPPORTED_TYPE", "no attention kernel for head size %lld", (long long) d.hd);
}

void attn_cuda_backward(const attn_dims & d, const void * q, const void * k, const void * v, const float * o, const float * dout,
                        void * dout_bf16, const float * lse, float * dsum, float * dq, float * dk, float * dv, float * per_head) {
    check_dims(d);
    if (d.H != d.Hk && !per_head) fail("ERR_INTERNAL", "attention backward: grouped heads need the per-head scratch");
    switch (d.hd) {
#define X(n) case n: backward_d<n>(d, (const bf16 *) q, (const bf16 *) k, (const bf16 *) v, o, dout, (bf16 *) dout_bf16, lse, dsum, dq, dk, dv, per_head); return;
        SQLR1_ATTN_HEAD_SIZES(X)
#undef X
    }
    fail("ERR_UNSUPPORTED_TYPE", "no attention kernel for head size %lld", (long long) d.hd);
}

attn_host_result attn_cuda_from_host(const attn_dims & d_in, const float * q, const float * k, const float * v, const float * dout,
                                     const int32_t * span) {
    attn_dims d = d_in;
    check_dims(d);
    const size_t T = (size_t) (d.ns * d.nt), nq = (size_t) d.hd * d.H * T, nk = (size_t) d.hd * d.Hk * T, nr = (size_t) d.H * T;
    auto to_bf16 = [](const float * x, size_t n) {
        std::vector<bf16> y(n);
        for (size_t i = 0; i < n; i++) y[i] = __float2bfloat16(x[i]);
        return y;
    };
    const std::vector<bf16> hq = to_bf16(q, nq), hk = to_bf16(k, nk), hv = to_bf16(v, nk);
    // One allocation: the BF16 inputs and dO's BF16 copy, then dO in F32 and the F32 outputs.
    const size_t in_bytes = (2 * nq + 2 * nk) * sizeof(bf16), out_floats = 5 * nq + 2 * nr + 2 * nk;
    const size_t span_bytes = span ? 3 * T * sizeof(int32_t) : 0;
    char * dev = nullptr;
    cuda_check(cudaMalloc(&dev, in_bytes + 16 + out_floats * sizeof(float) + span_bytes), "cudaMalloc");
    struct guard { char * p; ~guard() { cudaFree(p); } } g{dev};
    if (span) {
        int32_t * dspan = (int32_t *) (dev + ((in_bytes + 15) / 16) * 16 + out_floats * sizeof(float));
        cuda_check(cudaMemcpy(dspan, span, span_bytes, cudaMemcpyHostToDevice), "cudaMemcpy");
        d.span = dspan;
    }
    bf16 * dq_in = (bf16 *) dev, * dk_in = dq_in + nq, * dv_in = dk_in + nk, * ddo = dv_in + nk;
    float * f = (float *) (dev + ((in_bytes + 15) / 16) * 16);
    float * o = f, * lse = o + nq, * dsum = lse + nr, * gq = dsum + nr, * scratch = gq + nq, * gk = scratch + 2 * nq, * gv = gk + nk;
    float * dout_f32 = gv + nk;
    cuda_check(cudaMemcpy(dq_in, hq.data(), nq * sizeof(bf16), cudaMemcpyHostToDevice), "cudaMemcpy");
    cuda_check(cudaMemcpy(dk_in, hk.data(), nk * sizeof(bf16), cudaMemcpyHostToDevice), "cudaMemcpy");
    cuda_check(cudaMemcpy(dv_in, hv.data(), nk * sizeof(bf16), cudaMemcpyHostToDevice), "cudaMemcpy");
    cuda_check(cudaMemcpy(dout_f32, dout, nq * sizeof(float), cudaMemcpyHostToDevice), "cudaMemcpy");
    uploads_done();
    attn_host_result res;
    attn_cuda_forward(d, dq_in, dk_in, dv_in, o, lse);
    res.o.resize(nq);
    res.lse.resize(nr);
    cuda_check(cudaMemcpy(res.o.data(), o, nq * sizeof(float), cudaMemcpyDeviceToHost), "cudaMemcpy");
    cuda_check(cudaMemcpy(res.lse.data(), lse, nr * sizeof(float), cudaMemcpyDeviceToHost), "cudaMemcpy");
    attn_cuda_backward(d, dq_in, dk_in, dv_in, o, dout_f32, ddo, lse, dsum, gq, gk, gv, scratch);
    for (auto [dst, src, cnt] : { std::tuple{ &res.dq, gq, nq }, std::tuple{ &res.dk, gk, nk }, std::tuple{ &res.dv, gv, nk } }) {
        dst->resize(cnt);
        cuda_check(cudaMemcpy(dst->data(), src, cnt * sizeof(float), cudaMemcpyDeviceToHost), "cudaMemcpy");
    }
    return res;
}

} // namespace sqlr1
