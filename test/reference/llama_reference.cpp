// llama-reference: llama.cpp's own forward pass, for test/reference/llama-forward.test.ts to compare the
// project's logits with an independent implementation of the same architecture.
//
//   llama-reference eval --model M.gguf --tokens 1,2,3 --out logits.f32 [--lora A.gguf] [--n-gen N]
//                        [--device cpu|cuda] [--threads T]
//     Evaluates the tokens in one batch with logits at every position (written to --out as float32
//     [n_tokens][n_vocab]), then decodes N greedy tokens one at a time. Prints one JSON line to stdout:
//     {"n_vocab", "n_tokens", "device", "greedy": [ids], "margin": [top1 - top2 logit at each greedy step],
//     "logprob": [log-softmax of each greedy token]}.
//     The adapter is applied with scale 1, i.e. alpha / rank as stored in its file. CPU weight repacking
//     (extra buffer types) is off: it rounds Q4_0 products differently from the plain kernels both sides use.
//
//   llama-reference synth --from BASE.gguf --out M.gguf --type q4_K [--embd 256 --ff 512 --heads 4
//                         --kv-heads 2 --layers 2 --seed 1 --untied]
//     Writes a random-weight qwen2 model of a custom shape, with BASE's metadata and tokenizer (a model from
//     the project's makeModel). Unlike makeModel's presets, its rows can be multiples of 256 (k-quants) while
//     staying small, and its norm weights are random rather than ones, so a norm applied wrongly shows.
#include "llama.h"
#include "ggml.h"
#include "ggml-backend.h"
#include "gguf.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <stdexcept>
#include <strings.h>
#include <string>
#include <vector>

namespace {

[[noreturn]] void die(const std::string & msg) {
    fprintf(stderr, "llama-reference: %s\n", msg.c_str());
    exit(1);
}

struct args {
    std::map<std::string, std::string> kv;
    std::string get(const std::string & k, const std::string & def = "") const {
        auto it = kv.find(k);
        return it == kv.end() ? def : it->second;
    }
    std::string need(const std::string & k) const {
        auto it = kv.find(k);
        if (it == kv.end() || it->second.empty()) die("missing --" + k);
        return it->second;
    }
    long num(const std::string & k, long def) const {
        const std::string v = get(k);
        if (v.empty()) return def;
        char * end = nullptr;
        const long r = strtol(v.c_str(), &end, 10);
        if (*end != '\0') die("--" + k + " expects an integer, got '" + v + "'");
        return r;
    }
};

args parse_args(int argc, char ** argv, int first) {
    args a;
    for (int i = first; i < argc; i++) {
        std::string k = argv[i];
        if (k.rfind("--", 0) != 0) die("unexpected argument '" + k + "'");
        k = k.substr(2);
        if (k == "untied") { a.kv[k] = "1"; continue; }
        if (i + 1 >= argc) die("--" + k + " needs a value");
        a.kv[k] = argv[++i];
    }
    return a;
}

void quiet_log(ggml_log_level level, const char * text, void *) {
    if (level == GGML_LOG_LEVEL_ERROR) fputs(text, stderr);
}

// ---- eval -------------------------------------------------------------------------------------------------

std::vector<llama_token> parse_tokens(const std::string & s) {
    std::vector<llama_token> out;
    size_t p = 0;
    while (p < s.size()) {
        size_t q = s.find(',', p);
        if (q == std::string::npos) q = s.size();
        out.push_back((llama_token) std::stol(s.substr(p, q - p)));
        p = q + 1;
    }
    if (out.empty()) die("--tokens is empty");
    return out;
}

void decode_or_die(llama_context * ctx, const std::vector<llama_token> & toks, int pos0, bool all_logits) {
    llama_batch b = llama_batch_init((int32_t) toks.size(), 0, 1);
    for (size_t i = 0; i < toks.size(); i++) {
        b.token[i] = toks[i];
        b.pos[i] = pos0 + (llama_pos) i;
        b.n_seq_id[i] = 1;
        b.seq_id[i][0] = 0;
        b.logits[i] = all_logits || i + 1 == toks.size();
    }
    b.n_tokens = (int32_t) toks.size();
    const int32_t rc = llama_decode(ctx, b);
    llama_batch_free(b);
    if (rc != 0) die("llama_decode failed with " + std::to_string(rc));
}

int run_eval(const args & a) {
    const std::string device = a.get("device", "cpu");
    if (device != "cpu" && device != "cuda") die("--device must be cpu or cuda, got '" + device + "'");
    const std::vector<llama_token> tokens = parse_tokens(a.need("tokens"));
    const int n_gen = (int) a.num("n-gen", 8);
    const int threads = (int) a.num("threads", 2);

    std::vector<ggml_backend_dev_t> devs;
    if (device == "cuda") {
        ggml_backend_dev_t gpu = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_GPU);
        if (!gpu) die("--device cuda: this build has no GPU device (build with --cuda on a machine with a GPU)");
        devs.push_back(gpu);
    }
    devs.push_back(nullptr);  // CPU: an empty list keeps every weight and op on the CPU

    llama_model_params mp = llama_model_default_params();
    mp.devices = devs.data();
    mp.n_gpu_layers = device == "cuda" ? -1 : 0;
    mp.use_extra_bufts = false;
    llama_model * model = llama_model_load_from_file(a.need("model").c_str(), mp);
    if (!model) die("could not load " + a.need("model"));

    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = (uint32_t) (tokens.size() + n_gen + 16);
    cp.n_batch = cp.n_ubatch = std::max<uint32_t>(cp.n_ctx, 32);
    cp.n_seq_max = 1;
    cp.n_threads = cp.n_threads_batch = threads;
    // The project's attention: flash attention over an F16 KV cache, F32 accumulation.
    cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_ENABLED;
    cp.type_k = cp.type_v = GGML_TYPE_F16;
    cp.offload_kqv = device == "cuda";
    cp.op_offload = device == "cuda";
    cp.no_perf = true;
    llama_context * ctx = llama_init_from_model(model, cp);
    if (!ctx) die("could not create a context");

    const std::string lora_path = a.get("lora");
    llama_adapter_lora * lora = nullptr;
    if (!lora_path.empty()) {
        lora = llama_adapter_lora_init(model, lora_path.c_str());
        if (!lora) die("could not load the adapter " + lora_path);
        float scale = 1.0f;
        if (llama_set_adapters_lora(ctx, &lora, 1, &scale) != 0) die("could not set the adapter");
    }

    const int32_t n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
    decode_or_die(ctx, tokens, 0, true);
    FILE * f = fopen(a.need("out").c_str(), "wb");
    if (!f) die("cannot write " + a.need("out"));
    for (size_t i = 0; i < tokens.size(); i++) {
        const float * l = llama_get_logits_ith(ctx, (int32_t) i);
        if (!l) die("no logits at position " + std::to_string(i));
        if (fwrite(l, sizeof(float), (size_t) n_vocab, f) != (size_t) n_vocab) die("short write to " + a.need("out"));
    }
    if (fclose(f) != 0) die("cannot write " + a.need("out"));

    // Greedy continuation, one token per decode (the KV cache path), with each step's top-2 margin.
    std::vector<llama_token> greedy;
    std::vector<float> margin;
    std::vector<double> logprob;
    int32_t last = (int32_t) tokens.size() - 1;
    for (int s = 0; s < n_gen; s++) {
        const float * l = llama_get_logits_ith(ctx, s == 0 ? last : -1);
        int32_t best = 0, second = -1;
        for (int32_t v = 1; v < n_vocab; v++) {
            if (l[v] > l[best]) { second = best; best = v; }
            else if (second < 0 || l[v] > l[second]) second = v;
        }
        double sum = 0.0;
        for (int32_t v = 0; v < n_vocab; v++) sum += std::exp((double) l[v] - (double) l[best]);
        greedy.push_back(best);
        margin.push_back(l[best] - l[second]);
        logprob.push_back(-std::log(sum));
        if (s + 1 < n_gen) decode_or_die(ctx, {best}, (int) (tokens.size() + s), false);
    }

    printf("{\"n_vocab\":%d,\"n_tokens\":%zu,\"device\":\"%s\",\"greedy\":[", n_vocab, tokens.size(), device.c_str());
    for (size_t i = 0; i < greedy.size(); i++) printf("%s%d", i ? "," : "", greedy[i]);
    printf("],\"margin\":[");
    for (size_t i = 0; i < margin.size(); i++) printf("%s%.9g", i ? "," : "", margin[i]);
    printf("],\"logprob\":[");
    for (size_t i = 0; i < logprob.size(); i++) printf("%s%.17g", i ? "," : "", logprob[i]);
    printf("]}\n");

    if (lora) llama_adapter_lora_free(lora);
    llama_free(ctx);
    llama_model_free(model);
    return 0;
}

// ---- synth ------------------------------------------------------------------------------------------------

ggml_type type_from_name(const std::string & name) {
    for (int t = 0; t < GGML_TYPE_COUNT; t++) {
        const char * n = ggml_type_name((ggml_type) t);
        if (n && strcasecmp(n, name.c_str()) == 0) return (ggml_type) t;
    }
    die("unknown type '" + name + "'");
}

// splitmix64: a seeded stream per tensor, uniform in [lo, hi).
struct stream {
    uint64_t s;
    float next(float lo, float hi) {
        s += 0x9e3779b97f4a7c15ULL;
        uint64_t z = s;
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
        z ^= z >> 31;
        return lo + (hi - lo) * (float) ((double) (z >> 11) / 9007199254740992.0);
    }
};

int run_synth(const args & a) {
    const ggml_type wtype = type_from_name(a.need("type"));
    const int64_t E = a.num("embd", 256), F = a.num("ff", 512), H = a.num("heads", 4), HKV = a.num("kv-heads", 2);
    const int64_t NL = a.num("layers", 2);
    const uint64_t seed = (uint64_t) a.num("seed", 1);
    const bool untied = a.get("untied") == "1";
    if (E % H != 0 || H % HKV != 0) die("heads must divide embd and kv-heads must divide heads");
    const int64_t hd = E / H, Q = E, KV = hd * HKV;
    for (int64_t d : {E, F}) {
        if (d % ggml_blck_size(wtype) != 0) die("rows of " + std::to_string(d) + " are not a multiple of the block size of " + ggml_type_name(wtype));
    }

    gguf_init_params bp = { true, nullptr };
    gguf_context * base = gguf_init_from_file(a.need("from").c_str(), bp);
    if (!base) die("could not read " + a.need("from"));
    const int64_t embd_id = gguf_find_tensor(base, "token_embd.weight");
    if (embd_id < 0) die(a.need("from") + " has no token_embd.weight");
    const int64_t tok_id = gguf_find_key(base, "tokenizer.ggml.tokens");
    if (tok_id < 0) die(a.need("from") + " has no tokenizer");
    const int64_t V = (int64_t) gguf_get_arr_n(base, tok_id);

    gguf_context * g = gguf_init_empty();
    gguf_set_kv(g, base);
    gguf_free(base);
    gguf_set_val_str(g, "general.name", "sqlr1 reference synthetic");
    gguf_set_val_u32(g, "qwen2.embedding_length", (uint32_t) E);
    gguf_set_val_u32(g, "qwen2.block_count", (uint32_t) NL);
    gguf_set_val_u32(g, "qwen2.feed_forward_length", (uint32_t) F);
    gguf_set_val_u32(g, "qwen2.attention.head_count", (uint32_t) H);
    gguf_set_val_u32(g, "qwen2.attention.head_count_kv", (uint32_t) HKV);
    gguf_remove_key(g, "sqlr1.synth.seed");

    struct spec { std::string name; int64_t ne0, ne1; ggml_type type; float lo, hi; };
    const auto w = [](int64_t fan_in, float k = 1.0f) { return k * std::sqrt(3.0f / (float) fan_in); };
    std::vector<spec> specs;
    specs.push_back({"token_embd.weight", E, V, wtype, -w(E), w(E)});
    specs.push_back({"output_norm.weight", E, 1, GGML_TYPE_F32, 0.5f, 1.5f});
    if (untied) specs.push_back({"output.weight", E, V, wtype, -w(E), w(E)});
    for (int64_t il = 0; il < NL; il++) {
        const std::string p = "blk." + std::to_string(il) + ".";
        specs.push_back({p + "attn_norm.weight", E, 1, GGML_TYPE_F32, 0.5f, 1.5f});
        specs.push_back({p + "attn_q.weight", E, Q, wtype, -w(E), w(E)});
        specs.push_back({p + "attn_q.bias", Q, 1, GGML_TYPE_F32, -0.5f, 0.5f});
        specs.push_back({p + "attn_k.weight", E, KV, wtype, -w(E), w(E)});
        specs.push_back({p + "attn_k.bias", KV, 1, GGML_TYPE_F32, -0.5f, 0.5f});
        specs.push_back({p + "attn_v.weight", E, KV, wtype, -w(E), w(E)});
        specs.push_back({p + "attn_v.bias", KV, 1, GGML_TYPE_F32, -0.5f, 0.5f});
        specs.push_back({p + "attn_output.weight", Q, E, wtype, -w(Q, 0.5f), w(Q, 0.5f)});
        specs.push_back({p + "ffn_norm.weight", E, 1, GGML_TYPE_F32, 0.5f, 1.5f});
        specs.push_back({p + "ffn_gate.weight", E, F, wtype, -w(E), w(E)});
        specs.push_back({p + "ffn_up.weight", E, F, wtype, -w(E), w(E)});
        specs.push_back({p + "ffn_down.weight", F, E, wtype, -w(F, 0.5f), w(F, 0.5f)});
    }

    size_t mem = ggml_tensor_overhead() * (specs.size() + 1);
    for (const auto & s : specs) mem += ggml_row_size(s.type, s.ne0) * s.ne1 + 64;
    ggml_init_params ip = { mem, nullptr, false };
    ggml_context * ctx = ggml_init(ip);
    if (!ctx) die("out of memory");
    std::vector<float> src;
    for (size_t i = 0; i < specs.size(); i++) {
        const spec & s = specs[i];
        ggml_tensor * t = s.ne1 == 1 ? ggml_new_tensor_1d(ctx, s.type, s.ne0) : ggml_new_tensor_2d(ctx, s.type, s.ne0, s.ne1);
        ggml_set_name(t, s.name.c_str());
        src.resize((size_t) (s.ne0 * s.ne1));
        stream r{seed * 0x100000001b3ULL + i};
        for (float & x : src) x = r.next(s.lo, s.hi);
        if (s.type == GGML_TYPE_F32) memcpy(t->data, src.data(), src.size() * sizeof(float));
        else if (s.type == GGML_TYPE_F16) ggml_fp32_to_fp16_row(src.data(), (ggml_fp16_t *) t->data, (int64_t) src.size());
        else if (s.type == GGML_TYPE_BF16) ggml_fp32_to_bf16_row(src.data(), (ggml_bf16_t *) t->data, (int64_t) src.size());
        else ggml_quantize_chunk(s.type, src.data(), t->data, 0, s.ne1, s.ne0, nullptr);
        gguf_add_tensor(g, t);
    }
    const std::string out = a.need("out"), tmp = out + ".tmp";
    if (!gguf_write_to_file(g, tmp.c_str(), false) || rename(tmp.c_str(), out.c_str()) != 0) {
        remove(tmp.c_str());
        die("could not write " + out);
    }
    gguf_free(g);
    ggml_free(ctx);
    return 0;
}

} // namespace

int main(int argc, char ** argv) {
    if (argc < 2 || (strcmp(argv[1], "eval") != 0 && strcmp(argv[1], "synth") != 0)) {
        fprintf(stderr, "usage: llama-reference eval --model M.gguf --tokens 1,2,3 --out logits.f32 [--lora A.gguf] "
                        "[--n-gen N] [--device cpu|cuda] [--threads T]\n"
                        "       llama-reference synth --from BASE.gguf --out M.gguf --type TYPE [--embd E --ff F "
                        "--heads H --kv-heads H --layers L --seed S --untied]\n");
        return 2;
    }
    const args a = parse_args(argc, argv, 2);
    llama_log_set(quiet_log, nullptr);
    ggml_log_set(quiet_log, nullptr);
    llama_backend_init();
    const int rc = strcmp(argv[1], "eval") == 0 ? run_eval(a) : run_synth(a);
    llama_backend_free();
    return rc;
}
