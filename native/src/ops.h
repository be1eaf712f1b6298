// Single ggml ops run on a chosen backend with inputs from JS: how the per-op tests compare the CPU and CUDA
// kernels the model graph uses against plain-loop references.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace sqlr1 {

struct op_input {
    std::vector<float> f32;
    std::vector<int32_t> i32;
    std::vector<int64_t> shape;   // ggml order: ne0 first
    std::string type = "f32";     // storage type on the device (f32 data is converted/quantized to it)
};

struct op_request {
    std::string op;               // mul_mat, lora, input_grad, rms_norm, rope, attn, swiglu, dequant, get_rows
    std::string device = "cpu";
    std::vector<op_input> inputs;
    std::vector<double> params;
};

struct op_result {
    std::vector<float> data;
    std::vector<int64_t> shape;
};

op_result op_run(const op_request & req);

} // namespace sqlr1
