# libllama's model graphs (one source per architecture, about 150) each parse the same heavy headers: compiled
# in batches (a unity build) the reference builds in about half the time (268 s -> 143 s on 2 cores). The core
# sources, and one of two model files that define the same static helper, compile alone. Used by
# test/reference/CMakeLists.txt and, for the GPU check's tools, by the root CMakeLists.txt.
function(sqlr1_llama_unity_build llama_dir)
  get_target_property(sources llama SOURCES)
  foreach(f ${sources})
    # Listed relative to libllama's folder or absolute; properties are looked up by the absolute path.
    if (NOT IS_ABSOLUTE ${f})
      set(f ${llama_dir}/src/${f})
    endif()
    if (NOT f MATCHES "/models/" OR f MATCHES "/gemma3n")
      set_source_files_properties(${f} DIRECTORY ${llama_dir}/src PROPERTIES SKIP_UNITY_BUILD_INCLUSION ON)
    endif()
  endforeach()
  set_target_properties(llama PROPERTIES UNITY_BUILD ON UNITY_BUILD_BATCH_SIZE 32)
endfunction()
