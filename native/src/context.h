// An evaluation context: a KV cache of n_seq sequences plus the scheduler and graph memory that run the model
// over it. Prefill, batched decode with sampling, and prefix sharing (copying one sequence's cells to others).
#pragma once

#include "graph.h"
#include "sampler.h"


namespace sqlr1 {

struct eval_request {
    std::vector<int32_t> streams;     // the sequences in this batch (distinct)
    std::vector<int32_t> tokens;      // nt tokens per listed stream, stream-major
    int64_t nt = 1;
    bool all_logits = false;          // logits for every token, else for the last token of each stream
    bool want_logits = false;         // copy logits to the host
    bool sample = false;
    sampling_params sp;
    std::vector<uint64_t> seeds;      // one per listed stream
    // Teacher forcing: nt target ids per listed stream (stream-major, -1 = none); yields log-probs per token.
    std::vector<int32_t> targets;
    float lp_temperature = 1.0f;
};

struct eval_result {
    std::vector<float> logits;        // [n_out, n_vocab]
    std::vector<int32_t> tokens;      // one per listed stream (when sampling)
    std::vector<float> logprobs;
    std::vector<float> target_logprobs;  // [streams][nt] (teacher forcing; NaN where the target was -1)
};

// Several sampling steps in one native call: each step feeds every live sequence its last token and draws the
// next; a sequence stops at an end-of-generation id or when its budget runs out.
struct decode_request {
    std::vector<int32_t> streams;
    std::vector<int32_t> tokens;      // the next token to feed, per stream
    std::vector<uint64_t> seeds;
    std::vector<int32_t> budget;      // tokens each stream may still draw
    std::vector<int32_t> eog;         // end-of-generation ids
    sampling_params sp;
    int32_t n_steps = 1;
};

struct decode_result {
    int32_t steps = 0;
    std::vector<int32_t> tokens;      // [steps][streams]; -1 where a stream had stopped
    std::vector<float> logprobs;
};

struct context {
    std::shared_ptr<model> m;
    kv_cache kv;
    ggml_backend_sched_t sched = nullptr;
    std::vector<uint8_t> meta;        // graph metadata; reused so tensor addresses repeat between steps
    int64_t n_batch = 512;            // most tokens per forward pass
    std::shared_ptr<lora_adapter> lora;  // applied to every pass while set and enabled
    // The adapter packed per group of targets (lora_pack.h), refreshed at the start of every eval and decode call;
    // false: each target's own product pair (for comparisons).
    bool pack_adapter = true;
    std::unique_ptr<lora_pack> pack;
    // The last graph and its allocation, reused while the batch shape is unchanged (every decode step between
    // two 256-cell growths of the attended KV range): only the inputs are set again.
    ggml_context * gctx = nullptr;
    ggml_cgraph * gf = nullptr;
    forward_result fr;
    forward_params gp;
    ~context();

    eval_result eval(const eval_request & req);
    decode_result decode(const decode_request & req);
    void seq_copy(int32_t src, const std::vector<int32_t> & dsts);
    void seq_clear(int32_t s) { kv.len.at(s) = 0; }
    void set_lora(std::shared_ptr<lora_adapter> a);
    void validate(const eval_request & req) const;

private:
    void adapter_prepare();
    void eval_chunks(const eval_request & req, eval_result & res);
    void graph_prepare(const forward_params & p);
    void graph_drop();
    void run_chunk(const eval_request & req, int64_t t0, int64_t nt, bool last, eval_result & res);
};

std::unique_ptr<context> context_init(std::shared_ptr<model> m, int64_t n_seq, int64_t n_ctx, int64_t n_batch, bool pack_adapter = true);

size_t graph_max_nodes(const model & m);

} // namespace sqlr1
