// The SwiGLU block of a layer's backward in one pass over the [F x T] activations, with the rank-r LoRA terms of
// the gate, up and down projections added on the fly (in the written-out graph they cost three more passes):
//   g = G + Bg^T zg,  u = U + Bu^T zu,  dh = DH + Ad dzd        (each LoRA term only where the layer has one)
//   h = silu(g) u,    du = dh silu(g),  dg = dh u silu'(g)
// where G = W_gate x, U = W_up x and DH = W_down^T dy come from the graph. In place: G becomes h, U becomes dg and
// DH becomes du. Layouts are ggml's: [F, T] with F fastest; z* [r, T]; B* [r, F]; Ad [F, r]. All F32.
// Optionally the kernel also writes dg and du rounded to BF16, the form the next matrix products read.
#pragma once

#include <cstdint>
#include <vector>

namespace sqlr1 {

// Forward only (dh null): h = silu(g) u into G, nothing else written.
//
// G and U (and zg, zu) may be rows of wider tensors: ld is the token stride of G and U (0: F), ldz that of zg
// and zu (0: r), so that one product's output [W_gate; W_up; A_gate; A_up] x feeds the kernel as it is.
struct swiglu_args {
    int64_t F = 0, T = 0, r = 0;
    int64_t ld = 0, ldz = 0;
    float * g = nullptr, * u = nullptr, * dh = nullptr;
    const float * bg = nullptr, * zg = nullptr;   // null: no LoRA on the gate
    const float * bu = nullptr, * zu = nullptr;   // null: no LoRA on up
    const float * ad = nullptr, * dzd = nullptr;  // null: no LoRA on down
    uint16_t * dg_bf16 = nullptr, * du_bf16 = nullptr;  // optional BF16 copies of dg and du [F, T]
    // Optional, backward with r <= 16 (swiglu_reduces): the adapters' gradients dBg += zg dg^T, dBu += zu du^T
    // ([r, F]) and dAd += h dzd^T ([F, r]) are added in by the kernel, the per-block sums going through `partial`
    // (swiglu_partial_floats floats) and a second pass in a fixed order, so results repeat exactly. Then dg and du
    // are not written in F32 (only the BF16 copies, where asked).
    float * dbg = nullptr, * dbu = nullptr, * dad = nullptr;
    float * partial = nullptr;
};

inline bool swiglu_reduces(int64_t r) { return r >= 1 && r <= 16; }
int64_t swiglu_partial_floats(int64_t F, int64_t T, int64_t r);

#ifdef SQLR1_WITH_CUDA
void swiglu_cuda(const swiglu_args & a);  // device pointers; returns when done

// The same on host arrays (tests): g, u, dh are overwritten with h, dg, du.
void swiglu_cuda_from_host(swiglu_args a);
#endif

} // namespace sqlr1
