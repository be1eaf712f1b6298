// The N-API face of NCCL (nccl.h): `nccl.load`, `nccl.uniqueId`, `nccl.init` and the communicator object.
#pragma once

#include <napi.h>

namespace sqlr1 {

void nccl_register(Napi::Env env, Napi::Object exports);

} // namespace sqlr1
