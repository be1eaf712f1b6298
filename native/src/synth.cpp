#include "synth.h"

#include "common.h"
#include "model.h"

#include "ggml.h"
#include "gguf.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <unistd.h>
#include <memory>
#include <thread>
#include <vector>

namespace sqlr1 {

synth_shape synth_shape_get(const std::string & name) {
    // name, hidden, layers, heads, kv heads, ffn, vocab, context, rope base, tied
    static const synth_shape shapes[] = {
        {"tiny", 64, 2, 4, 2, 128, 151936, 4096, 1e6f, true},
        // The demo's model: the smallest shape that learns the toy task in minutes on a CPU (a hidden size of
        // 64 leaves the frozen random output head over 152k tokens too little room).
        {"demo", 256, 4, 4, 2, 512, 151936, 4096, 1e6f, true},
        {"qwen2.5-0.5b", 896, 24, 14, 2, 4864, 151936, 32768, 1e6f, true},
        {"qwen2.5-1.5b", 1536, 28, 12, 2, 8960, 151936, 32768, 1e6f, true},
        {"qwen2.5-3b", 2048, 36, 16, 2, 11008, 151936, 32768, 1e6f, true},
        {"qwen2.5-7b", 3584, 28, 28, 4, 18944, 152064, 32768, 1e6f, false},
    };
    for (const auto & s : shapes) if (s.name == name) return s;
    fail("ERR_INVALID_ARG", "unknown shape '%s'; expected tiny, demo, qwen2.5-0.5b, qwen2.5-1.5b, qwen2.5-3b or qwen2.5-7b", name.c_str());
}

namespace {

struct tensor_spec {
    std::string name;
    int64_t ne0, ne1;
    ggml_type type;
    float scale;     // uniform in [-scale, scale]; 0 = all ones (norm weights)
};

// Fills `dst` with uniform values in [-a, a] from a per-(tensor, row block) stream, so the result does not
// depend on the thread count. Symmetric values keep quantized blocks centred on zero.
void fill_uniform(float * dst, int64_t n, float a, uint64_t seed, int n_threads) {
    const int64_t block = 1 << 16;
    const int64_t n_blocks = (n + block - 1) / block;
    auto work = [&](int t) {
        for (int64_t b = t; b < n_blocks; b += n_threads) {
            uint64_t s = seed ^ (0x9e3779b97f4a7c15ULL * (uint64_t) (b + 1));
            const int64_t end = std::min(n, (b + 1) * block);
            for (int64_t i = b * block; i < end; i++) {
                s += 0x9e3779b97f4a7c15ULL;
                uint64_t z = s;
                z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
                z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
                z ^= z >> 31;
                dst[i] = a * (2.0f * ((float) (z >> 40) * (1.0f / 16777216.0f)) - 1.0f);
            }
        }
    };
    std::vector<std::thread> th;
    for (int t = 0; t < n_threads; t++) th.emplace_back(work, t);
    for (auto & x : th) x.join();
}

void convert_rows(const float * src, void * dst, ggml_type type, int64_t ne0, int64_t ne1, int n_threads) {
    if (type == GGML_TYPE_F32) { memcpy(dst, src, sizeof(float) * ne0 * ne1); return; }
    const size_t row = ggml_row_size(type, ne0);
    auto work = [&](int t) {
        const int64_t per = (ne1 + n_threads - 1) / n_threads;
        const int64_t r0 = t * per, r1 = std::min(ne1, r0 + per);
        if (r0 >= r1) return;
        if (type == GGML_TYPE_F16) ggml_fp32_to_fp16_row(src + r0 * ne0, (ggml_fp16_t *) ((char *) dst + r0 * row), (r1 - r0) * ne0);
        else if (type == GGML_TYPE_BF16) ggml_fp32_to_bf16_row(src + r0 * ne0, (ggml_bf16_t *) ((char *) dst + r0 * row), (r1 - r0) * ne0);
        else ggml_quantize_chunk(type, src, dst, r0 * ne0, r1 - r0, ne0, nullptr);
    };
    std::vector<std::thread> th;
    for (int t = 0; t < n_threads; t++) th.emplace_back(work, t);
    for (auto & x : th) x.join();
}

struct gguf_ptr { gguf_context * g; ~gguf_ptr() { if (g) gguf_free(g); } };
struct ctx_ptr { ggml_context * c; ~ctx_ptr() { if (c) ggml_free(c); } };

} // namespace

uint64_t synth_model_write(const synth_options & o) {
    const synth_shape sh = synth_shape_get(o.shape);
    const ggml_type wtype = weight_type_from_name(o.type);
    if (o.out.empty()) fail("ERR_INVALID_ARG", "an output path is required");
    const int64_t blck = ggml_blck_size(wtype);
    for (int64_t d : {sh.n_embd, sh.n_ff}) {
        if (d % blck != 0) fail("ERR_INVALID_ARG", "type %s needs row sizes divisible by %lld, but shape '%s' has a row of %lld",
                                ggml_type_name(wtype), (long long) blck, sh.name.c_str(), (long long) d);
    }
    const int n_threads = o.n_threads > 0 ? o.n_threads : (int) std::max(1u, std::thread::hardware_concurrency());

    gguf_ptr out{gguf_init_empty()};
    gguf_context * g = out.g;
    int64_t n_vocab = sh.n_vocab;
    if (!o.vocab.empty()) {
        gguf_init_params vp = { true, nullptr };
        gguf_ptr voc{gguf_init_from_file(o.vocab.c_str(), vp)};
        if (!voc.g) fail("ERR_GGUF_INVALID", "could not read the vocabulary GGUF %s: %s", o.vocab.c_str(), log_last_error().c_str());
        const int64_t tok_id = gguf_find_key(voc.g, "tokenizer.ggml.tokens");
        if (tok_id < 0) fail("ERR_GGUF_INVALID", "%s has no tokenizer.ggml.tokens", o.vocab.c_str());
        const int64_t n_tok = (int64_t) gguf_get_arr_n(voc.g, tok_id);
        if (n_tok > n_vocab) n_vocab = n_tok;
        // Copy the tokenizer metadata; below, the token list is padded with unused tokens up to the embedding
        // size, as real models do.
        gguf_set_kv(g, voc.g);
        for (int64_t i = gguf_get_n_kv(g) - 1; i >= 0; i--) {
            const std::string key = gguf_get_key(g, i);
            if (key.rfind("tokenizer.", 0) != 0) gguf_remove_key(g, key.c_str());
        }
        if (n_tok < n_vocab) {
            std::vector<std::string> toks;
            std::vector<const char *> ptrs;
            std::vector<int32_t> types;
            const int64_t type_id = gguf_find_key(voc.g, "tokenizer.ggml.token_type");
            for (int64_t i = 0; i < n_vocab; i++) {
                toks.push_back(i < n_tok ? gguf_get_arr_str(voc.g, tok_id, i) : "[PAD" + std::to_string(i) + "]");
                types.push_back(i < n_tok && type_id >= 0 ? ((const int32_t *) gguf_get_arr_data(voc.g, type_id))[i] : 5 /* unused */);
            }
            for (auto & s : toks) ptrs.push_back(s.c_str());
            gguf_set_arr_str(g, "tokenizer.ggml.tokens", ptrs.data(), ptrs.size());
            gguf_set_arr_data(g, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, types.data(), types.size());
        }
    }
    gguf_set_val_str(g, "general.architecture", "qwen2");
    gguf_set_val_str(g, "general.type", "model");
    gguf_set_val_str(g, "general.name", ("sqlr1 synthetic " + sh.name).c_str());
    gguf_set_val_u32(g, "general.alignment", 32);
    gguf_set_val_u32(g, "qwen2.context_length", (uint32_t) sh.n_ctx);
    gguf_set_val_u32(g, "qwen2.embedding_length", (uint32_t) sh.n_embd);
    gguf_set_val_u32(g, "qwen2.block_count", (uint32_t) sh.n_layer);
    gguf_set_val_u32(g, "qwen2.feed_forward_length", (uint32_t) sh.n_ff);
    gguf_set_val_u32(g, "qwen2.attention.head_count", (uint32_t) sh.n_head);
    gguf_set_val_u32(g, "qwen2.attention.head_count_kv", (uint32_t) sh.n_head_kv);
    gguf_set_val_f32(g, "qwen2.rope.freq_base", sh.rope_base);
    gguf_set_val_f32(g, "qwen2.attention.layer_norm_rms_epsilon", 1e-6f);
    gguf_set_val_u64(g, "sqlr1.synth.seed", o.seed);

    // Scales: uniform(-a, a) has std a/sqrt(3); a = sqrt(3/fan_in) gives unit-variance outputs from
    // RMS-normalized inputs, so activations stay finite through every layer and logits have std ~1.
    const int64_t E = sh.n_embd, hd = E / sh.n_head, Q = hd * sh.n_head, KV = hd * sh.n_head_kv, F = sh.n_ff;
    auto a_for = [](int64_t fan_in) { return std::sqrt(3.0f / (float) fan_in); };
    std::vector<tensor_spec> specs;
    specs.push_back({"token_embd.weight", E, n_vocab, wtype, a_for(E)});
    specs.push_back({"output_norm.weight", E, 1, GGML_TYPE_F32, 0.0f});
    if (!sh.tied) specs.push_back({"output.weight", E, n_vocab, wtype, a_for(E)});
    for (int64_t il = 0; il < sh.n_layer; il++) {
        const std::string p = "blk." + std::to_string(il) + ".";
        specs.push_back({p + "attn_norm.weight", E, 1, GGML_TYPE_F32, 0.0f});
        specs.push_back({p + "attn_q.weight", E, Q, wtype, a_for(E)});
        specs.push_back({p + "attn_q.bias", Q, 1, GGML_TYPE_F32, 0.1f});
        specs.push_back({p + "attn_k.weight", E, KV, wtype, a_for(E)});
        specs.push_back({p + "attn_k.bias", KV, 1, GGML_TYPE_F32, 0.1f});
        specs.push_back({p + "attn_v.weight", E, KV, wtype, a_for(E)});
        specs.push_back({p + "attn_v.bias", KV, 1, GGML_TYPE_F32, 0.1f});
        specs.push_back({p + "attn_output.weight", Q, E, wtype, a_for(Q) * 0.5f});
        specs.push_back({p + "ffn_norm.weight", E, 1, GGML_TYPE_F32, 0.0f});
        specs.push_back({p + "ffn_gate.weight", E, F, wtype, a_for(E)});
        specs.push_back({p + "ffn_up.weight", E, F, wtype, a_for(E)});
        specs.push_back({p + "ffn_down.weight", F, E, wtype, a_for(F) * 0.5f});
    }

    ggml_init_params ip = { ggml_tensor_overhead() * (specs.size() + 1), nullptr, true };
    ctx_ptr meta{ggml_init(ip)};
    for (const auto & s : specs) {
        ggml_tensor * t = s.ne1 == 1 ? ggml_new_tensor_1d(meta.c, s.type, s.ne0) : ggml_new_tensor_2d(meta.c, s.type, s.ne0, s.ne1);
        ggml_set_name(t, s.name.c_str());
        gguf_add_tensor(g, t);
    }

    const std::string tmp = o.out + ".tmp" + std::to_string((unsigned long) getpid());
    FILE * f = fopen(tmp.c_str(), "wb");
    if (!f) fail("ERR_INVALID_ARG", "cannot write %s", tmp.c_str());
    bool ok = true;
    uint64_t written = 0;
    try {
        std::vector<uint8_t> meta_buf(gguf_get_meta_size(g));
        gguf_get_meta_data(g, meta_buf.data());
        ok = fwrite(meta_buf.data(), 1, meta_buf.size(), f) == meta_buf.size();
        written += meta_buf.size();
        uint64_t total = 0, done = 0;
        for (const auto & s : specs) total += (uint64_t) s.ne0 * s.ne1;
        std::vector<float> src;
        std::vector<uint8_t> dst;
        const size_t align = gguf_get_alignment(g);
        for (size_t i = 0; i < specs.size() && ok; i++) {
            const auto & s = specs[i];
            const int64_t n = s.ne0 * s.ne1;
            src.resize(n);
            if (s.scale == 0.0f) std::fill(src.begin(), src.end(), 1.0f);
            else fill_uniform(src.data(), n, s.scale, o.seed * 0x100000001b3ULL + i, n_threads);
            const size_t nbytes = ggml_row_size(s.type, s.ne0) * s.ne1;
            dst.resize(nbytes);
            convert_rows(src.data(), dst.data(), s.type, s.ne0, s.ne1, n_threads);
            ok = fwrite(dst.data(), 1, nbytes, f) == nbytes;
            const size_t pad = (align - nbytes % align) % align;
            static const uint8_t zeros[64] = {0};
            if (ok && pad) ok = fwrite(zeros, 1, pad, f) == pad;
            written += nbytes + pad;
            done += n;
            if (o.progress) o.progress((double) done / (double) total);
        }
    } catch (...) {
        fclose(f);
        remove(tmp.c_str());
        throw;
    }
    ok = (fclose(f) == 0) && ok;
    if (!ok || rename(tmp.c_str(), o.out.c_str()) != 0) {
        remove(tmp.c_str());
        fail("ERR_INVALID_ARG", "failed writing %s (disk full?)", o.out.c_str());
    }
    return written;
}

} // namespace sqlr1
