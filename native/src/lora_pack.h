// The adapter as the sampling graph applies it: the targets of a layer that share an input (q/k/v, o, gate/up,
// down) run as one LoRA product pair instead of one pair per target. Per group of n targets:
//   A_cat = [A_1 | ... | A_n]                [in, n r]
//   B_blk = block-diagonal, s B_i in block i  [n r, out_1 + ... + out_n]
//   bias  = [b_1; ...; b_n] (zeros where a target has none; absent when none has one)
// so that B_blk (A_cat x) + bias stacks every target's s B_i A_i x + b_i, and target i adds its rows to W_i x.
// Per layer with all seven targets, the adapter's 28 ops (two products, a scale and an add per target) and the
// three bias adds become 16. At decode every op is a kernel launch over a handful of tokens, so launches, not
// arithmetic, are the adapter's cost there.
//
// The pack is a copy: lora_pack_refresh copies the adapter in (one small graph: a kernel per tensor, ~860 for a
// 36-layer model with all seven targets) and must run before a pass whenever the adapter changed. The evaluation
// context refreshes at the start of an eval or decode call only when the adapter's version moved since the last
// copy (optimizer steps and writes happen between calls), so a rollout's decode steps copy nothing.
#pragma once

#include "lora.h"

#include "ggml-alloc.h"

namespace sqlr1 {

struct lora_group {
    ggml_tensor * a = nullptr;      // A_cat F32 [in, n r]; null when the layer adapts none of the group's targets
    ggml_tensor * b = nullptr;      // B_blk F32 [n r, rows]
    ggml_tensor * bias = nullptr;   // F32 [rows], or null
    int n = 0;                      // adapted targets
    int target[3] = {-1, -1, -1};   // those targets, in stacking order
    int64_t row0[3] = {}, rows[3] = {};  // each target's rows in the product
    // The index (into target, row0, rows) of target t in this group's pack, or -1 when the pack does not hold it.
    int index_of(int t) const {
        for (int i = 0; i < n; i++) if (target[i] == t) return i;
        return -1;
    }
};

struct lora_pack {
    std::shared_ptr<lora_adapter> lora;    // the adapter this pack copies
    uint64_t version = UINT64_MAX;         // the adapter's version last copied in (none yet)
    std::vector<std::array<lora_group, LORA_N_GROUPS>> layers;
    ggml_context * ctx = nullptr;          // the packed tensors
    ggml_backend_buffer_t buf = nullptr;
    ggml_context * gctx = nullptr;         // the refresh graph and its memory (scaled copies of B)
    ggml_cgraph * gf = nullptr;
    ggml_gallocr_t galloc = nullptr;
    ~lora_pack();
};

// Allocates the pack for `a` on the adapter's device (zeros off the diagonal blocks) and builds its refresh graph.
std::unique_ptr<lora_pack> lora_pack_init(const std::shared_ptr<lora_adapter> & adapter);

// Copies the adapter's current A and s B (and the model's biases) into the pack.
void lora_pack_refresh(lora_pack & p);

} // namespace sqlr1
