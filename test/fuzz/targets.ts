/**
 * What the fuzz targets load against, shared by the replay tests and mirrored by the C++ harnesses
 * (test/fuzz/fuzz_targets.cpp): change both together, or the committed corpora stop matching.
 */

/** The optimizer-state target's ParamStore: names and shapes (outermost first). */
export const STATE_PARAMS: readonly { name: string; shape: number[] }[] = [
  { name: 'w', shape: [4, 3] },
  { name: 'b', shape: [3] },
  { name: 's', shape: [] },
];

/** The adapter target's model: `makeModel({ shape: 'tiny', type: ADAPTER_MODEL_TYPE })`. */
export const ADAPTER_MODEL_TYPE = 'q4_0';
