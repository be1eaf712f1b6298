#include "ops.h"

#include "graph.h"

#include "ggml-alloc.h"

#include <cmath>
#include <cstring>

namespace sqlr1 {

namespace {

ggml_type type_from_name(const std::string & n) {
    return n == "i32" ? GGML_TYPE_I32 : weight_type_from_name(n);
}

struct op_graph {
    ggml_context * ctx = nullptr;
    ggml_backend_buffer_t buf = nullptr;
    ~op_graph() {
        if (buf) ggml_backend_buffer_free(buf);
        if (ctx) ggml_free(ctx);
    }
};

void expect(bool cond, const char * op, const char * what) {
    if (!cond) fail("ERR_INVALID_ARG", "%s: %s", op, what);
}

} // namespace

op_result op_run(const op_request & req) {
    auto bs = backend_set_init(req.device, 0);
    const char * op = req.op.c_str();
    const auto & in = req.inputs;
    auto n_in = [&](size_t n) { expect(in.size() == n, op, ("expects " + std::to_string(n) + " inputs").c_str()); };
    auto param = [&](size_t i, double def) { return i < req.params.size() ? req.params[i] : def; };

    // Validate every input's shape and data length before ggml sees it.
    std::vector<ggml_type> types;
    for (const auto & x : in) {
        expect(!x.shape.empty() && x.shape.size() <= 4, op, "each shape needs 1 to 4 dimensions");
        int64_t n = 1;
        for (int64_t d : x.shape) { expect(d >= 1 && d <= (1 << 24), op, "dimensions must be in [1, 2^24]"); n *= d; }
        const size_t have = x.i32.empty() ? x.f32.size() : x.i32.size();
        expect((size_t) n == have, op, "data length does not match the shape");
        const ggml_type t = type_from_name(x.type);
        expect(x.shape[0] % ggml_blck_size(t) == 0, op, "the first dimension must be a multiple of the type's block size");
        expect((t == GGML_TYPE_I32) == !x.i32.empty(), op, "i32 data needs type 'i32' and float data a float type");
        types.push_back(t);
    }

    op_graph g;
    ggml_init_params ip = { ggml_tensor_overhead() * 64 + ggml_graph_overhead(), nullptr, true };
    g.ctx = ggml_init(ip);
    std::vector<ggml_tensor *> t;
    for (size_t i = 0; i < in.size(); i++) {
        int64_t ne[4] = {1, 1, 1, 1};
        for (size_t d = 0; d < in[i].shape.size(); d++) ne[d] = in[i].shape[d];
        t.push_back(ggml_new_tensor(g.ctx, types[i], 4, ne));
    }
    auto same = [](const ggml_tensor * a, const ggml_tensor * b) { return ggml_are_same_shape(a, b); };

    ggml_tensor * out = nullptr;
    if (req.op == "mul_mat") {
        n_in(2);
        expect(t[0]->ne[0] == t[1]->ne[0] && t[1]->type == GGML_TYPE_F32, op, "a [K, N] (any type) and b [K, M] f32 required");
        expect(t[1]->ne[2] % t[0]->ne[2] == 0 && t[1]->ne[3] % t[0]->ne[3] == 0, op, "b's batch dims must be multiples of a's");
        out = ggml_mul_mat(g.ctx, t[0], t[1]);
    } else if (req.op == "lora") {
        // W [in, out] (any type), x [in, T], A [in, r], B [r, out]: y = W x + scale * B (A x)
        n_in(4);
        expect(t[0]->ne[0] == t[1]->ne[0] && t[1]->type == GGML_TYPE_F32, op, "W [in, out] and x [in, T] f32 required");
        expect(t[2]->type == GGML_TYPE_F32 && t[3]->type == GGML_TYPE_F32, op, "A and B must be f32");
        expect(t[2]->ne[0] == t[0]->ne[0] && t[3]->ne[0] == t[2]->ne[1] && t[3]->ne[1] == t[0]->ne[1], op, "A must be [in, r] and B [r, out]");
        expect(ggml_n_dims(t[0]) <= 2 && ggml_n_dims(t[1]) <= 2, op, "W and x must be 2-d");
        lora_pair pair{t[2], t[3]};
        out = qwen2_linear(g.ctx, t[0], nullptr, t[1], &pair, (float) param(0, 1.0));
    } else if (req.op == "input_grad") {
        // W [in, out] (any type), dy [out, T]: dx = W^T dy
        n_in(2);
        expect(t[1]->type == GGML_TYPE_F32 && t[1]->ne[0] == t[0]->ne[1] && ggml_n_dims(t[0]) <= 2 && ggml_n_dims(t[1]) <= 2,
               op, "W [in, out] and dy [out, T] f32 required");
        ggml_tensor * iota = ggml_new_tensor_1d(g.ctx, GGML_TYPE_I32, t[0]->ne[1]);
        t.push_back(iota);
        // params[0]: the scratch type, 0 = f16 (default), 1 = bf16, 2 = f32
        const int kind = (int) param(0, 0);
        expect(kind >= 0 && kind <= 2, op, "the scratch type must be 0 (f16), 1 (bf16) or 2 (f32)");
        const ggml_type types[3] = { GGML_TYPE_F16, GGML_TYPE_BF16, GGML_TYPE_F32 };
        out = frozen_input_grad(g.ctx, t[0], t[1], iota, types[kind]);
    } else if (req.op == "dequant" || req.op == "get_rows") {
        if (req.op == "dequant") {
            n_in(1);
            ggml_tensor * idx = ggml_new_tensor_1d(g.ctx, GGML_TYPE_I32, t[0]->ne[1]);
            t.push_back(idx);
            expect(t[0]->ne[2] == 1 && t[0]->ne[3] == 1, op, "a 2-d input is required");
        } else {
            n_in(2);
            expect(t[1]->type == GGML_TYPE_I32 && ggml_n_dims(t[1]) == 1 && t[0]->ne[2] == 1, op, "a [E, R] and i32 ids [n] required");
            for (int32_t v : in[1].i32) expect(v >= 0 && v < t[0]->ne[1], op, "row id out of range");
        }
        out = ggml_get_rows(g.ctx, t[0], t[1]);
    } else if (req.op == "rms_norm") {
        n_in(1);
        out = ggml_rms_norm(g.ctx, t[0], (float) param(0, 1e-6));
    } else if (req.op == "swiglu") {
        n_in(2);
        expect(same(t[0], t[1]), op, "gate and up must have the same shape");
        out = ggml_swiglu_split(g.ctx, t[0], t[1]);
    } else if (req.op == "rope") {
        n_in(2);
        const int n_rot = (int) param(0, (double) t[0]->ne[0]);
        const int mode = (int) param(1, GGML_ROPE_TYPE_NEOX);
        expect(t[1]->type == GGML_TYPE_I32 && t[1]->ne[0] == t[0]->ne[2] && ggml_n_dims(t[1]) == 1, op, "x [hd, H, T] and pos i32 [T] required");
        expect(n_rot > 0 && n_rot <= t[0]->ne[0] && n_rot % 2 == 0, op, "n_rot must be even and <= head dim");
        expect(mode == 0 || mode == GGML_ROPE_TYPE_NEOX, op, "mode must be 0 or 2");
        out = ggml_rope_ext(g.ctx, t[0], t[1], nullptr, n_rot, mode, 0, (float) param(2, 10000.0), 1.0f, 0.0f, 1.0f, 0.0f, 0.0f);
    } else if (req.op == "attn") {
        // q [hd, Tq, H, S], k/v [hd, Tk, Hkv, S] (f16), mask f16 [Tk, Tq, 1, S]
        n_in(4);
        expect(t[1]->type == GGML_TYPE_F16 && t[2]->type == GGML_TYPE_F16 && t[3]->type == GGML_TYPE_F16, op, "k, v and mask must be f16");
        expect(t[0]->ne[0] == t[1]->ne[0] && same(t[1], t[2]), op, "q/k head dims must match and k, v have one shape");
        expect(t[0]->ne[2] % t[1]->ne[2] == 0 && t[0]->ne[3] == t[1]->ne[3], op, "heads of q must be a multiple of kv heads");
        expect(t[3]->ne[0] == t[1]->ne[1] && t[3]->ne[1] == t[0]->ne[1] && t[3]->ne[3] == t[0]->ne[3], op, "mask must be [Tk, Tq, 1, S]");
        out = ggml_flash_attn_ext(g.ctx, t[0], t[1], t[2], t[3], (float) param(0, 1.0 / std::sqrt((double) t[0]->ne[0])), 0.0f, 0.0f);
        ggml_flash_attn_ext_set_prec(out, GGML_PREC_F32);
    } else {
        fail("ERR_INVALID_ARG", "unknown op '%s'", op);
    }
    if (out->type != GGML_TYPE_F32) out = ggml_cast(g.ctx, out, GGML_TYPE_F32);
    ggml_cgraph * gf = ggml_new_graph(g.ctx);
    ggml_build_forward_expand(gf, out);
    for (int i = 0; i < ggml_graph_n_nodes(gf); i++) {
        ggml_tensor * node = ggml_graph_node(gf, i);
        if (!ggml_backend_supports_op(bs->primary, node))
            fail("ERR_UNSUPPORTED_TYPE", "%s does not support %s with these types", bs->device.c_str(), ggml_op_desc(node));
    }
    g.buf = ggml_backend_alloc_ctx_tensors(g.ctx, bs->primary);
    if (!g.buf) fail("ERR_OUT_OF_MEMORY", "could not allocate op tensors");

    for (size_t i = 0; i < in.size(); i++) {
        const op_input & x = in[i];
        if (!x.i32.empty()) { ggml_backend_tensor_set(t[i], x.i32.data(), 0, x.i32.size() * 4); continue; }
        const int64_t ne0 = t[i]->ne[0], rows = ggml_nrows(t[i]);
        std::vector<uint8_t> buf(ggml_nbytes(t[i]));
        switch (types[i]) {
            case GGML_TYPE_F32: memcpy(buf.data(), x.f32.data(), buf.size()); break;
            case GGML_TYPE_F16: ggml_fp32_to_fp16_row(x.f32.data(), (ggml_fp16_t *) buf.data(), ne0 * rows); break;
            case GGML_TYPE_BF16: ggml_fp32_to_bf16_row(x.f32.data(), (ggml_bf16_t *) buf.data(), ne0 * rows); break;
            default: ggml_quantize_chunk(types[i], x.f32.data(), buf.data(), 0, rows, ne0, nullptr); break;
        }
        ggml_backend_tensor_set(t[i], buf.data(), 0, buf.size());
    }
    if (req.op == "dequant" || req.op == "input_grad") {
        std::vector<int32_t> ids(t[0]->ne[1]);
        for (size_t i = 0; i < ids.size(); i++) ids[i] = (int32_t) i;
        ggml_backend_tensor_set(t.back(), ids.data(), 0, ids.size() * 4);
    }
    const ggml_status st = ggml_backend_graph_compute(bs->primary, gf);
    if (st != GGML_STATUS_SUCCESS) fail("ERR_INTERNAL", "op compute failed (status %d)", (int) st);
    op_result r;
    r.data.resize(ggml_nelements(out));
    ggml_backend_tensor_get(out, r.data.data(), 0, r.data.size() * sizeof(float));
    for (int d = 0; d < 4; d++) r.shape.push_back(out->ne[d]);
    return r;
}

} // namespace sqlr1
