# node-gyp-build falls back to `node-gyp rebuild` when no binary is found. The real build is CMake (see
# CMakeLists.txt); this target only hands off to it, so the build logic lives in one place.
{
  "targets": [
    {
      "target_name": "sqlr1_cmake",
      "type": "none",
      "actions": [
        {
          "action_name": "cmake_js_build",
          "inputs": ["CMakeLists.txt"],
          "outputs": ["bindings/cpu/build/Release/sqlr1.node"],
          "action": ["node", "scripts/build-native.mjs"]
        }
      ]
    }
  ]
}
