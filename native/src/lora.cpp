#include "lora.h"

#include "ggml-alloc.h"
#include "gguf.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <sys/stat.h>
#include <unistd.h>

namespace sqlr1 {

const char * const LORA_TARGET_TENSOR[LORA_N_TARGETS] = {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"};
const char * const LORA_TARGET_NAME[LORA_N_TARGETS] = {"q", "k", "v", "o", "gate", "up", "down"};

lora_adapter::~lora_adapter() {
    if (buf) ggml_backend_buffer_free(buf);
    if (ctx) ggml_free(ctx);
}

std::vector<ggml_tensor *> lora_adapter::tensors() const {
    std::vector<ggml_tensor *> out;
    for (const auto & l : layers) for (const auto & p : l) if (p.a) { out.push_back(p.a); out.push_back(p.b); }
    return out;
}

ggml_tensor * lora_target_weight(const model & m, int64_t il, int target) {
    const layer_weights & L = m.layers[il];
    switch (target) {
        case LORA_Q: return L.wq;
        case LORA_K: return L.wk;
        case LORA_V: return L.wv;
        case LORA_O: return L.wo;
        case LORA_GATE: return L.ffn_gate;
        case LORA_UP: return L.ffn_up;
        case LORA_DOWN: return L.ffn_down;
        default: return nullptr;
    }
}

ggml_tensor * lora_target_bias(const model & m, int64_t il, int target) {
    const layer_weights & L = m.layers[il];
    switch (target) {
        case LORA_Q: return L.bq;
        case LORA_K: return L.bk;
        case LORA_V: return L.bv;
        default: return nullptr;
    }
}

static std::string tensor_name(int64_t il, int target, char ab) {
    return "blk." + std::to_string(il) + "." + LORA_TARGET_TENSOR[target] + ".weight.lora_" + ab;
}

// Creates the adapter's tensors (uninitialized) on the model's device.
static std::shared_ptr<lora_adapter> lora_adapter_alloc(std::shared_ptr<model> m, int64_t rank, float alpha, uint32_t targets) {
    if (rank < 1 || rank > LORA_MAX_RANK) fail("ERR_INVALID_ARG", "LoRA rank must be in [1, %d], got %lld", LORA_MAX_RANK, (long long) rank);
    if (!(alpha > 0) || !std::isfinite(alpha)) fail("ERR_INVALID_ARG", "LoRA alpha must be a positive number, got %g", alpha);
    if (targets == 0 || targets >= (1u << LORA_N_TARGETS)) fail("ERR_INVALID_ARG", "LoRA needs at least one target layer");
    auto a = std::make_shared<lora_adapter>();
    a->m = m;
    a->rank = rank;
    a->alpha = alpha;
    a->targets = targets;
    const int64_t n_layer = m->hp.n_layer;
    ggml_init_params ip = { ggml_tensor_overhead() * (size_t) (2 * LORA_N_TARGETS * n_layer + 8), nullptr, true };
    a->ctx = ggml_init(ip);
    a->layers.resize(n_layer);
    for (int64_t il = 0; il < n_layer; il++) {
        for (int t = 0; t < LORA_N_TARGETS; t++) {
            if (!(targets & (1u << t))) continue;
            const ggml_tensor * w = lora_target_weight(*m, il, t);
            lora_pair & p = a->layers[il][t];
            p.a = ggml_new_tensor_2d(a->ctx, GGML_TYPE_F32, w->ne[0], rank);
            p.b = ggml_new_tensor_2d(a->ctx, GGML_TYPE_F32, rank, w->ne[1]);
            ggml_set_name(p.a, tensor_name(il, t, 'a').c_str());
            ggml_set_name(p.b, tensor_name(il, t, 'b').c_str());
        }
    }
    a->buf = ggml_backend_alloc_ctx_tensors(a->ctx, m->backends->primary);
    if (!a->buf) fail("ERR_OUT_OF_MEMORY", "could not allocate the LoRA adapter on %s", m->backends->device.c_str());
    return a;
}

std::shared_ptr<lora_adapter> lora_adapter_init(std::shared_ptr<model> m, int64_t rank, float alpha, uint32_t targets, uint64_t seed) {
    auto a = lora_adapter_alloc(m, rank, alpha, targets);
    ggml_backend_buffer_clear(a->buf, 0);  // B = 0
    uint64_t s = seed * 0x9e3779b97f4a7c15ULL + 1;
    std::vector<float> data;
    for (const auto & l : a->layers) {
        for (const auto & p : l) {
            if (!p.a) continue;
            // PEFT: kaiming_uniform_(A, a=sqrt(5)) = U(-1/sqrt(in), 1/sqrt(in)).
            const float bound = 1.0f / std::sqrt((float) p.a->ne[0]);
            data.resize(ggml_nelements(p.a));
            for (float & x : data) {
                s += 0x9e3779b97f4a7c15ULL;
                uint64_t z = s;
                z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
                z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
                z ^= z >> 31;
                x = bound * (2.0f * ((float) (z >> 40) * (1.0f / 16777216.0f)) - 1.0f);
            }
            ggml_backend_tensor_set(p.a, data.data(), 0, ggml_nbytes(p.a));
        }
    }
    return a;
}

void lora_adapter_save(const lora_adapter & a, const std::string & path) {
    gguf_context * g = gguf_init_empty();
    struct guard { gguf_context * g; ~guard() { gguf_free(g); } } gg{g};
    gguf_set_val_str(g, "general.architecture", a.m->hp.arch_name.c_str());
    gguf_set_val_str(g, "general.type", "adapter");
    gguf_set_val_str(g, "adapter.type", "lora");
    gguf_set_val_f32(g, "adapter.lora.alpha", a.alpha);
    gguf_set_val_u32(g, "adapter.lora.rank", (uint32_t) a.rank);
    // gguf reads each tensor's data from its backend buffer while writing (host or device alike).
    for (ggml_tensor * t : a.tensors()) gguf_add_tensor(g, t);
    gguf_write_atomic(g, path);
}

// Parses "blk.<layer>.<target>.weight.lora_<a|b>" in its canonical spelling (the one lora_adapter_save writes:
// no sign, no leading zeros). False for any other name.
static bool parse_lora_name(const std::string & name, int64_t n_layer, int64_t * layer, int * target, char * ab) {
    if (name.rfind("blk.", 0) != 0) return false;
    size_t pos = 4;
    int64_t il = 0;
    const size_t digits = pos;
    while (pos < name.size() && name[pos] >= '0' && name[pos] <= '9' && pos - digits < 7) il = il * 10 + (name[pos++] - '0');
    if (pos == digits || il >= n_layer) return false;
    for (int t = 0; t < LORA_N_TARGETS; t++) {
        for (char c : {'a', 'b'}) {
            if (name == tensor_name(il, t, c)) {
                *layer = il;
                *target = t;
                *ab = c;
                return true;
            }
        }
    }
    return false;
}

std::shared_ptr<lora_adapter> lora_adapter_load(std::shared_ptr<model> m, const std::string & path) {
    struct stat st;
    if (stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) fail("ERR_GGUF_NOT_FOUND", "adapter file not found: %s", path.c_str());
    FILE * f = fopen(path.c_str(), "rb");
    if (!f) fail("ERR_GGUF_NOT_FOUND", "cannot open adapter file %s", path.c_str());
    struct file_guard { FILE * f; ~file_guard() { fclose(f); } } fg{f};
    const uint64_t file_size = (uint64_t) st.st_size;
    char magic[4] = {0};
    if (fread(magic, 1, 4, f) != 4 || memcmp(magic, "GGUF", 4) != 0) fail("ERR_ADAPTER_INVALID", "%s is not a GGUF file", path.c_str());

    // Metadata only (no_alloc, no ggml context): nothing the file declares is allocated until every tensor has been
    // checked against the model's LoRA shapes and the file's size.
    gguf_init_params ip = { /*no_alloc =*/ true, /*ctx =*/ nullptr };
    gguf_context * g = gguf_init_from_file(path.c_str(), ip);
    if (!g) fail("ERR_ADAPTER_INVALID", "%s could not be parsed as GGUF: %s", path.c_str(), log_last_error().c_str());
    struct guard { gguf_context * g; ~guard() { gguf_free(g); } } gg{g};
    auto str = [&](const char * key) -> std::string {
        const int64_t id = gguf_find_key(g, key);
        return id >= 0 && gguf_get_kv_type(g, id) == GGUF_TYPE_STRING ? gguf_get_val_str(g, id) : "";
    };
    if (str("general.type") != "adapter" || str("adapter.type") != "lora")
        fail("ERR_ADAPTER_INVALID", "%s is not a LoRA adapter (general.type '%s', adapter.type '%s')", path.c_str(), str("general.type").c_str(), str("adapter.type").c_str());
    if (str("general.architecture") != m->hp.arch_name)
        fail("ERR_ADAPTER_INVALID", "adapter architecture '%s' does not match the model's '%s'", str("general.architecture").c_str(), m->hp.arch_name.c_str());
    const int64_t alpha_id = gguf_find_key(g, "adapter.lora.alpha");
    if (alpha_id < 0 || gguf_get_kv_type(g, alpha_id) != GGUF_TYPE_FLOAT32) fail("ERR_ADAPTER_INVALID", "%s has no f32 adapter.lora.alpha", path.c_str());
    const float alpha = gguf_get_val_f32(g, alpha_id);
    if (!(alpha > 0) || !std::isfinite(alpha)) fail("ERR_ADAPTER_INVALID", "%s: adapter.lora.alpha must be a positive finite number, got %g", path.c_str(), alpha);

    // Every tensor: a known name, f32, at most 2-D, [in, r] or [r, out] for the weight it adapts, one rank for
    // all, and its bytes inside the file.
    const int64_t n_layer = m->hp.n_layer;
    std::vector<std::array<std::array<int64_t, 2>, LORA_N_TARGETS>> found(n_layer);
    for (auto & l : found) for (auto & p : l) p = {-1, -1};
    uint32_t targets = 0;
    int64_t rank = -1;
    const int64_t n = gguf_get_n_tensors(g);
    for (int64_t i = 0; i < n; i++) {
        const std::string name = gguf_get_tensor_name(g, i);
        int64_t il = -1;
        int t = -1;
        char ab = 0;
        if (!parse_lora_name(name, n_layer, &il, &t, &ab))
            fail("ERR_ADAPTER_INVALID", "unexpected tensor '%s' in %s (expected blk.N.<%s>.weight.lora_a/b with N below %lld)", name.c_str(),
                 path.c_str(), "attn_q|attn_k|attn_v|attn_output|ffn_gate|ffn_up|ffn_down", (long long) n_layer);
        const ggml_type type = gguf_get_tensor_type(g, i);
        if (type != GGML_TYPE_F32) fail("ERR_ADAPTER_INVALID", "tensor '%s' in %s should be f32, found %s", name.c_str(), path.c_str(), ggml_type_name(type));
        const int64_t * ne = gguf_get_tensor_ne(g, i);
        const ggml_tensor * w = lora_target_weight(*m, il, t);
        const int64_t r = ab == 'a' ? ne[1] : ne[0];
        if (rank < 0) {
            if (r < 1 || r > LORA_MAX_RANK)
                fail("ERR_ADAPTER_INVALID", "tensor '%s' in %s has rank %lld; a LoRA rank is in [1, %d]", name.c_str(), path.c_str(), (long long) r, LORA_MAX_RANK);
            rank = r;
        }
        const int64_t want0 = ab == 'a' ? w->ne[0] : rank, want1 = ab == 'a' ? rank : w->ne[1];
        if (ne[0] != want0 || ne[1] != want1 || ne[2] != 1 || ne[3] != 1)
            fail("ERR_ADAPTER_INVALID", "tensor '%s' in %s has shape [%lld, %lld, %lld, %lld], the model needs [%lld, %lld] (rank %lld)", name.c_str(),
                 path.c_str(), (long long) ne[0], (long long) ne[1], (long long) ne[2], (long long) ne[3], (long long) want0, (long long) want1, (long long) rank);
        uint64_t offset, nbytes;
        if (!gguf_tensor_in_file(g, i, file_size, &offset, &nbytes))
            fail("ERR_ADAPTER_INVALID", "%s is truncated: tensor '%s' needs bytes %llu to %llu, the file has %llu", path.c_str(), name.c_str(),
                 (unsigned long long) offset, (unsigned long long) (offset + nbytes), (unsigned long long) file_size);
        found[il][t][ab == 'a' ? 0 : 1] = i;  // gguf rejects duplicate names, and names are canonical: no slot is taken twice
        targets |= 1u << t;
    }
    if (rank < 1) fail("ERR_ADAPTER_INVALID", "%s holds no LoRA tensors", path.c_str());
    for (int64_t il = 0; il < n_layer; il++) {
        for (int t = 0; t < LORA_N_TARGETS; t++) {
            if (!(targets & (1u << t))) continue;
            for (int k = 0; k < 2; k++) {
                if (found[il][t][k] < 0)
                    fail("ERR_ADAPTER_INVALID", "%s lacks tensor '%s' (every layer of an adapted target needs lora_a and lora_b)", path.c_str(),
                         tensor_name(il, t, k == 0 ? 'a' : 'b').c_str());
            }
        }
    }

    // Checked: allocate, then read each tensor (its size is the one just checked against the file).
    auto a = lora_adapter_alloc(m, rank, alpha, targets);
    std::vector<uint8_t> staging;
    for (int64_t il = 0; il < n_layer; il++) {
        for (int t = 0; t < LORA_N_TARGETS; t++) {
            if (!(targets & (1u << t))) continue;
            for (int k = 0; k < 2; k++) {
                ggml_tensor * dst = k == 0 ? a->layers[il][t].a : a->layers[il][t].b;
                const int64_t i = found[il][t][k];
                const size_t nbytes = ggml_nbytes(dst);
                staging.resize(nbytes);
                const off_t offset = (off_t) (gguf_get_data_offset(g) + gguf_get_tensor_offset(g, i));
                if (gguf_get_tensor_size(g, i) != nbytes || fseeko(f, offset, SEEK_SET) != 0 || fread(staging.data(), 1, nbytes, f) != nbytes)
                    fail("ERR_ADAPTER_INVALID", "could not read tensor '%s' from %s", ggml_get_name(dst), path.c_str());
                ggml_backend_tensor_set(dst, staging.data(), 0, nbytes);
            }
        }
    }
    return a;
}

} // namespace sqlr1
