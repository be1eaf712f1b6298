#include "model.h"

#include "ggml-alloc.h"
#include "ggml-cpu.h"
#include "gguf.h"
#ifdef SQLR1_WITH_CUDA
#include "ggml-cuda.h"
#endif

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sys/stat.h>
#include <thread>
#include <unistd.h>
#include <unordered_map>

namespace sqlr1 {

backend_set::~backend_set() {
    if (primary && primary != cpu) ggml_backend_free(primary);
    if (cpu) ggml_backend_free(cpu);
}

bool cuda_available() { return cuda_device_count() > 0; }

int cuda_device_count() {
#ifdef SQLR1_WITH_CUDA
    return ggml_backend_cuda_get_device_count();
#else
    return 0;
#endif
}

std::string cuda_device_name(int i) {
#ifdef SQLR1_WITH_CUDA
    char buf[256] = {0};
    ggml_backend_cuda_get_device_description(i, buf, sizeof(buf));
    return buf;
#else
    (void) i;
    return "";
#endif
}

#ifndef SQLR1_WITH_CUDA
std::string cuda_compute_capability(int) { return ""; }
#endif

const char * cuda_architectures() {
#ifdef SQLR1_CUDA_ARCHITECTURES
    return SQLR1_CUDA_ARCHITECTURES;
#else
    return "";
#endif
}

std::shared_ptr<backend_set> backend_set_init(const std::string & device, int n_threads) {
    auto bs = std::make_shared<backend_set>();
    bs->exec = executor_for(device);
    bs->n_threads = n_threads > 0 ? n_threads : std::max(1u, std::thread::hardware_concurrency());
    bs->cpu = ggml_backend_cpu_init();
    if (!bs->cpu) fail("ERR_INTERNAL", "could not initialize the CPU backend");
    ggml_backend_cpu_set_n_threads(bs->cpu, bs->n_threads);
    if (device == "cpu") {
        bs->device = "cpu";
        bs->primary = bs->cpu;
    } else if (device == "cuda") {
#ifdef SQLR1_WITH_CUDA
        if (cuda_device_count() == 0) fail("ERR_NO_CUDA", "device 'cuda' requested but no CUDA device is visible");
        // ggml's CUDA graphs stay on (a decode step replays as one launch), with programmatic dependent launch
        // off: with both on, one-token decode went wrong from the first captured graph on (H100: logits at NMSE
        // 0.02 to 1.1 from the full forward at head sizes 64 and 128); with PDL off the replayed steps give the
        // values of uncaptured ones (README, "Checked against llama.cpp"; scripts/cuda-graphs-probe.mjs). ggml
        // reads both switches once; overwrite 0 keeps a user's own GGML_CUDA_PDL or GGML_CUDA_DISABLE_GRAPHS.
        setenv("GGML_CUDA_PDL", "0", 0);
        bs->primary = ggml_backend_cuda_init(0);
        if (!bs->primary) fail("ERR_NO_CUDA", "could not initialize CUDA device 0: %s", log_last_error().c_str());
        bs->device = "cuda";
#else
        fail("ERR_NO_CUDA", "device 'cuda' requested but this binary was built without CUDA (build with `npm run build:cuda`)");
#endif
    } else {
        fail("ERR_INVALID_ARG", "device must be 'cpu' or 'cuda', got '%s'", device.c_str());
    }
    return bs;
}

void gguf_write_atomic(gguf_context * g, const std::string & path) {
    const std::string tmp = path + ".tmp" + std::to_string((long) getpid());
    if (!gguf_write_to_file(g, tmp.c_str(), false)) {
        remove(tmp.c_str());
        fail("ERR_INVALID_ARG", "could not write %s", tmp.c_str());
    }
    if (rename(tmp.c_str(), path.c_str()) != 0) {
        remove(tmp.c_str());
        fail("ERR_INVALID_ARG", "could not rename %s to %s", tmp.c_str(), path.c_str());
    }
}

bool gguf_tensor_in_file(const gguf_context * g, int64_t i, uint64_t file_size, uint64_t * offset, uint64_t * nbytes) {
    const uint64_t data_off = gguf_get_data_offset(g);
    const uint64_t rel = gguf_get_tensor_offset(g, i);
    const uint64_t size = gguf_get_tensor_size(g, i);
    *offset = data_off + rel;
    *nbytes = size;
    return data_off <= file_size && rel <= file_size - data_off && size <= file_size - data_off - rel;
}

bool weight_type_supported(ggml_type t) {
    switch (t) {
        case GGML_TYPE_F32: case GGML_TYPE_F16: case GGML_TYPE_BF16: case GGML_TYPE_Q8_0:
        case GGML_TYPE_Q4_0: case GGML_TYPE_Q4_K: case GGML_TYPE_Q6_K:
            return true;
        default:
            return false;
    }
}

ggml_type weight_type_from_name(const std::string & name) {
    static const std::pair<const char *, ggml_type> types[] = {
        {"f32", GGML_TYPE_F32}, {"f16", GGML_TYPE_F16}, {"bf16", GGML_TYPE_BF16}, {"q8_0", GGML_TYPE_Q8_0},
        {"q4_0", GGML_TYPE_Q4_0}, {"q4_k", GGML_TYPE_Q4_K}, {"q6_k", GGML_TYPE_Q6_K},
    };
    std::string lower = name;
    for (auto & c : lower) c = (char) tolower((unsigned char) c);
    for (const auto & p : types) if (lower == p.first) return p.second;
    fail("ERR_UNSUPPORTED_TYPE", "unknown weight type '%s'; expected f32, f16, bf16, q8_0, q4_0, q4_K or q6_K", name.c_str());
}

model::~model() {
    if (buf_w) ggml_backend_buffer_free(buf_w);
    if (ctx_w) ggml_free(ctx_w);
}

namespace {

struct gguf_guard {
    gguf_context * g = nullptr;
    ~gguf_guard() { if (g) gguf_free(g); }
};

struct file_guard {
    FILE * f = nullptr;
    ~file_guard() { if (f) fclose(f); }
};

// Reads an integer hyperparameter of any GGUF integer type; -1 when absent.
int64_t get_int(gguf_context * g, const std::string & key, bool required) {
    const int64_t id = gguf_find_key(g, key.c_str());
    if (id < 0) {
        if (required) fail("ERR_GGUF_INVALID", "missing metadata key '%s'", key.c_str());
        return -1;
    }
    switch (gguf_get_kv_type(g, id)) {
        case GGUF_TYPE_UINT8:  return gguf_get_val_u8(g, id);
        case GGUF_TYPE_INT8:   return gguf_get_val_i8(g, id);
        case GGUF_TYPE_UINT16: return gguf_get_val_u16(g, id);
        case GGUF_TYPE_INT16:  return gguf_get_val_i16(g, id);
        case GGUF_TYPE_UINT32: return gguf_get_val_u32(g, id);
        case GGUF_TYPE_INT32:  return gguf_get_val_i32(g, id);
        case GGUF_TYPE_UINT64: return (int64_t) gguf_get_val_u64(g, id);
        case GGUF_TYPE_INT64:  return gguf_get_val_i64(g, id);
        default: fail("ERR_GGUF_INVALID", "metadata key '%s' should be an integer, got %s", key.c_str(),
                      gguf_type_name(gguf_get_kv_type(g, id)));
    }
}

float get_float(gguf_context * g, const std::string & key, float def) {
    const int64_t id = gguf_find_key(g, key.c_str());
    if (id < 0) return def;
    switch (gguf_get_kv_type(g, id)) {
        case GGUF_TYPE_FLOAT32: return gguf_get_val_f32(g, id);
        case GGUF_TYPE_FLOAT64: return (float) gguf_get_val_f64(g, id);
        default: fail("ERR_GGUF_INVALID", "metadata key '%s' should be a float, got %s", key.c_str(),
                      gguf_type_name(gguf_get_kv_type(g, id)));
    }
}

void check_range(const char * what, int64_t v, int64_t lo, int64_t hi) {
    if (v < lo || v > hi) fail("ERR_GGUF_INVALID", "%s must be in [%lld, %lld], got %lld", what, (long long) lo, (long long) hi, (long long) v);
}

std::string shape_str(const ggml_tensor * t) {
    std::string s = "[";
    for (int i = 0; i < ggml_n_dims(t); i++) s += (i ? ", " : "") + std::to_string(t->ne[i]);
    return s + "]";
}

ggml_tensor * get_tensor(ggml_context * ctx, const std::string & name, std::initializer_list<int64_t> shape, bool required) {
    ggml_tensor * t = ggml_get_tensor(ctx, name.c_str());
    if (!t) {
        if (required) fail("ERR_GGUF_INVALID", "missing tensor '%s'", name.c_str());
        return nullptr;
    }
    int i = 0;
    bool ok = true;
    for (int64_t d : shape) ok = ok && t->ne[i++] == d;
    for (; i < GGML_MAX_DIMS; i++) ok = ok && t->ne[i] == 1;
    if (!ok) {
        std::string want = "[";
        int j = 0;
        for (int64_t d : shape) want += (j++ ? ", " : "") + std::to_string(d);
        fail("ERR_GGUF_INVALID", "tensor '%s' should have shape %s], got %s", name.c_str(), want.c_str(), shape_str(t).c_str());
    }
    return t;
}

// Copies the file's tensor metadata into the model's own context and re-points every weight at its copy. A
// group of quantized weights that share an input (q/k/v with their biases; gate/up) and a type becomes one tensor
// whose rows are the members' rows in order, each member a view of its rows: a quantized row is whole blocks, so
// row ranges of one tensor are valid weights of their own. The loader fills the views by name as it would the
// tensors. Float weights stay apart: ggml's CUDA backend picks a float product's kernel, and so its rounding, by
// the product's shape, and fused F32 products moved a model's logits off llama.cpp's separate ones (NMSE 3e-7);
// a quantized product computes each row the same way at any row count (fused, they stayed bit-identical).
void lay_out_weights(model & m, ggml_context * ctx_meta, gguf_context * g) {
    const int64_t n_tensors = gguf_get_n_tensors(g);
    ggml_init_params ip = { ggml_tensor_overhead() * (size_t) (n_tensors + 3 * m.hp.n_layer + 8), nullptr, true };
    m.ctx_w = ggml_init(ip);
    if (!m.ctx_w) fail("ERR_OUT_OF_MEMORY", "could not create the weights' context");
    std::unordered_map<const ggml_tensor *, ggml_tensor *> copy;  // file tensor -> the model's
    // One tensor for `parts` (all present, same type, same row length, 1-d or 2-d); null when they do not fuse.
    auto fuse = [&](const std::string & name, std::initializer_list<ggml_tensor *> parts) -> ggml_tensor * {
        const ggml_tensor * first = *parts.begin();
        const bool one_d = first && ggml_n_dims(first) == 1;
        int64_t rows = 0;
        for (const ggml_tensor * t : parts) {
            if (!t || t->type != first->type || ggml_n_dims(t) != ggml_n_dims(first) || ggml_n_dims(t) > 2) return nullptr;
            if (!one_d && t->ne[0] != first->ne[0]) return nullptr;
            rows += one_d ? t->ne[0] : t->ne[1];
        }
        ggml_tensor * all = one_d ? ggml_new_tensor_1d(m.ctx_w, first->type, rows)
                                  : ggml_new_tensor_2d(m.ctx_w, first->type, first->ne[0], rows);
        ggml_set_name(all, name.c_str());
        size_t offset = 0;
        for (ggml_tensor * t : parts) {
            ggml_tensor * v = one_d ? ggml_view_1d(m.ctx_w, all, t->ne[0], offset)
                                    : ggml_view_2d(m.ctx_w, all, t->ne[0], t->ne[1], all->nb[1], offset);
            ggml_set_name(v, ggml_get_name(t));
            offset += ggml_nbytes(t);
            copy[t] = v;
        }
        return all;
    };
    auto quantized = [](const ggml_tensor * t) { return t && ggml_is_quantized(t->type); };
    for (int64_t il = 0; il < m.hp.n_layer; il++) {
        layer_weights & L = m.layers[il];
        const std::string p = "blk." + std::to_string(il) + ".";
        L.wqkv = quantized(L.wq) ? fuse(p + "attn_qkv.weight", {L.wq, L.wk, L.wv}) : nullptr;
        if (L.wqkv && (L.bq || L.bk || L.bv)) {
            L.bqkv = fuse(p + "attn_qkv.bias", {L.bq, L.bk, L.bv});
            if (!L.bqkv) L.wqkv = nullptr;  // not every member has a bias: the views stay, the graph runs them apart
        }
        L.ffn_gate_up = quantized(L.ffn_gate) ? fuse(p + "ffn_gate_up.weight", {L.ffn_gate, L.ffn_up}) : nullptr;
    }
    for (int64_t i = 0; i < n_tensors; i++) {
        ggml_tensor * t = ggml_get_tensor(ctx_meta, gguf_get_tensor_name(g, i));
        auto it = copy.find(t);
        if (it == copy.end()) {
            ggml_tensor * c = ggml_dup_tensor(m.ctx_w, t);
            ggml_set_name(c, ggml_get_name(t));
            it = copy.emplace(t, c).first;
        }
        m.weights.push_back(it->second);
    }
    auto remap = [&](ggml_tensor *& t) { if (t) t = copy.at(t); };
    remap(m.tok_embd);
    remap(m.output_norm);
    remap(m.output);
    for (layer_weights & L : m.layers) {
        for (ggml_tensor ** t : {&L.attn_norm, &L.wq, &L.wk, &L.wv, &L.wo, &L.bq, &L.bk, &L.bv, &L.ffn_norm, &L.ffn_gate, &L.ffn_up, &L.ffn_down})
            remap(*t);
    }
}

} // namespace

std::unique_ptr<model> model_load(const std::string & path, std::shared_ptr<backend_set> backends) {
    struct stat st;
    if (stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) fail("ERR_GGUF_NOT_FOUND", "model file not found: %s", path.c_str());
    const uint64_t file_size = (uint64_t) st.st_size;
    {
        file_guard fg{fopen(path.c_str(), "rb")};
        if (!fg.f) fail("ERR_GGUF_NOT_FOUND", "cannot open %s", path.c_str());
        char magic[4] = {0};
        if (file_size < 24 || fread(magic, 1, 4, fg.f) != 4) fail("ERR_GGUF_INVALID", "%s is too small to be a GGUF file (%llu bytes)", path.c_str(), (unsigned long long) file_size);
        if (memcmp(magic, "GGUF", 4) != 0) fail("ERR_GGUF_INVALID", "%s is not a GGUF file: expected magic 'GGUF', got '%.4s'", path.c_str(), magic);
    }

    auto m = std::make_unique<model>();
    m->path = path;
    m->backends = backends;

    gguf_guard gg;
    ggml_context * ctx_meta = nullptr;
    gguf_init_params params = { /*no_alloc =*/ true, /*ctx =*/ &ctx_meta };
    gg.g = gguf_init_from_file(path.c_str(), params);
    if (!gg.g) fail("ERR_GGUF_INVALID", "%s could not be parsed as GGUF: %s", path.c_str(), log_last_error().c_str());
    struct ctx_guard { ggml_context * c; ~ctx_guard() { ggml_free(c); } } meta_guard{ctx_meta};  // metadata only
    gguf_context * g = gg.g;

    // Tensor data must lie inside the file and be of a type the graph supports.
    const size_t data_off = gguf_get_data_offset(g);
    const int64_t n_tensors = gguf_get_n_tensors(g);
    for (int64_t i = 0; i < n_tensors; i++) {
        const char * name = gguf_get_tensor_name(g, i);
        uint64_t offset, nbytes;
        if (!gguf_tensor_in_file(g, i, file_size, &offset, &nbytes))
            fail("ERR_GGUF_INVALID", "%s is truncated: tensor '%s' needs bytes %llu to %llu but the file has %llu bytes",
                 path.c_str(), name, (unsigned long long) offset, (unsigned long long) offset + nbytes, (unsigned long long) file_size);
        const ggml_type t = gguf_get_tensor_type(g, i);
        if (!weight_type_supported(t)) fail("ERR_UNSUPPORTED_TYPE", "tensor '%s' has type %s; supported: f32, f16, bf16, q8_0, q4_0, q4_K, q6_K",
                                            name, ggml_type_name(t));
    }

    // Hyperparameters.
    const int64_t arch_id = gguf_find_key(g, "general.architecture");
    if (arch_id < 0 || gguf_get_kv_type(g, arch_id) != GGUF_TYPE_STRING) fail("ERR_GGUF_INVALID", "missing string key 'general.architecture'");
    hparams & hp = m->hp;
    hp.arch_name = gguf_get_val_str(g, arch_id);
    if (hp.arch_name == "qwen2") { hp.arch = ARCH_QWEN2; hp.rope_mode = GGML_ROPE_TYPE_NEOX; }
    else if (hp.arch_name == "llama") { hp.arch = ARCH_LLAMA; hp.rope_mode = 0; }
    else fail("ERR_UNSUPPORTED_ARCH", "architecture '%s' is not supported; expected 'qwen2' or 'llama'", hp.arch_name.c_str());
    const std::string a = hp.arch_name + ".";
    hp.n_ctx_train = get_int(g, a + "context_length", true);
    hp.n_embd = get_int(g, a + "embedding_length", true);
    hp.n_layer = get_int(g, a + "block_count", true);
    hp.n_ff = get_int(g, a + "feed_forward_length", true);
    hp.n_head = get_int(g, a + "attention.head_count", true);
    hp.n_head_kv = get_int(g, a + "attention.head_count_kv", false);
    if (hp.n_head_kv < 0) hp.n_head_kv = hp.n_head;
    check_range("embedding_length", hp.n_embd, 1, 65536);
    check_range("block_count", hp.n_layer, 1, 1024);
    check_range("feed_forward_length", hp.n_ff, 1, 1 << 20);
    check_range("attention.head_count", hp.n_head, 1, 1024);
    check_range("attention.head_count_kv", hp.n_head_kv, 1, hp.n_head);
    check_range("context_length", hp.n_ctx_train, 1, 1 << 24);
    if (hp.n_head % hp.n_head_kv != 0) fail("ERR_GGUF_INVALID", "head_count (%lld) must be a multiple of head_count_kv (%lld)", (long long) hp.n_head, (long long) hp.n_head_kv);
    hp.head_dim = get_int(g, a + "attention.key_length", false);
    if (hp.head_dim < 0) {
        if (hp.n_embd % hp.n_head != 0) fail("ERR_GGUF_INVALID", "embedding_length %lld is not divisible by head_count %lld", (long long) hp.n_embd, (long long) hp.n_head);
        hp.head_dim = hp.n_embd / hp.n_head;
    }
    check_range("attention.key_length", hp.head_dim, 2, 1024);
    if (hp.head_dim % 2) fail("ERR_GGUF_INVALID", "head dimension must be even, got %lld", (long long) hp.head_dim);
    hp.n_rot = get_int(g, a + "rope.dimension_count", false);
    if (hp.n_rot < 0) hp.n_rot = hp.head_dim;
    check_range("rope.dimension_count", hp.n_rot, 2, hp.head_dim);
    hp.rope_freq_base = get_float(g, a + "rope.freq_base", 10000.0f);
    hp.rms_eps = get_float(g, a + "attention.layer_norm_rms_epsilon", 1e-6f);
    if (!(hp.rope_freq_base > 0) || !(hp.rms_eps > 0)) fail("ERR_GGUF_INVALID", "rope.freq_base and layer_norm_rms_epsilon must be positive");

    // Weights, each checked against the hyperparameters.
    ggml_tensor * te = ggml_get_tensor(ctx_meta, "token_embd.weight");
    if (!te) fail("ERR_GGUF_INVALID", "missing tensor 'token_embd.weight'");
    hp.n_vocab = te->ne[1];
    check_range("vocabulary size", hp.n_vocab, 1, 1 << 24);
    const int64_t E = hp.n_embd, Q = hp.n_embd_q(), KV = hp.n_embd_kv(), F = hp.n_ff;
    m->tok_embd = get_tensor(ctx_meta, "token_embd.weight", {E, hp.n_vocab}, true);
    m->output_norm = get_tensor(ctx_meta, "output_norm.weight", {E}, true);
    m->output = get_tensor(ctx_meta, "output.weight", {E, hp.n_vocab}, false);
    if (!m->output) m->output = m->tok_embd;  // tied embeddings
    m->layers.resize(hp.n_layer);
    for (int64_t il = 0; il < hp.n_layer; il++) {
        const std::string p = "blk." + std::to_string(il) + ".";
        layer_weights & L = m->layers[il];
        L.attn_norm = get_tensor(ctx_meta, p + "attn_norm.weight", {E}, true);
        L.wq = get_tensor(ctx_meta, p + "attn_q.weight", {E, Q}, true);
        L.wk = get_tensor(ctx_meta, p + "attn_k.weight", {E, KV}, true);
        L.wv = get_tensor(ctx_meta, p + "attn_v.weight", {E, KV}, true);
        L.wo = get_tensor(ctx_meta, p + "attn_output.weight", {Q, E}, true);
        L.bq = get_tensor(ctx_meta, p + "attn_q.bias", {Q}, false);
        L.bk = get_tensor(ctx_meta, p + "attn_k.bias", {KV}, false);
        L.bv = get_tensor(ctx_meta, p + "attn_v.bias", {KV}, false);
        L.ffn_norm = get_tensor(ctx_meta, p + "ffn_norm.weight", {E}, true);
        L.ffn_gate = get_tensor(ctx_meta, p + "ffn_gate.weight", {E, F}, true);
        L.ffn_up = get_tensor(ctx_meta, p + "ffn_up.weight", {E, F}, true);
        L.ffn_down = get_tensor(ctx_meta, p + "ffn_down.weight", {F, E}, true);
        for (ggml_tensor * t : {L.attn_norm, L.ffn_norm, L.bq, L.bk, L.bv}) {
            if (t && t->type != GGML_TYPE_F32) fail("ERR_UNSUPPORTED_TYPE", "tensor '%s' should be f32, got %s", ggml_get_name(t), ggml_type_name(t->type));
        }
    }
    if (m->output_norm->type != GGML_TYPE_F32) fail("ERR_UNSUPPORTED_TYPE", "tensor 'output_norm.weight' should be f32");

    // The weights' own context: each file tensor's metadata, with fusable groups laid out as rows of one tensor.
    lay_out_weights(*m, ctx_meta, g);

    // Allocate on the primary backend and stream the data in.
    m->buf_w = ggml_backend_alloc_ctx_tensors(m->ctx_w, backends->primary);
    if (!m->buf_w) fail("ERR_OUT_OF_MEMORY", "could not allocate %s bytes of weights on %s: %s",
                        std::to_string(ggml_get_mem_size(m->ctx_w)).c_str(), backends->device.c_str(), log_last_error().c_str());
    ggml_backend_buffer_set_usage(m->buf_w, GGML_BACKEND_BUFFER_USAGE_WEIGHTS);
    m->weight_bytes = ggml_backend_buffer_get_size(m->buf_w);

    file_guard fg{fopen(path.c_str(), "rb")};
    if (!fg.f) fail("ERR_GGUF_NOT_FOUND", "cannot open %s", path.c_str());
    const bool host = ggml_backend_buffer_is_host(m->buf_w);
    std::vector<uint8_t> staging(host ? 0 : (size_t) 64 << 20);
    for (int64_t i = 0; i < n_tensors; i++) {
        ggml_tensor * t = m->weights[(size_t) i];
        const size_t nbytes = ggml_nbytes(t);
        if (fseeko(fg.f, (off_t) (data_off + gguf_get_tensor_offset(g, i)), SEEK_SET) != 0) fail("ERR_GGUF_INVALID", "seek failed in %s", path.c_str());
        if (host) {
            if (fread(t->data, 1, nbytes, fg.f) != nbytes) fail("ERR_GGUF_INVALID", "short read of tensor '%s'", ggml_get_name(t));
        } else {
            for (size_t off = 0; off < nbytes; off += staging.size()) {
                const size_t n = std::min(staging.size(), nbytes - off);
                if (fread(staging.data(), 1, n, fg.f) != n) fail("ERR_GGUF_INVALID", "short read of tensor '%s'", ggml_get_name(t));
                ggml_backend_tensor_set(t, staging.data(), off, n);
            }
        }
    }
    return m;
}

} // namespace sqlr1
